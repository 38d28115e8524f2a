#!/usr/bin/env bash
# Peak memory of one worker fed near-limit images, decoded-pixel budget off and on, in one run
# (scripts/bench.sh memory). LocalStack, MariaDB, the API (presigned PUTs, upload poller) and a
# release gpu-worker (PP-OCRv6 tiny, BATCH_MAX 32); see scripts/lib/bench_memory.py.
# Options: --count N (images per budget, default 64), --budgets "0 1024" (DECODED_BUDGET_MB
#          values; 0 = off), --side PX (default 7071: 50.0 MP, just under the pixel limit)
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/mariadb.sh
source "$ROOT/scripts/lib/mariadb.sh"
# shellcheck source=scripts/lib/localstack.sh
source "$ROOT/scripts/lib/localstack.sh"
# shellcheck source=scripts/lib/python-env.sh
source "$ROOT/scripts/lib/python-env.sh"
cd "$ROOT"

count=64 budgets="0 1024" side=7071
while (($#)); do
    case "$1" in
    --count) count=$2; shift 2 ;;
    --budgets) budgets=$2; shift 2 ;;
    --side) side=$2; shift 2 ;;
    *) die "unknown option $1" ;;
    esac
done

DB=ocr_bench_memory
PIDFILE="$RUN_DIR/bench-memory-api.pid"
cleanup() {
    set +e
    stop_group "$PIDFILE" api-local
    "$LOCALSTACK_VENV/bin/python" "$ROOT/localstack/init.py" --prefix bench-mem --delete >/dev/null 2>&1
    [[ $LOCALSTACK_STARTED == 1 ]] && localstack_stop bench
    [[ $MARIADB_STARTED == 1 ]] && mariadb_stop bench
}
trap cleanup EXIT

"$ROOT/scripts/setup.sh"
ensure_run_dir
mariadb_ensure bench
mariadb -h"$MARIADB_HOST" -P"$MARIADB_PORT" -uroot -e "DROP DATABASE IF EXISTS $DB"
mariadb_create_db "$DB"
localstack_start bench
export AWS_ENDPOINT_URL="$LOCALSTACK_URL" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
"$LOCALSTACK_VENV/bin/python" "$ROOT/localstack/init.py" --prefix bench-mem --env-file "$RUN_DIR/bench-mem.env" >/dev/null
eval "$("$ROOT/scripts/fetch-models.sh" --print-env)"

log "building release binaries (cargo build --release --workspace --bins)"
cargo build --release --workspace --bins
BIN="$CARGO_TARGET_DIR/release"
py=$(python_env demo "pillow==13.0.0")

TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
ADDR=127.0.0.1:18082
export DATABASE_URL="mysql://root@$MARIADB_HOST:$MARIADB_PORT/$DB"
(
    set -a
    # shellcheck source=/dev/null
    source "$RUN_DIR/bench-mem.env"
    set +a
    export AUTH_MODE=static API_TOKENS="$TOKEN:bench" BIND_ADDR=$ADDR QUEUE_DEPTH_LIMIT=100000 DB_POOL_MAX=4 \
        CALLER_MAX_QUEUED=100000000 CALLER_MAX_RATE=100000000 CALLER_BURST=100000000 RUST_LOG=warn
    exec setsid "$BIN/api-local"
) </dev/null >"$RUN_DIR/bench-memory-api.log" 2>&1 &
echo "$!" >"$PIDFILE"
for ((i = 0; i < 120; i++)); do http_ok "http://$ADDR/healthz" && break; sleep 0.25; done
http_ok "http://$ADDR/healthz" || die "api-local did not start"

worker_log="$RUN_DIR/bench-memory-worker.log"
: >"$worker_log"
worker_cmd="set -a; . '$RUN_DIR/bench-mem.env'; set +a; \
OCR_MODEL_SET=ppocrv6-tiny OCR_THREADS=2 BATCH_MAX=32 METRICS_ADDR=127.0.0.1:19101 \
CLOUDWATCH_INTERVAL_SECS=0 RUST_LOG=info exec '$BIN/gpu-worker'"
log "memory: $count images of ${side}x$side per budget, budgets (MiB): $budgets"
"$py" "$ROOT/scripts/lib/bench_memory.py" --api "http://$ADDR" --token "$TOKEN" --db "$DB" \
    --worker-cmd "$worker_cmd" --log "$worker_log" --count "$count" --budgets "$budgets" --side "$side"
