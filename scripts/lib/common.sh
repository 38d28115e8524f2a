# shellcheck shell=bash
# Shared helpers for the ocr-fleet scripts. Source it; don't run it.
#
#   ROOT          repository root (absolute)
#   RUN_DIR       $ROOT/.run: pid files, logs, generated env files (ignored by git)
#   OCR_FLEET_CACHE   cache outside the clone (default ~/.cache/ocr-fleet)
#   CARGO_TARGET_DIR  exported: the ONE cargo target dir every script uses,
#                     outside the clone so a fresh clone (CI) reuses builds.

if [[ -n "${_OCR_COMMON_SH:-}" ]]; then return 0; fi
_OCR_COMMON_SH=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUN_DIR="$ROOT/.run"
OCR_FLEET_CACHE="${OCR_FLEET_CACHE:-$HOME/.cache/ocr-fleet}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$OCR_FLEET_CACHE/target}"

# Local AWS (LocalStack) defaults shared by every script.
# shellcheck disable=SC2034 # used by the scripts that source this file
# OCR_LOCALSTACK_PORT lets a script run its own LocalStack beside the usual one (chaos.sh).
LOCALSTACK_PORT="${OCR_LOCALSTACK_PORT:-4566}"
# shellcheck disable=SC2034
LOCALSTACK_URL="http://127.0.0.1:${LOCALSTACK_PORT}"
# shellcheck disable=SC2034
LOCALSTACK_VENV="$ROOT/.venv/localstack"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    printf '[%s] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2
    exit 1
}

ensure_run_dir() { mkdir -p "$RUN_DIR"; }

# is_ci: true when running non-interactively in CI.
is_ci() { [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; }

# pid_alive PID
pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# read_pidfile FILE -> prints the pid if the file exists and the process lives.
read_pidfile() {
    local f=$1 pid
    [[ -f "$f" ]] || return 1
    pid=$(<"$f")
    pid_alive "$pid" || return 1
    printf '%s\n' "$pid"
}

# stop_group PIDFILE NAME [GRACE_SECS]: SIGTERM the whole process group recorded in PIDFILE
# (processes are started with setsid, so pid == pgid), wait up to GRACE_SECS (10), then SIGKILL.
stop_group() {
    local f=$1 name=$2 grace=${3:-10} pid i
    if ! pid=$(read_pidfile "$f"); then
        rm -f "$f"
        return 0
    fi
    log "stopping $name (process group $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    if pid_alive "$pid"; then
        warn "$name did not stop in $grace s; killing"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    # Leftover children of the group (SIGKILL when the leader is gone).
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$f"
}

# http_ok URL: true when URL answers 2xx.
http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }

# APT: install Debian packages only when missing; `apt-get update` at most once per run.
_APT_UPDATED=0
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "need Debian packages ${missing[*]} but apt-get is missing"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "need root (or sudo) to install ${missing[*]}"
        sudo=(sudo)
    fi
    if [[ $_APT_UPDATED == 0 ]]; then
        log "apt-get update"
        "${sudo[@]}" apt-get update -qq
        _APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Timing summary helpers: step NAME CMD... runs CMD and records its duration.
_STEP_NAMES=()
_STEP_SECS=()
_STEP_RESULTS=()
step() {
    local name=$1 start rc=0
    shift
    log "==> $name"
    start=$(date +%s)
    "$@" || rc=$?
    _STEP_NAMES+=("$name")
    _STEP_SECS+=("$(($(date +%s) - start))")
    if ((rc == 0)); then _STEP_RESULTS+=(ok); else _STEP_RESULTS+=("FAILED (exit $rc)"); fi
    return "$rc"
}
print_timings() {
    local i
    printf '\n%-34s %8s  %s\n' "step" "seconds" "result" >&2
    for i in "${!_STEP_NAMES[@]}"; do
        printf '%-34s %8s  %s\n' "${_STEP_NAMES[$i]}" "${_STEP_SECS[$i]}" "${_STEP_RESULTS[$i]}" >&2
    done
}
