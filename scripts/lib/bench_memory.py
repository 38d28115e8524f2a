"""Drives the memory benchmark (called by scripts/bench-memory.sh): peak RSS of one worker fed
batches of near-limit images, with the decoded-pixel budget off and on, in one run.

For each budget: N all-white 7071 x 7071 PNGs (~150 KB each, 50.0 MP: every check passes them)
are created and uploaded like phones (presigned PUT) and queued; then one release worker starts
with DECODED_BUDGET_MB set, and its resident set is sampled every 20 ms until every job has
succeeded (its VmHWM read last). Prints `name: value` lines and a Markdown table.
"""

import argparse
import io
import os
import signal
import subprocess
import sys
import threading
import time

from PIL import Image

from benchlib import proc_status_kib, sql, upload


def near_limit_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (side, side), 255).save(out, "PNG", optimize=True)
    return out.getvalue()


def submit(api, token, data, n):
    return [upload(api, token, data, "image/png", "bulk") for _ in range(n)]


def count(db, ids, status):
    in_ids = ",".join(f"'{i}'" for i in ids)
    return int(sql(db, f"SELECT COUNT(*) FROM jobs WHERE id IN ({in_ids}) AND status = '{status}'")[0][0])


def run(args, data, budget_mb):
    ids = submit(args.api, args.token, data, args.count)
    deadline = time.time() + 300
    while count(args.db, ids, "queued") < len(ids):
        if time.time() > deadline:
            sys.exit("jobs not queued within 300 s")
        time.sleep(0.5)
    env = dict(os.environ, DECODED_BUDGET_MB=str(budget_mb))
    log = open(args.log, "a")
    # This run's lines only: the log holds the earlier runs' too.
    since = os.path.getsize(args.log)
    worker = subprocess.Popen(["bash", "-c", args.worker_cmd], env=env, stdout=log, stderr=log,
                              start_new_session=True)
    # The worker is `exec`ed by bash: the pid is the worker's.
    peak = {"rss": 0, "hwm": 0, "ready_rss": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], proc_status_kib(worker.pid, "VmRSS"))
            peak["hwm"] = max(peak["hwm"], proc_status_kib(worker.pid, "VmHWM"))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.time()
    # The models' own footprint: the resident set once the engine is loaded, before any image.
    while b"engine ready" not in open(args.log, "rb").read()[since:] and time.time() - t0 < 120:
        time.sleep(0.05)
    peak["ready_rss"] = proc_status_kib(worker.pid, "VmRSS")
    deadline = time.time() + args.timeout
    while count(args.db, ids, "succeeded") < len(ids):
        if worker.poll() is not None:
            sys.exit(f"the worker exited ({worker.returncode}) with budget {budget_mb} MB; see {args.log}")
        if time.time() > deadline:
            sys.exit(f"not all jobs succeeded within {args.timeout} s (budget {budget_mb} MB)")
        time.sleep(0.2)
    wall = time.time() - t0
    peak["hwm"] = max(peak["hwm"], proc_status_kib(worker.pid, "VmHWM"))
    stop.set()
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(timeout=60)
    failed = count(args.db, ids, "failed")
    return {"budget_mb": budget_mb, "peak_mb": max(peak["rss"], peak["hwm"]) / 1024,
            "ready_mb": peak["ready_rss"] / 1024, "wall_s": wall, "jobs": len(ids), "failed": failed}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--worker-cmd", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--side", type=int, default=7071)
    ap.add_argument("--budgets", default="0 1024", help="DECODED_BUDGET_MB values, 0 = off")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()

    data = near_limit_png(args.side)
    print(f"image: {args.side}x{args.side} white PNG, {len(data)} bytes, {args.side * args.side / 1e6:.1f} MP "
          f"({args.side * args.side * 3 / 2**20:.0f} MiB decoded)", flush=True)
    rows = []
    for budget in [int(b) for b in args.budgets.split()]:
        r = run(args, data, budget)
        rows.append(r)
        print(f"budget_{budget}_mb: peak RSS {r['peak_mb']:.0f} MiB, models loaded {r['ready_mb']:.0f} MiB, "
              f"{r['jobs']} jobs in {r['wall_s']:.1f} s, failed {r['failed']}", flush=True)
    print()
    print("| DECODED_BUDGET_MB | peak RSS (MiB) | RSS with models loaded, before any image (MiB) | "
          "peak - loaded (MiB) | jobs | failed | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        label = "0 (off)" if r["budget_mb"] == 0 else str(r["budget_mb"])
        print(f"| {label} | {r['peak_mb']:.0f} | {r['ready_mb']:.0f} | {r['peak_mb'] - r['ready_mb']:.0f} | "
              f"{r['jobs']} | {r['failed']} | {r['wall_s']:.1f} |")
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
