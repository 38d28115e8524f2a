# shellcheck shell=bash
# python_env NAME PACKAGES...: make sure .venv/NAME (Python 3.12) has PACKAGES (pinned specs);
# prints the venv's python path. Uses uv when it can (fast), pip otherwise. A stamp file keyed
# on the package list makes repeat calls instant.
python_env() {
    local name=$1; shift
    local root; root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    local venv="$root/.venv/$name" stamp key py
    key=$(printf '%s\n' "$@" | sha256sum | cut -d' ' -f1)
    stamp="$venv/.ocr-fleet-stamp"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(<"$stamp")" == "$key" ]]; then
        printf '%s\n' "$venv/bin/python"
        return 0
    fi
    py="${OCR_BENCH_PYTHON:-}"
    if [[ -z "$py" ]]; then
        for c in "$HOME"/.pyenv/versions/3.12.*/bin/python3.12 python3.12 python3; do
            if command -v "$c" >/dev/null 2>&1; then py=$(command -v "$c"); break; fi
        done
    fi
    [[ -n "$py" ]] || { echo "python_env: no python3 found" >&2; return 1; }
    [[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv" >&2
    if [[ ! -x "$venv/bin/uv" ]]; then
        "$venv/bin/python" -m pip --version >/dev/null 2>&1 || "$venv/bin/python" -m ensurepip -q >&2 || true
        "$venv/bin/python" -m pip install -q --disable-pip-version-check uv >&2 || true
    fi
    if [[ -x "$venv/bin/uv" ]]; then
        VIRTUAL_ENV="$venv" "$venv/bin/uv" pip install -q --python "$venv/bin/python" "$@" >&2
    else
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2
    fi
    printf '%s\n' "$key" >"$stamp"
    printf '%s\n' "$venv/bin/python"
}
