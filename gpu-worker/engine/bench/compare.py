#!/usr/bin/env python3
"""Where ours and the peers differ, per image and per stage, from a `scripts/bench.sh engine` run.

  compare.py OUT [--eval ../shared/eval] [--sets "A B C"] [--threads 1] [--kind receipt]
                 [--variant NAME=OUT/ours-A-t1.jsonl ...]

For each set (optionally only the manifest records of one `kind`): each system's word F1 / CER,
the images where a peer reads better than ours, and an attribution of the words one system reads
and the other does not, by the stage that lost them (text-level, as set A has no word boxes):

  misread   the loser printed a token within a small edit distance of the word: the line was
            found and cropped, the recogniser got characters wrong (recognition, crop quality)
  spacing   the word is glued to a neighbour in the loser's output, or split in two (CTC spaces,
            or a box cut through a word / two boxes merged: detection geometry)
  missing   nothing close in the loser's output: no box found, or its line was dropped by the
            confidence filter (detection thresholds, box score, min confidence)

--variant adds another prediction file of ours (an ablation run: one stage's setting changed) as
a system of its own, to see which losses a setting recovers.
"""
import argparse, importlib.util, json, os, sys
from collections import Counter


def load_score(eval_dir):
    spec = importlib.util.spec_from_file_location("score", os.path.join(eval_dir, "score.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def jsonl(path):
    return [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]


def bow(sc, gt_text, pred_text):
    g, p = Counter(sc.tokens(gt_text)), Counter(sc.tokens(pred_text))
    return g, p, sum((g & p).values())


def f1(tp, n_pred, n_gt):
    pr = tp / n_pred if n_pred else 0.0
    rc = tp / n_gt if n_gt else 0.0
    return 2 * pr * rc / (pr + rc) if pr + rc else 0.0


def classify(sc, word, unmatched_pred):
    """Why a GT word the loser did not read was lost, from the loser's unmatched tokens."""
    budget = max(1, len(word) // 4)
    for t in unmatched_pred:
        if sc.lev(t, word) <= budget:
            return "misread"
    for t in unmatched_pred:
        if len(t) > len(word) and word in t:
            return "spacing"  # glued to a neighbour
    toks = list(unmatched_pred)
    for i, a in enumerate(toks):
        if word.startswith(a) and len(a) < len(word):
            rest = word[len(a):]
            if any(b == rest for j, b in enumerate(toks) if j != i):
                return "spacing"  # split in two
    return "missing"


def attribute(sc, gt_text, winner_text, loser_text):
    """GT words the winner reads and the loser does not, each with its cause on the loser's side."""
    g = Counter(sc.tokens(gt_text))
    w = Counter(sc.tokens(winner_text))
    lo = Counter(sc.tokens(loser_text))
    won = (g & w) - (g & lo)  # words (with multiplicity) only the winner matched
    unmatched_loser = list((lo - g).elements())
    causes = Counter()
    examples = []
    for word in won.elements():
        cause = classify(sc, word, unmatched_loser)
        causes[cause] += 1
        if len(examples) < 6:
            examples.append(f"{word}:{cause}")
    return causes, examples


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--eval", default=os.environ.get("OCR_EVAL_DIR", os.path.join(here, "../../../../shared/eval")))
    ap.add_argument("--sets", default="A B C")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--kind", default=None, help="only manifest records of this kind (receipt, printed page, ...)")
    ap.add_argument("--variant", action="append", default=[], help="NAME=predictions.jsonl (another run of ours)")
    ap.add_argument("--margin", type=float, default=0.01, help="per-image F1 difference worth listing")
    a = ap.parse_args()
    sc = load_score(a.eval)

    for s in a.sets.split():
        gt_path = os.path.join(a.out, f"{s}.gt.jsonl")
        if not os.path.exists(gt_path):
            continue
        gt = jsonl(gt_path)
        if a.kind:
            gt = [r for r in gt if r.get("kind") == a.kind]
        if not gt:
            continue
        systems = {}
        for name in ("ours", "rapidocr", "faster-paddle"):
            p = os.path.join(a.out, f"{name}-{s}-t{a.threads}.jsonl")
            if os.path.exists(p):
                systems[name] = {r["image"]: r.get("text", "") for r in jsonl(p)}
        for v in a.variant:
            name, path = v.split("=", 1)
            if f"-{s}-" in os.path.basename(path) or len(a.sets.split()) == 1:
                systems[name] = {r["image"]: r.get("text", "") for r in jsonl(path)}
        if "ours" not in systems:
            continue
        print(f"\n=== set {s}{' (' + a.kind + ')' if a.kind else ''}: {len(gt)} images, threads {a.threads}")
        totals = {}
        per = {}
        for name, preds in systems.items():
            tp = npred = ngt = 0
            for r in gt:
                g, p, m = bow(sc, r["text"], preds.get(r["image"], ""))
                tp += m; npred += sum(p.values()); ngt += sum(g.values())
                per.setdefault(r["image"], {})[name] = f1(m, sum(p.values()), sum(g.values()))
            res, _ = sc.score(gt, {k: {"text": v} for k, v in preds.items()})
            totals[name] = (f1(tp, npred, ngt), res["CER"], tp, npred, ngt)
            print(f"  {name:16} word F1 {totals[name][0]:.4f}  CER {res['CER']:.4f}  "
                  f"matched {tp} of {ngt} GT words, {npred} predicted")
        peers = [n for n in systems if n in ("rapidocr", "faster-paddle")]
        if not peers:
            continue
        print(f"  images where a peer's word F1 beats ours by more than {a.margin}:")
        worse = 0
        for r in gt:
            row = per[r["image"]]
            best = max(peers, key=lambda n: row[n])
            if row[best] - row["ours"] > a.margin:
                worse += 1
                print(f"    {r['image']:34} ours {row['ours']:.3f}  " +
                      "  ".join(f"{n} {row[n]:.3f}" for n in systems if n != "ours"))
        print(f"    ({worse} of {len(gt)})")
        for peer in peers:
            for winner, loser in ((peer, "ours"), ("ours", peer)):
                causes = Counter()
                examples = []
                for r in gt:
                    c, ex = attribute(sc, r["text"], systems[winner].get(r["image"], ""),
                                      systems[loser].get(r["image"], ""))
                    causes += c
                    if ex and len(examples) < 12:
                        examples.append(f"{os.path.basename(r['image'])}: {' '.join(ex)}")
                n = sum(causes.values())
                print(f"  words {winner} reads and {loser} does not: {n}  "
                      + "  ".join(f"{k} {causes[k]}" for k in ("misread", "spacing", "missing")))
                for e in examples[:6]:
                    print(f"      {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
