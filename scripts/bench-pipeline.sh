#!/usr/bin/env bash
# The pipeline against the engine alone, in one run (scripts/bench.sh pipeline).
#   A few hundred rendered pages and lines; the same engine settings for both:
#   1. the `ocr` CLI alone on the images (images/s);
#   2. the same images through the API (presigned PUT), the upload poller, LocalStack SQS/S3,
#      one release gpu-worker and MariaDB (jobs/s, queue-to-result p50/p99, engine busy ratio),
#      checking that every job has exactly one result.
# Options: --count N (default 200), --model-set NAME (default ppocrv6-tiny), --threads N (2),
#          --batch N (32)
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

count=200 model_set=ppocrv6-tiny threads=2 batch=32
while (($#)); do
    case "$1" in
    --count) count=$2; shift 2 ;;
    --model-set) model_set=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    *) die "unknown option $1" ;;
    esac
done

DB=ocr_bench_pipeline
PIDFILE="$RUN_DIR/bench-pipeline-api.pid"
cleanup() {
    set +e
    stop_group "$PIDFILE" api-local
    "$LOCALSTACK_VENV/bin/python" "$ROOT/localstack/init.py" --prefix bench-pipe --delete >/dev/null 2>&1
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
"$LOCALSTACK_VENV/bin/python" "$ROOT/localstack/init.py" --prefix bench-pipe --env-file "$RUN_DIR/bench-pipe.env" >/dev/null
eval "$("$ROOT/scripts/fetch-models.sh" --print-env)"

log "building release binaries (cargo build --release --workspace --bins)"
cargo build --release --workspace --bins
BIN="$CARGO_TARGET_DIR/release"

images="$RUN_DIR/bench-pipeline-images"
py=$(python_env demo "pillow==13.0.0")
rm -rf "$images"
"$py" "$ROOT/scripts/lib/make_samples.py" "$images" --count "$count" --seed 11

TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
ADDR=127.0.0.1:18081
export DATABASE_URL="mysql://root@$MARIADB_HOST:$MARIADB_PORT/$DB"
(
    set -a
    # shellcheck source=/dev/null
    source "$RUN_DIR/bench-pipe.env"
    set +a
    # One caller: its per-caller limits out of reach (still checked, as shipped).
    export AUTH_MODE=static API_TOKENS="$TOKEN:bench" BIND_ADDR=$ADDR QUEUE_DEPTH_LIMIT=100000 DB_POOL_MAX=8 \
        CALLER_MAX_QUEUED=100000000 CALLER_MAX_RATE=100000000 CALLER_BURST=100000000 RUST_LOG=warn
    exec setsid "$BIN/api-local"
) </dev/null >"$RUN_DIR/bench-pipeline-api.log" 2>&1 &
echo "$!" >"$PIDFILE"
for ((i = 0; i < 120; i++)); do http_ok "http://$ADDR/healthz" && break; sleep 0.25; done
http_ok "http://$ADDR/healthz" || die "api-local did not start"

worker_cmd="set -a; . '$RUN_DIR/bench-pipe.env'; set +a; \
OCR_MODEL_SET=$model_set OCR_THREADS=$threads BATCH_MAX=$batch METRICS_ADDR=127.0.0.1:19100 \
CLOUDWATCH_INTERVAL_SECS=60 RUST_LOG=warn exec '$BIN/gpu-worker' >>'$RUN_DIR/bench-pipeline-worker.log' 2>&1"
log "engine alone, then the pipeline: $count images, model set $model_set, $threads threads, batch $batch"
OCR_MODEL_SET=$model_set python3 "$ROOT/scripts/lib/bench_pipeline.py" --api "http://$ADDR" --token "$TOKEN" \
    --db "$DB" --ocr "$BIN/ocr" --worker-cmd "$worker_cmd" --metrics "http://127.0.0.1:19100/metrics" \
    --images "$images" --threads "$threads" --batch "$batch" --model-set "$model_set"
