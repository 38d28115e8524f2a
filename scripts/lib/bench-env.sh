# shellcheck shell=bash
# The local stack the benchmarks share (scripts/bench-{pipeline,memory,wait,latency}.sh):
# LocalStack's queues and bucket under the prefix bench-NAME, a fresh MariaDB database
# ocr_bench_NAME, the release binaries, and api-local serving one caller whose per-caller limits
# are out of reach (still checked, as shipped). Sourcing it sources common.sh, mariadb.sh,
# localstack.sh and python-env.sh too, and moves to the repository root.

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=scripts/lib/mariadb.sh
source "$ROOT/scripts/lib/mariadb.sh"
# shellcheck source=scripts/lib/localstack.sh
source "$ROOT/scripts/lib/localstack.sh"
# shellcheck source=scripts/lib/python-env.sh
source "$ROOT/scripts/lib/python-env.sh"
cd "$ROOT" || exit 1

# bench_env_up NAME ADDR POOL: starts all of it (api-local on ADDR with DB_POOL_MAX=POOL, logging JSON
# at BENCH_API_LOG, default warn) and a
# trap that stops it on exit. Sets BENCH_ENV (the resources' env file, for the worker), BIN (the
# release binaries), TOKEN (the caller's) and exports DATABASE_URL.
bench_env_up() {
    BENCH_NAME=$1
    local addr=$2 pool=$3
    BENCH_DB="ocr_bench_$BENCH_NAME"
    BENCH_ENV="$RUN_DIR/bench-$BENCH_NAME.env"
    BENCH_PIDFILE="$RUN_DIR/bench-$BENCH_NAME-api.pid"
    trap bench_env_down EXIT

    "$ROOT/scripts/setup.sh"
    ensure_run_dir
    mariadb_ensure bench
    mariadb -h"$MARIADB_HOST" -P"$MARIADB_PORT" -uroot -e "DROP DATABASE IF EXISTS $BENCH_DB"
    mariadb_create_db "$BENCH_DB"
    localstack_start bench
    export AWS_ENDPOINT_URL="$LOCALSTACK_URL" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
    "$LOCALSTACK_VENV/bin/python" "$ROOT/localstack/init.py" --prefix "bench-$BENCH_NAME" \
        --env-file "$BENCH_ENV" >/dev/null
    eval "$("$ROOT/scripts/fetch-models.sh" --print-env)"

    log "building release binaries (cargo build --release --workspace --bins)"
    cargo build --release --workspace --bins
    BIN="$CARGO_TARGET_DIR/release"

    TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
    export DATABASE_URL="mysql://root@$MARIADB_HOST:$MARIADB_PORT/$BENCH_DB"
    (
        set -a
        # shellcheck source=/dev/null
        source "$BENCH_ENV"
        set +a
        export AUTH_MODE=static API_TOKENS="$TOKEN:bench" BIND_ADDR=$addr QUEUE_DEPTH_LIMIT=100000 \
            DB_POOL_MAX=$pool CALLER_MAX_QUEUED=100000000 CALLER_MAX_RATE=100000000 CALLER_BURST=100000000 \
            WAIT_MAX_TOTAL=100000000 WAIT_MAX_PER_CALLER=100000000 \
            RUST_LOG=${BENCH_API_LOG:-warn} LOG_FORMAT=json
        exec setsid "$BIN/api-local"
    ) </dev/null >"$RUN_DIR/bench-$BENCH_NAME-api.log" 2>&1 &
    echo "$!" >"$BENCH_PIDFILE"
    local i
    for ((i = 0; i < 120; i++)); do http_ok "http://$addr/healthz" && break; sleep 0.25; done
    http_ok "http://$addr/healthz" || die "api-local did not start"
}

bench_env_down() {
    set +e
    stop_group "$BENCH_PIDFILE" api-local
    "$LOCALSTACK_VENV/bin/python" "$ROOT/localstack/init.py" --prefix "bench-$BENCH_NAME" --delete >/dev/null 2>&1
    [[ $LOCALSTACK_STARTED == 1 ]] && localstack_stop bench
    [[ $MARIADB_STARTED == 1 ]] && mariadb_stop bench
}
