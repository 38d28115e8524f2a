#!/usr/bin/env bash
# Derives the INT8 model set ppocrv6-small-int8 from the float PP-OCRv6 small files that
# scripts/fetch-models.sh fetched and sha256-checked (models/ppocrv6-small), reproducibly:
# ONNX Runtime's static QDQ quantization of det.onnx and rec.onnx, calibrated on text lines and
# pages it renders itself (scripts/lib/quantize_models.py, in .venv/quantize with pinned
# onnxruntime/onnx/numpy/protobuf/pillow; DejaVu fonts from Debian's fonts-dejavu-core), then a
# check of the result against gpu-worker/engine/model-sets/SHA256SUMS.int8 (same inputs + same
# versions = same bytes; the calibrated ranges are rounded so CPU float differences do not count).
# `scripts/fetch-models.sh --with-int8` runs this when the set is missing or stale.
#
# Usage: scripts/quantize-models.sh [--print-sums] [--quiet] [-- ARGS]
#   --print-sums  print the new files' sha256 lines (for SHA256SUMS.int8) instead of checking
#   -- ARGS       other quantize_models.py options (experiments; implies --print-sums), e.g.
#                 -- --out /tmp/x --rec dynamic --det copy --weight-type quint8
# Env: OCR_MODEL_DIR (default <repo>/models).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/python-env.sh
source "$ROOT/scripts/lib/python-env.sh"
SETS_SRC="$ROOT/gpu-worker/engine/model-sets"
MODEL_DIR="${OCR_MODEL_DIR:-$ROOT/models}"
SET=ppocrv6-small-int8
print_sums=0 quiet=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --print-sums) print_sums=1; shift ;;
    --quiet) quiet=1; shift ;;
    --) shift; extra=("$@"); print_sums=1; break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "quantize-models: unknown option $1" >&2; exit 2 ;;
  esac
done
log() { [ "$quiet" = 1 ] || echo "quantize-models: $*" >&2; }

# The float inputs, fetched and checked (no --with-int8 here: that would call back).
"$ROOT/scripts/fetch-models.sh" --quiet
PY=$(python_env quantize onnxruntime==1.32.0 onnx==1.23.2 numpy==2.5.5 protobuf==7.36.2 pillow==12.0.0)

# The recipe (measured in docs/engine.md, "INT8 model set").
# Recogniser: Conv + MatMul with its 14 depthwise convolutions float, min/max ranges from 256
# rendered lines (64 lines cost word F1: docs/engine.md); detector: every op it can quantize.
recipe=(--src "$MODEL_DIR/ppocrv6-small" --out "$MODEL_DIR/$SET" --weight-type qint8 --per-channel
        --calib-method minmax --calib-seed 11 --calib-lines 256 --calib-pages 12
        --rec static --rec-ops "Conv,MatMul" --rec-exclude-depthwise
        --det static --det-ops all)
log "quantizing into $MODEL_DIR/$SET"
qlog=$(mktemp); trap 'rm -f "$qlog"' EXIT
if ! "$PY" "$ROOT/scripts/lib/quantize_models.py" "${recipe[@]}" "${extra[@]}" >"$qlog" 2>&1; then
  cat "$qlog" >&2; echo "quantize-models: quantize_models.py failed" >&2; exit 1
fi
[ "$quiet" = 1 ] || cat "$qlog" >&2

if [ "$print_sums" = 1 ]; then
  out="$MODEL_DIR/$SET"
  for ((i = 0; i < ${#extra[@]}; i++)); do [ "${extra[$i]}" = --out ] && out=${extra[$((i + 1))]}; done
  (cd "$MODEL_DIR" && sha256sum "$(realpath --relative-to="$MODEL_DIR" "$out")"/{det,rec}.onnx "$(realpath --relative-to="$MODEL_DIR" "$out")"/dict.txt)
  exit 0
fi
cp "$SETS_SRC/$SET.json" "$MODEL_DIR/$SET/manifest.json"
if ! (cd "$MODEL_DIR" && sha256sum --quiet -c "$SETS_SRC/SHA256SUMS.int8" >&2); then
  echo "quantize-models: the quantized files differ from $SETS_SRC/SHA256SUMS.int8 (other onnxruntime/onnx versions?); refusing them" >&2
  rm -rf "${MODEL_DIR:?}/$SET"
  exit 1
fi
log "$SET verified in $MODEL_DIR"
