#!/usr/bin/env bash
# Where an express job's time goes, PUT to result, idle and under a bulk flood (scripts/bench.sh
# latency): LocalStack, MariaDB, the API (presigned and direct uploads, the upload-event poller)
# and one release gpu-worker (PP-OCRv6 small, BATCH_MAX 32, 2 threads); see
# scripts/lib/bench_latency.py for what is measured and how.
# Options: --probes N (idle express probes, default 20), --flood N (bulk jobs, default 5000),
#          --flood-probes N (express probes during the flood, default 40), --probe-every SECS (1.5)
set -euo pipefail
# shellcheck source=scripts/lib/bench-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/bench-env.sh"

probes=20 flood=5000 flood_probes=40 every=1.5 model_set=ppocrv6-small
while (($#)); do
    case "$1" in
    --probes) probes=$2; shift 2 ;;
    --flood) flood=$2; shift 2 ;;
    --flood-probes) flood_probes=$2; shift 2 ;;
    --probe-every) every=$2; shift 2 ;;
    --model-set) model_set=$2; shift 2 ;;
    *) die "unknown option $1" ;;
    esac
done

ADDR=127.0.0.1:18083
# The API's `job queued` lines carry the on-upload hop: info level, JSON.
BENCH_API_LOG=info bench_env_up latency "$ADDR" 8
py=$(python_env demo "pillow==13.0.0")

worker_log="$RUN_DIR/bench-latency-worker.log"
: >"$worker_log"
worker_cmd="set -a; . '$BENCH_ENV'; set +a; \
OCR_MODEL_SET=$model_set OCR_THREADS=2 BATCH_MAX=32 METRICS_ADDR=127.0.0.1:19102 \
CLOUDWATCH_INTERVAL_SECS=0 LOG_FORMAT=json RUST_LOG=info exec '$BIN/gpu-worker' >>'$worker_log' 2>&1"
log "latency: $probes idle express probes, then $flood bulk jobs with $flood_probes express probes"
"$py" "$ROOT/scripts/lib/bench_latency.py" --api "http://$ADDR" --token "$TOKEN" --db "$BENCH_DB" \
    --worker-cmd "$worker_cmd" --worker-log "$worker_log" --api-log "$RUN_DIR/bench-latency-api.log" \
    --probes "$probes" --flood "$flood" --flood-probes "$flood_probes" --probe-every "$every"
