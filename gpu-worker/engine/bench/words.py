#!/usr/bin/env python3
"""Word boxes, ours against RapidOCR's `return_word_box`, on the same images in one run.

  words.py --ocr target/release/ocr --eval ../shared/eval --model-dir models --out DIR [--set ppocrv6-small]

Runs our `ocr --format json` and RapidOCR (same model files, one thread each) over the images of
set B (the set with ground-truth word quadrilaterals), writes each system's words as
DIR/words-<system>.jsonl and scores them with eval/score_words.py (IoU >= 0.5; end-to-end also
needs the text to match). Prints one line per system and writes DIR/words.json.
"""
import argparse, json, os, subprocess, sys, time


def ours(a, items):
    paths = [p for _, p in items]
    back = {p: rel for rel, p in items}
    t0 = time.perf_counter()
    out = subprocess.run([a.ocr, "--format", "json", "--threads", "1", "--model-set", a.set, *paths],
                         capture_output=True, text=True, env={**os.environ, "OCR_MODEL_DIR": a.model_dir})
    secs = time.perf_counter() - t0
    preds = []
    for line in out.stdout.splitlines():
        r = json.loads(line)
        words = [{"text": w["text"], "box": w["box"]} for p in r.get("pages", []) for l in p["lines"] for w in l["words"]]
        preds.append({"image": back[r["file"]], "words": words})
    return preds, secs


def rapidocr(a, items):
    from rapidocr import RapidOCR
    d = os.path.join(a.model_dir, a.set)
    eng = RapidOCR(params={
        "Global.log_level": "warning",
        "EngineConfig.onnxruntime.intra_op_num_threads": 1,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        "Det.model_path": os.path.join(d, "det.onnx"),
        "Rec.model_path": os.path.join(d, "rec.onnx"),
        "Rec.rec_keys_path": os.path.join(d, "dict.txt"),
    })
    preds, secs = [], 0.0
    for rel, path in items:
        t0 = time.perf_counter()
        r = eng(path, return_word_box=True)
        secs += time.perf_counter() - t0
        words = [{"text": w[0], "box": w[2]} for line in (r.word_results or ()) for w in line]
        preds.append({"image": rel, "words": words})
    return preds, secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ocr", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--set", default="ppocrv6-small")
    ap.add_argument("--out", required=True)
    ap.add_argument("--systems", default="ours rapidocr")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    gt = os.path.join(a.eval, "B", "manifest.jsonl")
    items = [(r["image"], os.path.abspath(os.path.join(a.eval, r["image"])))
             for r in map(json.loads, filter(str.strip, open(gt))) if r.get("word_boxes") is not None]
    results = {}
    for system in a.systems.split():
        preds, secs = (ours if system == "ours" else rapidocr)(a, items)
        path = os.path.join(a.out, f"words-{system}.jsonl")
        with open(path, "w") as f:
            for p in preds:
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
        score = subprocess.run([sys.executable, os.path.join(a.eval, "score_words.py"), "--gt", gt, "--pred", path, "--json"],
                               capture_output=True, text=True, check=True)
        results[system] = {**json.loads(score.stdout), "seconds": secs, "images": len(items)}
        m = results[system]
        print(f"{system:10s} words {m['words_pred']:5d}/{m['words_gt']} | detection P {m['det_P']:.3f} R {m['det_R']:.3f} "
              f"F {m['det_F']:.3f} | end-to-end P {m['e2e_P']:.3f} R {m['e2e_R']:.3f} F {m['e2e_F']:.3f} | {secs:.1f}s")
    json.dump(results, open(os.path.join(a.out, "words.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
