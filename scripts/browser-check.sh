#!/usr/bin/env bash
# The browser page (functions/api/web/index.html, served by api-local at /ui/) in headless
# Chromium from Debian's packages, against the whole local pipeline (scripts/dev.sh up: MariaDB,
# LocalStack, api-local and one worker): the CORS preflight of the presigned PUT, then a real
# upload from the page, the result drawn, and a screenshot checked (scripts/lib/browser_check.py).
# Stops what it started. Usage: scripts/browser-check.sh
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/python-env.sh
source "$ROOT/scripts/lib/python-env.sh"

apt_install chromium fonts-dejavu-core
# Playwright drives the system's Chromium (executable_path): it downloads no browser.
py=$(python_env browser playwright==1.65.2 pillow==13.0.0)
ensure_run_dir
trap '"$ROOT/scripts/dev.sh" down >/dev/null 2>&1 || true' EXIT
"$ROOT/scripts/dev.sh" up >"$RUN_DIR/browser-up.txt" || die "scripts/dev.sh up failed"
# shellcheck source=/dev/null
source <(grep -E '^API_(URL|TOKEN)=' "$RUN_DIR/browser-up.txt")
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$py" "$ROOT/scripts/lib/browser_check.py" --api "$API_URL" --token "$API_TOKEN" \
    --chromium "$(command -v chromium)" --out "$RUN_DIR/browser"
