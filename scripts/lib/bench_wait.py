"""Drives the waiting-GET benchmark (called by scripts/bench-wait.sh).

For each client mode, N jobs are created at once and one client thread per job reads it until it
has ended, as a phone would:
  wait   GET /v1/jobs/{id}?wait=20, again while the answer is a job not yet ended;
  poll   GET /v1/jobs/{id} every 0.5 s.
Each job ends either by the real worker (images uploaded with presigned PUTs) or, with
--simulate, by this script: an UPDATE to `succeeded` (with a result row) at a random time 1 to 3 s
after the clients start, so only the API's side is measured and no models are needed.
Per mode: GET requests per job, and latency from the job's end (`finished_at_ms` in the
database) to the client holding the answer that shows it, p50/p90/max; and the SELECTs MariaDB ran
meanwhile (server-wide: the API's reads, plus anything else on that server). Prints a table.
"""

import argparse
import concurrent.futures
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import benchlib
from benchlib import http, sql

ENDED = {"succeeded", "failed", "expired", "deleted"}
TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
RESULT = json.dumps({"text": "simulated", "lines": [], "width": 1, "height": 1, "seconds": 0.0})


def server_selects(db):
    return int(sql(db, "SHOW GLOBAL STATUS LIKE 'Com_select'")[0][1])


def follow(api, token, job_id, mode, wait, interval):
    """Reads the job until it has ended: (GET requests made, epoch seconds the answer came)."""
    requests = 0
    while True:
        path = f"/v1/jobs/{job_id}" + (f"?wait={wait}" if mode == "wait" else "")
        _, raw = http("GET", api + path, token)
        requests += 1
        if json.loads(raw)["status"] in ENDED:
            return requests, time.time()
        if mode == "poll":
            time.sleep(interval)
        # A waiting GET that came back with the job still running: its wait ran out (or the
        # server holds its most waiters and answered at once); ask again.


class Ender:
    """Ends jobs at given times through one `mariadb` client process (a spawn per UPDATE would
    take longer than the ticks measured). `finished_at_ms` is the server's clock at the UPDATE."""

    def __init__(self, db):
        self.proc = subprocess.Popen(["mariadb", "-h127.0.0.1", "-uroot", "-N", "-B", db],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)

    def run(self, schedule):
        start = time.time()
        for at, job_id in sorted(schedule):
            time.sleep(max(0.0, start + at - time.time()))
            now = "ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000)"
            self.proc.stdin.write(
                f"INSERT INTO job_results (job_id, result, created_at_ms) VALUES ('{job_id}', '{RESULT}', {now});\n"
                f"UPDATE jobs SET status = 'succeeded', finished_at_ms = {now}, updated_at_ms = {now} "
                f"WHERE id = '{job_id}';\n")
            self.proc.stdin.flush()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def create(api, token, image=None, i=0):
    if image is None:  # simulated: the job never needs its upload
        body = json.dumps({"content_type": "image/png", "content_length": 100}).encode()
        _, raw = http("POST", f"{api}/v1/jobs", token, body, {"Content-Type": "application/json"})
        return json.loads(raw)["job_id"]
    return benchlib.upload(api, token, image.read_bytes(), TYPES[image.suffix], "express" if i % 4 == 0 else "bulk")


def run_mode(args, mode, images):
    n = args.count
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: create(args.api, args.token, images[i] if images else None, i), range(n)))
    selects = server_selects(args.db)
    ender = None
    if args.simulate:
        ender = Ender(args.db)
        rng = random.Random(args.seed)
        schedule = [(rng.uniform(args.min_secs, args.max_secs), job_id) for job_id in ids]
        threading.Thread(target=ender.run, args=(schedule,), daemon=True).start()
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        seen = list(pool.map(lambda j: follow(args.api, args.token, j, mode, args.wait, args.interval), ids))
    elapsed = time.time() - started
    selects = server_selects(args.db) - selects
    if ender:
        ender.close()
    in_list = ",".join(f"'{j}'" for j in ids)
    finished = {r[0]: int(r[1]) / 1000 for r in sql(
        args.db, f"SELECT id, finished_at_ms FROM jobs WHERE id IN ({in_list}) AND finished_at_ms IS NOT NULL")}
    lat = sorted(t - finished[j] for j, (_, t) in zip(ids, seen) if j in finished)
    reqs = [r for r, _ in seen]
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    return {
        "mode": mode, "jobs": n, "timed": len(lat), "requests_per_job": statistics.mean(reqs),
        "max_requests": max(reqs), "p50": pct(0.5), "p90": pct(0.9), "max": lat[-1] if lat else float("nan"),
        "selects": selects, "elapsed": elapsed,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--wait", type=int, default=20, help="seconds of ?wait=")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between polls")
    ap.add_argument("--simulate", action="store_true", help="end jobs by SQL (no worker, no models)")
    ap.add_argument("--min-secs", type=float, default=1.0, help="simulated: earliest end after the start")
    ap.add_argument("--max-secs", type=float, default=3.0, help="simulated: latest end after the start")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--images", help="directory of images (real worker)")
    ap.add_argument("--worker-cmd", help="shell command that starts the worker (real worker)")
    ap.add_argument("--metrics", help="the worker's metrics URL (readiness)")
    args = ap.parse_args()
    if not args.simulate and not (args.images and args.worker_cmd and args.metrics):
        sys.exit("--images, --worker-cmd and --metrics are needed without --simulate")

    images = None
    worker = None
    if not args.simulate:
        all_images = sorted(p for p in Path(args.images).iterdir() if p.suffix in TYPES)
        images = [all_images[i % len(all_images)] for i in range(args.count)]
        worker = subprocess.Popen(args.worker_cmd, shell=True, start_new_session=True)
        while True:
            try:
                http("GET", args.metrics.replace("/metrics", "/healthz"))
                break
            except Exception:
                if worker.poll() is not None:
                    sys.exit("worker exited during start")
                time.sleep(0.2)
        # One job first, so the engine's first batch (model warm-up) is in neither mode.
        job_id = create(args.api, args.token, images[0])
        follow(args.api, args.token, job_id, "poll", 0, 0.5)
    rows = []
    try:
        for mode in ("wait", "poll"):
            print(f"bench-wait: {mode}, {args.count} jobs", file=sys.stderr, flush=True)
            rows.append(run_mode(args, mode, images))
    finally:
        if worker and worker.poll() is None:
            os.killpg(worker.pid, 15)
            worker.wait(60)

    ends = f"simulated ends {args.min_secs:g}-{args.max_secs:g} s" if args.simulate else "real worker"
    print(f"jobs per mode: {args.count} ({ends}); wait={args.wait} s vs polling every {args.interval:g} s")
    print(f"{'client':<16}{'GETs/job':>9}{'max':>5}{'end→seen p50':>14}{'p90':>8}{'max':>8}"
          f"{'SELECTs':>9}{'run s':>7}")
    for r in rows:
        name = f"?wait={args.wait}" if r["mode"] == "wait" else f"poll {args.interval:g} s"
        print(f"{name:<16}{r['requests_per_job']:>9.2f}{r['max_requests']:>5}{r['p50']:>13.3f}s"
              f"{r['p90']:>7.3f}s{r['max']:>7.3f}s{r['selects']:>9}{r['elapsed']:>7.1f}")
    return 0 if all(r["timed"] == r["jobs"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
