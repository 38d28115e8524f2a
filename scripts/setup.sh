#!/usr/bin/env bash
# Idempotent install of everything the local system and the tests need, on Debian 12:
#   - Debian packages, only when missing (curl, ca-certificates; MariaDB when no server answers)
#   - .venv/localstack: Python 3.12/3.13 venv with LocalStack, boto3 and cfn-lint, pinned by
#     localstack/constraints.txt, installed with uv; a stamp makes re-runs take ~1 s
#   - a check that the Rust toolchain (cargo, rustfmt, clippy) is there
# Usage: scripts/setup.sh
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/venv.sh
source "$ROOT/scripts/lib/venv.sh"
# shellcheck source=scripts/lib/mariadb.sh
source "$ROOT/scripts/lib/mariadb.sh"

start=$(date +%s)

# util-linux gives setsid, procps gives ps (both in Debian's base system, but be sure).
# fonts-dejavu-core: the fonts the demo, bench and chaos scripts render sample images with;
# fonts-droid-fallback: a CJK font, for the test that reads Chinese words (real_models.rs).
apt_install ca-certificates curl util-linux procps fonts-dejavu-core fonts-droid-fallback openssl
mariadb_install

venv_ensure

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
for c in fmt clippy; do
    if ! cargo "$c" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null; then
            log "adding rust component for cargo $c"
            rustup component add "$([[ $c == fmt ]] && echo rustfmt || echo clippy)"
        else
            die "cargo $c is missing"
        fi
    fi
done
command -v cargo-nextest >/dev/null || log "cargo-nextest not found: tests will use cargo test"

log "setup done in $(($(date +%s) - start)) s"
