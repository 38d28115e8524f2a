#!/usr/bin/env bash
# Benchmarks. Usage: scripts/bench.sh MODE [options]
#
#   engine   our OCR engine vs RapidOCR (rapidocr==3.10.0 + onnxruntime) and faster-paddle==1.0.4
#            on eval sets A, B and C, same images, same thread counts, one system after the other.
#            Prints images/s (wall and per CPU-second), ratios, CER / word F1 (eval/score.py),
#            our per-stage time split and each system's peak RSS.
#     --limit N          first N images of each set (default: all)
#     --sets "A B C"     eval sets (default "A B C"); OCR_EVAL_DIR overrides ../shared/eval
#     --threads "1 2"    thread counts (default "1 2")
#     --systems "ours rapidocr faster-paddle"
#     --model-set NAME   our set (default ppocrv6-small); RapidOCR is given the same files
#     --fp-size SIZE     faster-paddle model size (default: small, or tiny for ppocrv6-tiny)
#     --batch N          images per engine call for ours (default 8)
#     -- ARGS            extra arguments for our `ocr` CLI
#   words      word boxes: ours vs RapidOCR's return_word_box on set B's ground-truth word
#              quadrilaterals (eval/score_words.py), same model files, one thread each
#   api        the producer: wrk on /healthz vs POST /v1/jobs, Lambda binary sizes and init time
#              (scripts/bench-api.sh)
#   pipeline   a few hundred images through LocalStack, the API and the worker vs the same
#              engine alone, in one run (scripts/bench-pipeline.sh)
#   latency    an express job's time per hop (PUT → on-upload → queued → received → prefetched →
#              engine → committed → seen), idle and under a 5,000-job bulk flood, in one run
#              (scripts/bench-latency.sh)
#   memory     peak RSS of one worker fed near-limit (50 MP) images, decoded-pixel budget off
#              and on, in one run (scripts/bench-memory.sh)
#   wait       `GET /v1/jobs/{id}?wait=20` vs polling every 0.5 s: GETs per job and job end →
#              client latency, in one run (scripts/bench-wait.sh; --simulate: no worker or models)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/python-env.sh
source "$ROOT/scripts/lib/python-env.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${OCR_FLEET_CACHE:-$HOME/.cache/ocr-fleet}/target}"

mode="${1:-}"; shift || true
case "$mode" in
  engine|words) ;;
  api) exec "$ROOT/scripts/bench-api.sh" "$@" ;;
  pipeline) exec "$ROOT/scripts/bench-pipeline.sh" "$@" ;;
  memory) exec "$ROOT/scripts/bench-memory.sh" "$@" ;;
  latency) exec "$ROOT/scripts/bench-latency.sh" "$@" ;;
  wait) exec "$ROOT/scripts/bench-wait.sh" "$@" ;;
  *) sed -n '2,/^set -euo/{/^set -euo/!p}' "$0" >&2; exit 2 ;;
esac

limit=0 sets="A B C" threads="1 2" systems="ours rapidocr faster-paddle" model_set=ppocrv6-small fp_size="" batch=8
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --limit) limit=$2; shift 2 ;;
    --sets) sets=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --systems) systems=$2; shift 2 ;;
    --model-set) model_set=$2; shift 2 ;;
    --fp-size) fp_size=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "bench.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$fp_size" ]; then
  case "$model_set" in *tiny*|fast) fp_size=tiny ;; *) fp_size=small ;; esac
fi
EVAL="${OCR_EVAL_DIR:-$ROOT/../shared/eval}"
[ -f "$EVAL/score.py" ] || { echo "bench.sh: no eval sets at $EVAL (set OCR_EVAL_DIR)" >&2; exit 1; }

echo "bench: preparing models, build and Python peers" >&2
fetch_args=(--print-env --quiet)
case "$model_set" in *int8*) fetch_args+=(--with-int8) ;; esac
eval "$("$ROOT/scripts/fetch-models.sh" "${fetch_args[@]}")"
cargo build -q --release -p ocr-engine --manifest-path "$ROOT/Cargo.toml"
OCR="$CARGO_TARGET_DIR/release/ocr"
PY=$(python_env bench rapidocr==3.10.0 onnxruntime==1.32.0 faster-paddle==1.0.4 rapidfuzz==3.14.6)

if [ "$mode" = words ]; then
  out="$ROOT/.run/bench/words-$(date -u +%Y%m%dT%H%M%S)"
  echo "bench: results in $out" >&2
  exec "$PY" "$ROOT/gpu-worker/engine/bench/words.py" --ocr "$OCR" --eval "$EVAL" --model-dir "$OCR_MODEL_DIR" \
    --set "$model_set" --out "$out"
fi
out="$ROOT/.run/bench/engine-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$out"
echo "bench: results in $out" >&2

for s in $sets; do
  "$PY" - "$EVAL" "$s" "$limit" >"$out/$s.tsv" <<'PYEOF'
import json, os, sys
ev, s, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
recs = [json.loads(l) for l in open(os.path.join(ev, s, "manifest.jsonl")) if l.strip()]
if limit: recs = recs[:limit]
for r in recs: print(f"{r['image']}\t{os.path.abspath(os.path.join(ev, r['image']))}")
PYEOF
  "$PY" - "$EVAL/$s/manifest.jsonl" "$out/$s.tsv" >"$out/$s.gt.jsonl" <<'PYEOF'
import json, sys
keep = {l.split("\t")[0] for l in open(sys.argv[2]) if l.strip()}
for l in open(sys.argv[1]):
    if l.strip() and json.loads(l)["image"] in keep: print(l.rstrip("\n"))
PYEOF
done

peak_rss() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$1"; }

for t in $threads; do
  for s in $sets; do
    for sys in $systems; do
      tag="$sys-$s-t$t"
      echo "bench: $tag" >&2
      case "$sys" in
        ours)
          cut -f2 "$out/$s.tsv" | tr '\n' '\0' | xargs -0 /usr/bin/time -v -o "$out/$tag.time" \
            "$OCR" --format json --stats --threads "$t" --batch "$batch" --model-set "$model_set" "${extra[@]}" \
            >"$out/$tag.raw.jsonl" 2>"$out/$tag.log" || true
          "$PY" - "$out/$s.tsv" "$out/$tag.raw.jsonl" >"$out/$tag.jsonl" <<'PYEOF'
import json, sys
back = {l.rstrip("\n").split("\t")[1]: l.split("\t")[0] for l in open(sys.argv[1]) if l.strip()}
for l in open(sys.argv[2]):
    r = json.loads(l); r["image"] = back.get(r.pop("file"), "?"); r.pop("lines", None); r.pop("pages", None); print(json.dumps(r))
PYEOF
          grep '^{' "$out/$tag.log" | tail -n1 >"$out/$tag.stats.json" || true ;;
        rapidocr)
          /usr/bin/time -v -o "$out/$tag.time" "$PY" "$ROOT/gpu-worker/engine/bench/peers.py" rapidocr \
            --threads "$t" --model-dir "$OCR_MODEL_DIR" --set "$model_set" --list "$out/$s.tsv" --out "$out/$tag.jsonl" 2>"$out/$tag.log" ;;
        faster-paddle)
          /usr/bin/time -v -o "$out/$tag.time" "$PY" "$ROOT/gpu-worker/engine/bench/peers.py" faster-paddle \
            --threads "$t" --size "$fp_size" --list "$out/$s.tsv" --out "$out/$tag.jsonl" 2>"$out/$tag.log" ;;
      esac
      "$PY" "$EVAL/score.py" --gt "$out/$s.gt.jsonl" --pred "$out/$tag.jsonl" --json >"$out/$tag.score.json"
      echo "{\"tag\":\"$tag\",\"system\":\"$sys\",\"set\":\"$s\",\"threads\":$t,\"peak_rss_mb\":$(peak_rss "$out/$tag.time"),\"score\":$(cat "$out/$tag.score.json")}" >>"$out/summary.jsonl"
    done
  done
done

"$PY" "$ROOT/gpu-worker/engine/bench/report.py" "$out" | tee "$out/report.txt"
# Where ours and the peers differ: per image, and the words each reads that the other does not,
# by the stage that lost them (gpu-worker/engine/bench/compare.py).
for t in $threads; do
  "$PY" "$ROOT/gpu-worker/engine/bench/compare.py" "$out" --eval "$EVAL" --sets "$sets" --threads "$t" | tee "$out/compare-t$t.txt"
  case " $sets " in *" A "*)
    "$PY" "$ROOT/gpu-worker/engine/bench/compare.py" "$out" --eval "$EVAL" --sets A --kind receipt --threads "$t" \
      | tee -a "$out/compare-t$t.txt" ;;
  esac
done
