#!/usr/bin/env python3
"""Prints the engine benchmark table from <out>/summary.jsonl and ours-*.stats.json."""
import json, os, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "summary.jsonl"))]
print(f"\n{'system':14} {'set':3} {'thr':>3} {'n':>3} {'img/s':>6} {'img/cpu-s':>9} {'CER':>6} {'F1':>6} {'RSS MB':>7}")
by = {}
for r in rows:
    sc = r["score"]; by[(r["system"], r["set"], r["threads"])] = sc
    print(f"{r['system']:14} {r['set']:3} {r['threads']:>3} {sc['n']:>3} {sc.get('img_per_s') or 0:6.2f} {sc.get('img_per_cpu_s') or 0:9.3f} {sc['CER']:6.3f} {sc['BoW_F1']:6.3f} {r['peak_rss_mb']:>7}")
print("\nratios (ours / peer, images per second; accuracy deltas ours - peer)")
for (sysn, s, t), sc in sorted(by.items()):
    if sysn == "ours": continue
    o = by.get(("ours", s, t))
    if not o or not sc.get("img_per_s"): continue
    print(f"  vs {sysn:14} set {s} t{t}: speed x{o['img_per_s'] / sc['img_per_s']:.2f}  F1 {o['BoW_F1'] - sc['BoW_F1']:+.3f}  CER {o['CER'] - sc['CER']:+.3f}")
print("\nour stage split (seconds, summed over images):")
for f in sorted(os.listdir(out)):
    if f.startswith("ours-") and f.endswith(".stats.json"):
        try:
            st = json.load(open(os.path.join(out, f)))
            print(f"  {f[5:-11]:8} " + " ".join(f"{k}={v:.2f}" for k, v in st["stages"].items()) + f"  load={st['load_seconds']:.2f}")
        except Exception as e:
            print(f"  {f}: {e}")
