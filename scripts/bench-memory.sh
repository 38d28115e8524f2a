#!/usr/bin/env bash
# Peak memory of one worker fed near-limit images, decoded-pixel budget off and on, in one run
# (scripts/bench.sh memory). LocalStack, MariaDB, the API (presigned PUTs, upload poller) and a
# release gpu-worker (PP-OCRv6 tiny, BATCH_MAX 32); see scripts/lib/bench_memory.py.
# Options: --count N (images per budget, default 64), --budgets "0 1024" (DECODED_BUDGET_MB
#          values; 0 = off), --side PX (default 7071: 50.0 MP, just under the pixel limit)
set -euo pipefail
# shellcheck source=scripts/lib/bench-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/bench-env.sh"

count=64 budgets="0 1024" side=7071
while (($#)); do
    case "$1" in
    --count) count=$2; shift 2 ;;
    --budgets) budgets=$2; shift 2 ;;
    --side) side=$2; shift 2 ;;
    *) die "unknown option $1" ;;
    esac
done

ADDR=127.0.0.1:18082
bench_env_up memory "$ADDR" 4
py=$(python_env demo "pillow==13.0.0")

worker_log="$RUN_DIR/bench-memory-worker.log"
: >"$worker_log"
worker_cmd="set -a; . '$BENCH_ENV'; set +a; \
OCR_MODEL_SET=ppocrv6-tiny OCR_THREADS=2 BATCH_MAX=32 METRICS_ADDR=127.0.0.1:19101 \
CLOUDWATCH_INTERVAL_SECS=0 RUST_LOG=info exec '$BIN/gpu-worker'"
log "memory: $count images of ${side}x$side per budget, budgets (MiB): $budgets"
"$py" "$ROOT/scripts/lib/bench_memory.py" --api "http://$ADDR" --token "$TOKEN" --db "$BENCH_DB" \
    --worker-cmd "$worker_cmd" --log "$worker_log" --count "$count" --budgets "$budgets" --side "$side"
