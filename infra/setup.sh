#!/usr/bin/env bash
# .venv/infra: the deploy and infra-check tools (AWS SAM CLI, cargo-lambda with zig,
# cargo-zigbuild, cfn-lint, pytest, boto3), pinned by infra/requirements.txt, installed with uv
# like .venv/localstack (scripts/lib/venv.sh). A stamp keyed on the pins makes re-runs instant.
# Usage: infra/setup.sh   (prints nothing on stdout)
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
# shellcheck source=scripts/lib/venv.sh
source "$ROOT/scripts/lib/venv.sh"

VENV="$ROOT/.venv/infra"
REQS="$ROOT/infra/requirements.txt"
STAMP="$VENV/.ocr-fleet-stamp"

key() { { "$1" -c 'import sys; print(sys.version)'; cat "$REQS"; } | sha256sum | cut -d' ' -f1; }

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(<"$STAMP")" == "$(key "$VENV/bin/python")" ]]; then
    log "python venv .venv/infra is up to date"
    exit 0
fi
uv=$(uv_bin)
if [[ -z "${SSL_CERT_FILE:-}" && -f /etc/ssl/certs/ca-certificates.crt ]]; then
    export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    py=$(find_python)
    log "creating .venv/infra with $py"
    "$uv" venv --quiet --python "$py" "$VENV" >&2
fi
log "installing SAM CLI, cargo-lambda, cargo-zigbuild, pytest (infra/requirements.txt)"
"$uv" pip install --quiet --python "$VENV/bin/python" -r "$REQS" >&2
"$VENV/bin/sam" --version >&2
key "$VENV/bin/python" >"$STAMP"
