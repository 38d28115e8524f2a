#!/usr/bin/env bash
# The main job, locally: the whole pipeline on this machine.
#   LocalStack (S3, SQS) + MariaDB + the API + the upload-event poller + one GPU worker
#   (CPU engine here), then sample images uploaded the way a phone does (create job →
#   presigned PUT), progress while they are read, and each image's text and timing.
#
# Usage: scripts/demo.sh [IMAGE...]     (default: freshly rendered sample pages)
#        DEMO_KEEP=1 scripts/demo.sh    leaves the system running (scripts/dev.sh down stops it)
# Everything it starts is stopped at the end.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/python-env.sh
source "$ROOT/scripts/lib/python-env.sh"
cd "$ROOT"

finish() {
    local rc=$?
    if [[ "${DEMO_KEEP:-0}" != 1 ]]; then
        "$ROOT/scripts/dev.sh" down >&2 || true
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

ensure_run_dir
"$ROOT/scripts/dev.sh" up >"$RUN_DIR/demo-up.txt" || die "scripts/dev.sh up failed"
# shellcheck source=/dev/null
source <(grep -E '^API_(URL|TOKEN)=' "$RUN_DIR/demo-up.txt")

images=("$@")
if ((${#images[@]} == 0)); then
    py=$(python_env demo "pillow==13.0.0")
    rm -rf "$RUN_DIR/samples"
    "$py" "$ROOT/scripts/lib/make_samples.py" "$RUN_DIR/samples" --count 6 --documents 2
    mapfile -t images < <(find "$RUN_DIR/samples" -type f ! -name '*.jsonl' | sort)
fi
log "sending ${#images[@]} images to $API_URL"
python3 "$ROOT/scripts/lib/demo_client.py" "$API_URL" "$API_TOKEN" "${images[@]}"
