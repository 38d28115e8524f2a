#!/usr/bin/env python3
"""Runs a peer OCR system over images and writes predictions for eval/score.py.

  peers.py rapidocr --threads 1 --model-dir models --set ppocrv6-small --list imgs.tsv --out preds.jsonl
  peers.py faster-paddle --threads 1 --size small --list imgs.tsv --out preds.jsonl

imgs.tsv lines: <manifest image path>\t<absolute file path>. Output lines:
{"image", "text", "seconds", "cpu_seconds"}; seconds = wall time of the OCR call only (models are
loaded before the clock starts, no warm-up call, matching how our CLI is timed).
"""
import argparse, json, os, sys, time


def rapidocr_engine(a):
    from rapidocr import RapidOCR
    params = {
        "Global.log_level": "warning",
        "EngineConfig.onnxruntime.intra_op_num_threads": a.threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    }
    if a.set:
        d = os.path.join(a.model_dir, a.set)
        params.update({
            "Det.model_path": os.path.join(d, "det.onnx"),
            "Rec.model_path": os.path.join(d, "rec.onnx"),
            "Rec.rec_keys_path": os.path.join(d, "dict.txt"),
        })
    eng = RapidOCR(params=params)

    def run(data):
        r = eng(data)
        txts = getattr(r, "txts", None) or ()
        return "\n".join(txts)
    return run


def faster_paddle_engine(a):
    import faster_paddle
    eng = faster_paddle.OcrEngine(model_size=a.size, threads=a.threads)
    print(f"faster-paddle config: {eng.config}", file=sys.stderr)

    def run(data):
        return eng.ocr(data)["text"]
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("system", choices=["rapidocr", "faster-paddle"])
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--model-dir", default="models")
    ap.add_argument("--set", default="ppocrv6-small", help="rapidocr: our model set folder ('' = RapidOCR's own files)")
    ap.add_argument("--size", default="small", help="faster-paddle model size")
    ap.add_argument("--list", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    run = rapidocr_engine(a) if a.system == "rapidocr" else faster_paddle_engine(a)
    items = [l.rstrip("\n").split("\t") for l in open(a.list) if l.strip()]
    with open(a.out, "w") as out:
        for i, (rel, path) in enumerate(items):
            data = open(path, "rb").read()
            if a.system == "rapidocr":
                # RapidOCR's own loader (PIL + EXIF) is what a user gets; pass the path.
                data = path
            t0, c0 = time.perf_counter(), time.process_time()
            text = run(data)
            sec, cpu = time.perf_counter() - t0, time.process_time() - c0
            out.write(json.dumps({"image": rel, "text": text, "seconds": sec, "cpu_seconds": cpu}) + "\n")
            print(f"{a.system}: {i + 1}/{len(items)} {sec:.2f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
