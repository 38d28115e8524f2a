#!/usr/bin/env bash
# .venv/infra: the deploy and infra-check tools (AWS SAM CLI, cargo-lambda with zig,
# cargo-zigbuild, cfn-lint, pytest, boto3), pinned by infra/requirements.txt, and .venv/checkov
# (infra/requirements-checkov.txt), installed with uv like .venv/localstack (scripts/lib/venv.sh).
# A stamp keyed on the pins makes re-runs instant.
# Usage: infra/setup.sh   (prints nothing on stdout)
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
# shellcheck source=scripts/lib/venv.sh
source "$ROOT/scripts/lib/venv.sh"

VENV="$ROOT/.venv/infra"
REQS="$ROOT/infra/requirements.txt"

key() { { "$1" -c 'import sys; print(sys.version)'; cat "$2"; } | sha256sum | cut -d' ' -f1; }

# ensure VENV REQUIREMENTS WHAT
ensure() {
    local venv=$1 reqs=$2 what=$3 stamp="$1/.ocr-fleet-stamp" uv py
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(<"$stamp")" == "$(key "$venv/bin/python" "$reqs")" ]]; then
        log "python venv ${venv#"$ROOT"/} is up to date"
        return 0
    fi
    uv=$(uv_bin)
    uv_system_certs
    if [[ ! -x "$venv/bin/python" ]]; then
        py=$(find_python)
        log "creating ${venv#"$ROOT"/} with $py"
        "$uv" venv --quiet --python "$py" "$venv" >&2
    fi
    log "installing $what (${reqs#"$ROOT"/})"
    "$uv" pip install --quiet --python "$venv/bin/python" -r "$reqs" >&2
    key "$venv/bin/python" "$reqs" >"$stamp"
}

ensure "$VENV" "$REQS" "SAM CLI, cargo-lambda, cargo-zigbuild, cfn-lint, pytest"
ensure "$ROOT/.venv/checkov" "$ROOT/infra/requirements-checkov.txt" "checkov"
