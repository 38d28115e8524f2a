#!/usr/bin/env python3
"""Accuracy of our engine with one stage's setting changed at a time (per-stage evidence).

  ablate.py --ocr target/release/ocr --eval ../shared/eval --out DIR [--sets "A B C"] [--kind receipt]
            [--threads 2] NAME="--flag value ..." [NAME="..." ...]

Runs the `ocr` CLI once per variant (plus "default", no flags) over each set, writes
DIR/NAME/ours-SET-t1.jsonl (predictions in score.py's format, like scripts/bench.sh engine) and
prints word F1 / CER per variant and set, with the difference to the default. The engine's output
does not depend on the thread count, so the runs use --threads for speed only.
"""
import argparse, importlib.util, json, os, shlex, subprocess, sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ocr", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sets", default="A B C")
    ap.add_argument("--kind", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("variants", nargs="*", help='NAME="--flag value ..."')
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("score", os.path.join(a.eval, "score.py"))
    sc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sc)

    variants = [("default", [])] + [(v.split("=", 1)[0], shlex.split(v.split("=", 1)[1])) for v in a.variants]
    results = {}
    for s in a.sets.split():
        gt = [json.loads(l) for l in open(os.path.join(a.eval, s, "manifest.jsonl")) if l.strip()]
        if a.kind:
            gt = [r for r in gt if r.get("kind") == a.kind]
        paths = {os.path.abspath(os.path.join(a.eval, r["image"])): r["image"] for r in gt}
        for name, flags in variants:
            d = os.path.join(a.out, name)
            os.makedirs(d, exist_ok=True)
            cmd = [a.ocr, "--format", "json", "--threads", str(a.threads), "--batch", "8", *flags, *paths]
            run = subprocess.run(cmd, capture_output=True, text=True)
            preds = {}
            for line in run.stdout.splitlines():
                r = json.loads(line)
                preds[paths[r["file"]]] = {"text": r.get("text", "")}
            with open(os.path.join(d, f"ours-{s}-t1.jsonl"), "w") as f:
                for img, p in preds.items():
                    f.write(json.dumps({"image": img, "text": p["text"]}) + "\n")
            res, _ = sc.score(gt, preds)
            results[(s, name)] = res
            base = results[(s, "default")]
            print(f"set {s}{'/' + a.kind if a.kind else ''} {name:22} word F1 {res['BoW_F1']:.4f} "
                  f"({res['BoW_F1'] - base['BoW_F1']:+.4f})  CER {res['CER']:.4f} ({res['CER'] - base['CER']:+.4f})"
                  f"  P {res['BoW_P']:.4f} R {res['BoW_R']:.4f}  {' '.join(flags)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
