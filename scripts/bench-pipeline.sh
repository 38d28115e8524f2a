#!/usr/bin/env bash
# The pipeline against the engine alone, in one run (scripts/bench.sh pipeline).
#   A few hundred rendered pages and lines; the same engine settings for both:
#   1. the `ocr` CLI alone on the images (images/s);
#   2. the same images through the API (presigned PUT), the upload poller, LocalStack SQS/S3,
#      one release gpu-worker and MariaDB (jobs/s, queue-to-result p50/p99, engine busy ratio),
#      checking that every job has exactly one result.
#   3. a 50-page PDF (rendered pages at 200 dpi): pages/s of the CLI alone and as one job through
#      the running pipeline, and the peak RSS of each.
# Options: --count N (default 200), --model-set NAME (default ppocrv6-tiny), --threads N (2),
#          --batch N (32), --pdf-pages N (50; 0: no PDF case)
set -euo pipefail
# shellcheck source=scripts/lib/bench-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/bench-env.sh"

count=200 model_set=ppocrv6-tiny threads=2 batch=32 pdf_pages=50
while (($#)); do
    case "$1" in
    --count) count=$2; shift 2 ;;
    --model-set) model_set=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --pdf-pages) pdf_pages=$2; shift 2 ;;
    *) die "unknown option $1" ;;
    esac
done

ADDR=127.0.0.1:18081
bench_env_up pipeline "$ADDR" 8
images="$RUN_DIR/bench-pipeline-images"
py=$(python_env demo "pillow==13.0.0")
rm -rf "$images"
"$py" "$ROOT/scripts/lib/make_samples.py" "$images" --count "$count" --seed 11
pdf_args=()
if ((pdf_pages > 0)); then
    "$py" "$ROOT/scripts/lib/make_samples.py" "$RUN_DIR/bench-pipeline-pdf" --count 0 --documents 1 --pdf-pages "$pdf_pages" --seed 12
    pdf_args=(--pdf "$RUN_DIR/bench-pipeline-pdf/0000-document.pdf")
fi

worker_cmd="set -a; . '$BENCH_ENV'; set +a; \
OCR_MODEL_SET=$model_set OCR_THREADS=$threads BATCH_MAX=$batch METRICS_ADDR=127.0.0.1:19100 \
CLOUDWATCH_INTERVAL_SECS=60 RUST_LOG=warn exec '$BIN/gpu-worker' >>'$RUN_DIR/bench-pipeline-worker.log' 2>&1"
log "engine alone, then the pipeline: $count images, model set $model_set, $threads threads, batch $batch"
OCR_MODEL_SET=$model_set python3 "$ROOT/scripts/lib/bench_pipeline.py" --api "http://$ADDR" --token "$TOKEN" \
    --db "$BENCH_DB" --ocr "$BIN/ocr" --worker-cmd "$worker_cmd" --metrics "http://127.0.0.1:19100/metrics" \
    --images "$images" --threads "$threads" --batch "$batch" --model-set "$model_set" "${pdf_args[@]}"
