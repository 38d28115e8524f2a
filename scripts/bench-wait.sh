#!/usr/bin/env bash
# Waiting GETs against polling, in one run (scripts/bench.sh wait): N jobs read until they end by
# clients that send `GET /v1/jobs/{id}?wait=20` (again while a job still runs) and by clients that
# poll every 0.5 s. Prints GETs per job and the latency from each job's end (`finished_at_ms`) to
# the client holding it (p50/p90/max) for both; see scripts/lib/bench_wait.py.
# LocalStack, MariaDB and a release api-local (bench-env.sh); jobs end by one release gpu-worker
# (PP-OCRv6 tiny), or with --simulate by SQL 1 to 3 s after the clients start (no worker, no models).
# Options: --count N (jobs per mode, default 50), --simulate, --wait SECS (20), --interval SECS (0.5)
set -euo pipefail
# shellcheck source=scripts/lib/bench-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/bench-env.sh"

count=50 simulate=0 wait=20 interval=0.5
while (($#)); do
    case "$1" in
    --count) count=$2; shift 2 ;;
    --simulate) simulate=1; shift ;;
    --wait) wait=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    *) die "unknown option $1" ;;
    esac
done

ADDR=127.0.0.1:18083
bench_env_up wait "$ADDR" 8
py=$(python_env demo "pillow==13.0.0")
args=(--api "http://$ADDR" --token "$TOKEN" --db "$BENCH_DB" --count "$count" --wait "$wait" --interval "$interval")
if ((simulate)); then
    args+=(--simulate)
else
    images="$RUN_DIR/bench-wait-images"
    rm -rf "$images"
    "$py" "$ROOT/scripts/lib/make_samples.py" "$images" --count 20 --seed 11
    args+=(--images "$images" --metrics "http://127.0.0.1:19102/metrics" --worker-cmd "set -a; . '$BENCH_ENV'; set +a; \
OCR_MODEL_SET=ppocrv6-tiny OCR_THREADS=2 BATCH_MAX=8 METRICS_ADDR=127.0.0.1:19102 \
CLOUDWATCH_INTERVAL_SECS=0 RUST_LOG=warn exec '$BIN/gpu-worker' >>'$RUN_DIR/bench-wait-worker.log' 2>&1")
fi
ends="by the worker"
((simulate)) && ends="simulated"
log "wait vs poll: $count jobs per mode, ends $ends"
"$py" "$ROOT/scripts/lib/bench_wait.py" "${args[@]}"
