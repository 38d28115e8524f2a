#!/usr/bin/env bash
# The local system, left running: MariaDB, LocalStack (bucket, queues), and the API.
#
# Usage: scripts/dev.sh up|down|status|env
#   up      setup (fast when done), MariaDB (database ocr_fleet), LocalStack on :4566,
#           localstack/init.py (stage local: ocr-uploads, ocr-express, ...), then builds and starts
#           `api-local` (package ocr-api: the API on http://127.0.0.1:8080 plus the upload-event
#           poller that plays the on-upload Lambda). Fresh random API tokens on every `up`.
#           Prints API_URL, API_TOKEN, API_TOKEN_2. Running `up` again restarts the API.
#   down    stops what `up` started (pids in .run/); what was already running stays.
#   status  what is running
#   env     prints .run/dev.env (all the env of the running system; mode 600)
#
# Logs: .run/api-local.log, .run/localstack.log.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/mariadb.sh
source "$ROOT/scripts/lib/mariadb.sh"
# shellcheck source=scripts/lib/localstack.sh
source "$ROOT/scripts/lib/localstack.sh"
cd "$ROOT"

DEV_ENV="$RUN_DIR/dev.env"
API_PIDFILE="$RUN_DIR/api-local.pid"
API_LOG="$RUN_DIR/api-local.log"
API_BIND="${DEV_BIND_ADDR:-127.0.0.1:8080}"
API_URL="http://$API_BIND"
API_BIN="$CARGO_TARGET_DIR/debug/api-local"

random_token() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }

build_api() {
    # The whole workspace's binaries in one build: building single packages re-resolves
    # features and rebuilds shared dependencies.
    log "building api-local and gpu-worker (cargo build --workspace --bins; target $CARGO_TARGET_DIR)"
    if ! cargo build --workspace --bins; then
        die "could not build the binaries: see the cargo errors above"
    fi
    [[ -x "$API_BIN" ]] || die "cargo reported success but $API_BIN is missing"
}

write_env() {
    local resources=$1 tok1 tok2
    tok1=$(random_token)
    tok2=$(random_token)
    (
        umask 077
        {
            echo "# written by scripts/dev.sh up at $(date -u +%FT%TZ); secrets: keep private"
            echo "AWS_ENDPOINT_URL=$LOCALSTACK_URL"
            echo "AWS_REGION=us-east-1"
            echo "AWS_DEFAULT_REGION=us-east-1"
            echo "AWS_ACCESS_KEY_ID=test"
            echo "AWS_SECRET_ACCESS_KEY=test"
            echo "AWS_EC2_METADATA_DISABLED=true"
            cat "$resources"
            echo "DATABASE_URL=mysql://root@$MARIADB_HOST:$MARIADB_PORT/ocr_fleet"
            echo "AUTH_MODE=static"
            echo "API_TOKENS=$tok1:alice,$tok2:bob"
            echo "BIND_ADDR=$API_BIND"
            echo "LOG_FORMAT=json"
            echo "API_URL=$API_URL"
            echo "API_TOKEN=$tok1"
            echo "API_TOKEN_2=$tok2"
            echo "WEBHOOK_SECRET=$(random_token)"
        } >"$DEV_ENV.tmp"
        mv "$DEV_ENV.tmp" "$DEV_ENV"
    )
    chmod 600 "$DEV_ENV"
}

# wait_ready NAME PIDFILE LOG URL SECONDS: wait until URL answers 2xx; die with the log's tail
# if the process exits first or SECONDS pass.
wait_ready() {
    local name=$1 pidfile=$2 logfile=$3 url=$4 secs=$5 i
    for ((i = 0; i < secs * 4; i++)); do
        if ! pid_alive "$(<"$pidfile")"; then
            tail -n 30 "$logfile" >&2
            rm -f "$pidfile"
            die "$name exited during start (log above: $logfile)"
        fi
        if http_ok "$url"; then
            log "$name ready (pid $(<"$pidfile"))"
            return 0
        fi
        sleep 0.25
    done
    tail -n 30 "$logfile" >&2
    die "$name did not answer $url within $secs s (log: $logfile)"
}

start_api() {
    stop_group "$API_PIDFILE" api-local
    if http_ok "$API_URL/healthz"; then
        die "something else already answers on $API_URL (not started by dev.sh); stop it or set DEV_BIND_ADDR"
    fi
    log "starting api-local on $API_URL; log: ${API_LOG#"$ROOT"/}"
    # Everything in dev.env becomes the process's environment (tokens never on a command line).
    (
        set -a
        # shellcheck source=/dev/null
        source "$DEV_ENV"
        set +a
        export RUST_LOG="${RUST_LOG:-info}"
        exec setsid "$API_BIN"
    ) </dev/null >>"$API_LOG" 2>&1 &
    echo "$!" >"$API_PIDFILE"
    wait_ready api-local "$API_PIDFILE" "$API_LOG" "$API_URL/healthz" 60
}

# --- GPU worker --------------------------------------------------------------------------
# One gpu-worker on the local queues (CPU engine, models from scripts/fetch-models.sh).
WORKER_PIDFILE="$RUN_DIR/worker.pid"
WORKER_LOG="$RUN_DIR/worker.log"
WORKER_BIN="$CARGO_TARGET_DIR/debug/gpu-worker"
WORKER_METRICS="${DEV_METRICS_ADDR:-127.0.0.1:9100}"

start_worker() {
    local models
    stop_group "$WORKER_PIDFILE" gpu-worker
    models=$("$ROOT/scripts/fetch-models.sh" --print-env) || die "fetching the OCR models failed"
    log "starting gpu-worker (metrics http://$WORKER_METRICS/metrics); log: ${WORKER_LOG#"$ROOT"/}"
    (
        set -a
        # shellcheck source=/dev/null
        source "$DEV_ENV"
        set +a
        eval "$models"
        export METRICS_ADDR="$WORKER_METRICS" RESULT_URL_BASE="$API_URL" FLEET_NAME=local
        export RUST_LOG="${RUST_LOG:-info,ort=warn}"
        exec setsid "$WORKER_BIN"
    ) </dev/null >>"$WORKER_LOG" 2>&1 &
    echo "$!" >"$WORKER_PIDFILE"
    # Ready when the metrics port answers: the models are loaded before it opens.
    wait_ready gpu-worker "$WORKER_PIDFILE" "$WORKER_LOG" "http://$WORKER_METRICS/healthz" 120
}

stop_worker() {
    stop_group "$WORKER_PIDFILE" gpu-worker
}
# -----------------------------------------------------------------------------------------

up() {
    local resources
    "$ROOT/scripts/setup.sh"
    ensure_run_dir
    mariadb_ensure dev
    mariadb_create_db ocr_fleet
    localstack_start dev
    resources="$RUN_DIR/localstack.env"
    AWS_ENDPOINT_URL="$LOCALSTACK_URL" "$LOCALSTACK_VENV/bin/python" "$ROOT/localstack/init.py" \
        --stage local --env-file "$resources" >/dev/null
    build_api
    write_env "$resources"
    start_api
    start_worker
    echo "DEV_ENV_FILE=$DEV_ENV" >&2
    grep -E '^API_(URL|TOKEN|TOKEN_2)=' "$DEV_ENV"
}

down() {
    stop_worker
    stop_group "$API_PIDFILE" api-local
    localstack_stop dev
    mariadb_stop dev
    rm -f "$DEV_ENV"
    log "dev system down"
}

status() {
    local pid
    if pid=$(read_pidfile "$API_PIDFILE"); then
        echo "api-local running on $API_URL (pid $pid)"
    else
        echo "api-local not running"
    fi
    if pid=$(read_pidfile "$WORKER_PIDFILE"); then
        echo "gpu-worker running, metrics on http://$WORKER_METRICS/metrics (pid $pid)"
    else
        echo "gpu-worker not running"
    fi
    localstack_status || true
    if mariadb_answers; then echo "MariaDB answers on $MARIADB_HOST:$MARIADB_PORT"; else echo "MariaDB not answering"; fi
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
env)
    [[ -f "$DEV_ENV" ]] || die "no $DEV_ENV: run scripts/dev.sh up"
    cat "$DEV_ENV"
    ;;
*)
    echo "usage: $0 up|down|status|env" >&2
    exit 2
    ;;
esac
