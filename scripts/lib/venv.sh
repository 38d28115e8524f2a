# shellcheck shell=bash
# The project-local Python virtualenv .venv/localstack (LocalStack, boto3, cfn-lint).
# Source after common.sh.

LOCALSTACK_REQUIREMENTS="$ROOT/localstack/requirements.txt"
LOCALSTACK_CONSTRAINTS="$ROOT/localstack/constraints.txt"
LOCALSTACK_PY="$LOCALSTACK_VENV/bin/python"
_VENV_STAMP="$LOCALSTACK_VENV/.ocr-fleet-stamp"

# _py_ok PYTHON: true if PYTHON runs and is 3.13. localstack-core 2026.3.0 imports
# warnings.deprecated (new in 3.13): under 3.11/3.12 the import fails and LocalStack dies with
# "No component plugins found in namespace localstack.runtime.components".
_py_ok() {
    "$1" -c 'import sys, venv; sys.exit(0 if sys.version_info[:2] == (3, 13) else 1)' >/dev/null 2>&1
}

# find_python: print the path of a Python 3.13 interpreter.
# Order: $OCR_PYTHON, pyenv versions, python3.13 on PATH, uv-managed Python.
find_python() {
    local c pyenv_root
    if [[ -n "${OCR_PYTHON:-}" ]]; then
        _py_ok "$OCR_PYTHON" || die "OCR_PYTHON=$OCR_PYTHON is not a working Python 3.13"
        printf '%s\n' "$OCR_PYTHON"
        return 0
    fi
    pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    if [[ -d "$pyenv_root/versions" ]]; then
        for c in $(find "$pyenv_root/versions" -maxdepth 3 -path '*/3.13.*/bin/python3.13' | sort -rV); do
            if _py_ok "$c"; then
                printf '%s\n' "$c"
                return 0
            fi
        done
    fi
    for c in python3.13 /usr/bin/python3.13 /usr/local/bin/python3.13; do
        if command -v "$c" >/dev/null 2>&1 && _py_ok "$(command -v "$c")"; then
            # Resolve pyenv shims to the real interpreter so the venv does not depend on them.
            "$(command -v "$c")" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    # Last resort: a uv-managed CPython (needs access to GitHub for the download).
    local uv
    log "no Python 3.13 found; asking uv to install one"
    uv=$(uv_bin) || die "no Python 3.13 and no uv: install Python 3.13 (pyenv install 3.13) or set OCR_PYTHON"
    "$uv" python install 3.13 >&2 ||
        die "could not get Python 3.13: install one (pyenv install 3.13) or set OCR_PYTHON"
    "$uv" python find 3.13
}

# uv_system_certs: uv bundles its own CA roots; make it use the system bundle when there is one
# (proxies, mirrors). Exports SSL_CERT_FILE, so call it in the shell that runs uv (not in $(...)).
uv_system_certs() {
    if [[ -z "${SSL_CERT_FILE:-}" && -f /etc/ssl/certs/ca-certificates.crt ]]; then
        export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
    fi
}

# uv_bin: print the path of a uv binary: `uv` on PATH, else one installed from PyPI into
# $OCR_FLEET_CACHE/uv (outside the clone, so every clone and CI reuse it).
uv_bin() {
    local boot="$OCR_FLEET_CACHE/uv" py
    if command -v uv >/dev/null 2>&1; then
        command -v uv
        return 0
    fi
    if [[ ! -x "$boot/bin/uv" ]]; then
        # Any Python 3 with venv and pip will do for this; prefer 3.13, then the system's.
        py=""
        for c in $(find "${PYENV_ROOT:-$HOME/.pyenv}/versions" -maxdepth 3 -path '*/3.13.*/bin/python3.13' 2>/dev/null | sort -rV) python3.13 python3; do
            if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import venv, ensurepip' >/dev/null 2>&1; then
                py=$c
                break
            fi
        done
        if [[ -z "$py" ]]; then
            apt_install python3-venv
            py=python3
        fi
        log "installing uv from PyPI into ${boot/#"$HOME"/\~}"
        rm -rf "$boot"
        "$py" -m venv "$boot" >&2
        "$boot/bin/python" -m pip install -q --disable-pip-version-check uv >&2
    fi
    printf '%s\n' "$boot/bin/uv"
}

_venv_key() {
    local py=$1
    {
        "$py" -c 'import sys; print(sys.version)'
        cat "$LOCALSTACK_REQUIREMENTS" "$LOCALSTACK_CONSTRAINTS"
    } | sha256sum | cut -d' ' -f1
}

# venv_ensure: create/refresh .venv/localstack. Fast (stamp check) when up to date.
venv_ensure() {
    local key py
    if [[ -x "$LOCALSTACK_PY" && -f "$_VENV_STAMP" ]] && _py_ok "$LOCALSTACK_PY"; then
        key=$(_venv_key "$LOCALSTACK_PY")
        if [[ "$(<"$_VENV_STAMP")" == "$key" ]]; then
            log "python venv .venv/localstack is up to date"
            return 0
        fi
    fi
    local uv
    uv=$(uv_bin)
    uv_system_certs
    if ! { [[ -x "$LOCALSTACK_PY" ]] && _py_ok "$LOCALSTACK_PY"; }; then
        py=$(find_python)
        log "creating .venv/localstack with $py"
        rm -rf "$LOCALSTACK_VENV"
        "$uv" venv --quiet --python "$py" "$LOCALSTACK_VENV"
    fi
    log "installing LocalStack, boto3, cfn-lint (uv pip install -c localstack/constraints.txt)"
    "$uv" pip install --quiet --python "$LOCALSTACK_PY" \
        -r "$LOCALSTACK_REQUIREMENTS" -c "$LOCALSTACK_CONSTRAINTS"
    "$LOCALSTACK_PY" -c 'import localstack, boto3, cfnlint' ||
        die ".venv/localstack is incomplete after install"
    _venv_key "$LOCALSTACK_PY" >"$_VENV_STAMP"
    log "python venv ready: $("$LOCALSTACK_PY" --version)"
}
