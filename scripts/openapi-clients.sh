#!/usr/bin/env bash
# Real client generators against the API's OpenAPI document (functions/api/openapi.json): every
# schema in it must be one that common generators can use, and what they generate must compile.
#   1. openapi-python-client (PyPI) generates a Python client with --fail-on-warning: a schema it
#      cannot use (e.g. an allOf it cannot merge) is dropped with a warning, and that fails here
#      too. The client is then byte-compiled, imported, type-checked with mypy --strict together
#      with scripts/lib/openapi-clients/usage.py, and usage.py runs: every error example in the
#      document and a finished job must parse with the generated models and serialise back.
#      python-client.json maps the image/* request bodies (direct uploads) to bytes: the
#      generator knows no image/* media type and would drop them with a warning.
#   2. openapi-typescript (npm) generates TypeScript types; tsc --strict checks them with
#      scripts/lib/openapi-clients/usage.ts.
# Every version is pinned (scripts/lib/openapi-clients/requirements.txt, package-lock.json). The
# tools are installed into ${OCR_FLEET_CACHE:-~/.cache/ocr-fleet}/openapi-clients, outside the
# clone, again only when a pin changes (stamp files), so a re-run takes seconds. Needs Python 3.11+
# and Node 18+ (nodejs and npm come from Debian when missing). The generated code is left in
# .run/openapi-clients/ to look at.
#
# Usage: scripts/openapi-clients.sh [--spec FILE]   FILE: the document (default: the API's own)
# Exits non-zero when a generator warns or fails or generated code does not compile or type-check.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/venv.sh
source "$ROOT/scripts/lib/venv.sh"

spec="$ROOT/functions/api/openapi.json"
while (($#)); do
    case "$1" in
    --spec) spec=$2; shift 2 ;;
    *) die "unknown option $1 (see the header of $0)" ;;
    esac
done
[[ -f "$spec" ]] || die "no OpenAPI document at $spec"
spec=$(realpath "$spec")
cd "$ROOT"

LIB="$ROOT/scripts/lib/openapi-clients"
CACHE="$OCR_FLEET_CACHE/openapi-clients"
VENV="$CACHE/venv"
NODE_DIR="$CACHE/node"
WORK="$RUN_DIR/openapi-clients"
# What a generator prints when it leaves something out or gives up: openapi-python-client's
# wording, and openapi-typescript's warning (⚠) and error (✘) marks.
DROPPED='warning|unable to process|removal of|can.t be merged|will be omitted|could not|unsupported content type|⚠|✘'

# python_for_clients: print a Python 3.11+ interpreter (openapi-python-client needs 3.11).
python_for_clients() {
    local c
    for c in python3 python3.13 python3.12 python3.11; do
        command -v "$c" >/dev/null 2>&1 || continue
        if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            "$c" -c 'import sys; print(sys.executable)' # the interpreter, not a pyenv shim
            return 0
        fi
    done
    find_python # venv.sh: a Python 3.13 from pyenv, PATH or uv
}

python_tools() {
    local key uv py
    key=$(sha256sum <"$LIB/requirements.txt" | cut -d' ' -f1)
    if [[ -x "$VENV/bin/python" && -f "$VENV/.ocr-fleet-stamp" ]] &&
        [[ "$(<"$VENV/.ocr-fleet-stamp")" == "$key $("$VENV/bin/python" -V 2>&1)" ]]; then
        return 0
    fi
    uv=$(uv_bin)
    uv_system_certs
    py=$(python_for_clients)
    log "installing openapi-python-client and mypy into ${VENV/#"$HOME"/\~} ($py)"
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    "$uv" venv --quiet --python "$py" "$VENV"
    "$uv" pip sync --quiet --python "$VENV/bin/python" "$LIB/requirements.txt"
    printf '%s %s\n' "$key" "$("$VENV/bin/python" -V 2>&1)" >"$VENV/.ocr-fleet-stamp"
}

node_tools() {
    local key major
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        apt_install nodejs npm
    fi
    major=$(node -p 'process.versions.node.split(".")[0]')
    ((major >= 18)) || die "node $(node --version) is too old for openapi-typescript: need 18 or later"
    key=$(cat "$LIB/package.json" "$LIB/package-lock.json" | sha256sum | cut -d' ' -f1)
    if [[ -f "$NODE_DIR/.ocr-fleet-stamp" && "$(<"$NODE_DIR/.ocr-fleet-stamp")" == "$key $(node --version)" ]]; then
        return 0
    fi
    log "installing openapi-typescript and typescript into ${NODE_DIR/#"$HOME"/\~} (npm ci)"
    rm -rf "$NODE_DIR"
    mkdir -p "$NODE_DIR"
    cp "$LIB/package.json" "$LIB/package-lock.json" "$NODE_DIR/"
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2)
    printf '%s %s\n' "$key" "$(node --version)" >"$NODE_DIR/.ocr-fleet-stamp"
}

failed=()

# generator_said NAME LOG: fail NAME when LOG (printed above) says something was left out.
generator_said() {
    local name=$1 file=$2 n
    n=$(grep -Eic "$DROPPED" "$file" || true)
    if ((n > 0)); then
        printf '%s: %s line(s) of the generator output above say something was left out\n' "$name" "$n" >&2
        failed+=("$name: generator warnings")
    fi
}

python_client() {
    local out="$WORK/python" rc=0
    mkdir -p "$out"
    cp "$WORK/openapi.json" "$LIB/usage.py" "$out/"
    log "openapi-python-client $("$VENV/bin/openapi-python-client" --version | awk '{print $NF}')"
    # Its post-generation hooks run ruff (installed with it) from PATH.
    PATH="$VENV/bin:$PATH" "$VENV/bin/openapi-python-client" generate --path "$out/openapi.json" \
        --output-path "$out/ocr_fleet_client" --meta none --config "$LIB/python-client.json" \
        --fail-on-warning >"$out/generate.log" 2>&1 || rc=$?
    # The log repeats whole schemas; the lines that say what happened are enough here.
    grep -Ev '^[[:space:]]*$|^[[:space:]]*[][{}"]' "$out/generate.log" | sed 's/^/  /' >&2 || true
    generator_said "python client" "$out/generate.log"
    ((rc == 0)) || failed+=("python client: generator exit $rc")
    [[ -d "$out/ocr_fleet_client" ]] || { failed+=("python client: nothing generated"); return 0; }
    log "python: compileall, import, mypy --strict, usage.py"
    "$VENV/bin/python" -m compileall -q "$out/ocr_fleet_client" >&2 || { failed+=("python client: compileall"); return 0; }
    (cd "$out" && "$VENV/bin/python" -c 'import ocr_fleet_client.models, ocr_fleet_client.api.default') ||
        failed+=("python client: import")
    (cd "$out" && "$VENV/bin/mypy" --config-file "$LIB/mypy.ini" --cache-dir "$CACHE/mypy-cache" \
        usage.py ocr_fleet_client) >&2 || failed+=("python client: mypy --strict")
    (cd "$out" && "$VENV/bin/python" usage.py openapi.json) >&2 || failed+=("python client: usage.py")
}

typescript_types() {
    local out="$WORK/typescript" bin="$NODE_DIR/node_modules/.bin" rc=0
    mkdir -p "$out"
    cp "$WORK/openapi.json" "$LIB/usage.ts" "$LIB/tsconfig.json" "$out/"
    log "openapi-typescript $("$bin/openapi-typescript" --version | awk '{print $NF}')"
    "$bin/openapi-typescript" "$out/openapi.json" -o "$out/api.d.ts" >"$out/generate.log" 2>&1 || rc=$?
    sed 's/^/  /' "$out/generate.log" >&2
    generator_said "typescript types" "$out/generate.log"
    ((rc == 0)) || { failed+=("typescript types: generator exit $rc"); return 0; }
    log "typescript: tsc --strict ($("$bin/tsc" --version))"
    "$bin/tsc" -p "$out/tsconfig.json" >&2 || failed+=("typescript types: tsc --strict")
}

start=$(date +%s)
python_tools
node_tools
ensure_run_dir
rm -rf "$WORK"
mkdir -p "$WORK"
cp "$spec" "$WORK/openapi.json"
python_client
typescript_types

if ((${#failed[@]})); then
    printf 'openapi clients FAILED for %s:\n' "$spec" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
log "openapi clients ok: python client and typescript types from ${spec#"$ROOT"/} in $(($(date +%s) - start)) s"
