"""Drives the latency benchmark (called by scripts/bench-latency.sh): where an express job's time
goes, from the phone's PUT to the result it reads, on an idle system and under a bulk flood.

Each express probe is a one-line PNG uploaded like a phone does (create the job, PUT to the
presigned URL), then read with `GET /v1/jobs/{id}?wait=20`. The hops come from three clocks on
this machine: the client's (PUT done, result seen), the API's log (`job queued`: when on-upload
began handling the upload and when it queued the job) and the worker's (`job succeeded`: received,
prefetched, engine start and end, committed).

Idle: probes one after the other, half a second apart. Flood: `--flood` bulk jobs (every other one
a direct upload, the rest presigned) submitted as fast as 12 threads can, with the worker stopped
until `--backlog` of them are queued; then the worker starts again and one express probe goes every
`--probe-every` seconds until `--flood-probes` probes are done.
Prints `name: value` lines and Markdown tables (p50 / p99 / max per hop).
"""

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from benchlib import http, sql, upload

sys.path.insert(0, os.path.dirname(__file__))
from bench_pipeline import cpu_seconds, pids_of  # noqa: E402

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
HOPS = [
    ("PUT → S3 event queued", "put_end", "event_sent"),
    ("event queued → on-upload", "event_sent", "onupload_start"),
    ("on-upload → queued", "onupload_start", "queued"),
    ("queued → received", "queued", "received"),
    ("received → prefetched", "received", "prepared"),
    ("prefetched → engine", "prepared", "engine_start"),
    ("engine", "engine_start", "engine_end"),
    ("engine → committed", "engine_end", "committed"),
    ("committed → seen", "committed", "seen"),
    ("total (PUT → seen)", "put_end", "seen"),
]


def now_ms():
    return time.time() * 1000.0


def line_png(text):
    fnt = ImageFont.truetype(str(FONT), 34)
    img = Image.new("RGB", (int(fnt.getlength(text)) + 40, 60), (250, 250, 246))
    ImageDraw.Draw(img).text((20, 9), text, fill=(15, 15, 15), font=fnt)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def wait_result(api, token, job_id, timeout=120):
    """Reads the job with ?wait=20 until it ended; returns (status, when seen in ms, requests)."""
    deadline = time.time() + timeout
    requests = 0
    while time.time() < deadline:
        requests += 1
        try:
            _, raw = http("GET", f"{api}/v1/jobs/{job_id}?wait=20", token)
        except urllib.error.HTTPError as e:
            if e.code in (429, 503):
                time.sleep(0.2)
                continue
            raise
        job = json.loads(raw)
        if job["status"] in ("succeeded", "failed"):
            return job["status"], now_ms(), requests
    sys.exit(f"job {job_id} did not end within {timeout} s")


def probe(api, token, data, records, label):
    job_id = upload(api, token, data, "image/png", "express")
    put_end = now_ms()
    status, seen, requests = wait_result(api, token, job_id)
    records[job_id] = {"label": label, "put_end": put_end, "seen": seen, "status": status, "requests": requests}


def direct(api, token, data, priority):
    q = urllib.parse.urlencode({"priority": priority})
    _, raw = http("POST", f"{api}/v1/jobs?{q}", token, data, {"Content-Type": "image/png"})
    return json.loads(raw)["job_id"]


def submit_bulk(api, token, data, i):
    for attempt in range(20):
        try:
            if i % 2 == 0:
                return direct(api, token, data, "bulk")
            return upload(api, token, data, "image/png", "bulk")
        except urllib.error.HTTPError as e:
            if e.code not in (429, 503):
                raise
            time.sleep(0.5 * (attempt + 1))
    sys.exit("bulk submission kept being refused")


def json_lines(path):
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    pass


def job_of(rec):
    span = rec.get("span") or {}
    return rec.get("job_id") or span.get("job_id")


def merge_logs(records, api_log, worker_log):
    for rec in json_lines(api_log):
        if rec.get("message") == "job queued" and job_of(rec) in records:
            r = records[job_of(rec)]
            r["onupload_start"], r["queued"] = float(rec["started_ms"]), float(rec["queued_ms"])
            if rec.get("event_sent_ms"):
                r["event_sent"] = float(rec["event_sent_ms"])
    for rec in json_lines(worker_log):
        if rec.get("message") == "job succeeded" and job_of(rec) in records:
            r = records[job_of(rec)]
            for k in ("received", "prepared", "engine_start", "engine_end", "committed"):
                r[k] = float(rec[f"{k}_ms"])
            r["lane"] = rec.get("lane")


def engine_batches(worker_log, since_ms, until_ms):
    """(seconds, images, lane) of the engine calls in a window, from the worker's log."""
    out = []
    for rec in json_lines(worker_log):
        if rec.get("message") != "engine batch":
            continue
        try:
            at = datetime.fromisoformat(rec.get("timestamp", "").replace("Z", "+00:00")).timestamp() * 1000
        except ValueError:
            continue
        if since_ms - 1000 <= at <= until_ms + 1000:
            out.append((float(rec["seconds"]), int(rec["images"]), rec.get("lane")))
    return out


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def table(title, records):
    done = [r for r in records.values() if all(k in r for _, a, b in HOPS for k in (a, b))]
    print(f"\n### {title}: {len(done)} express jobs\n")
    print("| hop | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    for name, a, b in HOPS:
        vals = [r[b] - r[a] for r in done]
        print(f"| {name} | {pct(vals, 50):.0f} | {pct(vals, 99):.0f} | {max(vals):.0f} |")
    lanes = {}
    for r in done:
        lanes[r.get("lane")] = lanes.get(r.get("lane"), 0) + 1
    print(f"\nlanes: {lanes}; requests per job: {statistics.mean(r['requests'] for r in done):.2f}")
    return done


def start_worker(args):
    """The worker, once its engine is loaded (its log is appended to: this start's lines only)."""
    since = Path(args.worker_log).stat().st_size
    worker = subprocess.Popen(["bash", "-c", args.worker_cmd], start_new_session=True)
    t0 = time.time()
    while b"engine ready" not in Path(args.worker_log).read_bytes()[since:]:
        if worker.poll() is not None or time.time() - t0 > 180:
            sys.exit(f"the worker did not start; see {args.worker_log}")
        time.sleep(0.1)
    return worker


def stop_worker(worker):
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=90)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--worker-cmd", required=True)
    ap.add_argument("--worker-log", required=True)
    ap.add_argument("--api-log", required=True)
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--flood", type=int, default=5000)
    ap.add_argument("--flood-probes", type=int, default=40)
    ap.add_argument("--probe-every", type=float, default=1.5)
    ap.add_argument("--backlog", type=int, default=1000,
                    help="bulk jobs queued (worker stopped) before the worker starts and the probes begin")
    args = ap.parse_args()

    worker = start_worker(args)
    try:
        express = [line_png(f"express probe {i} amber basil") for i in range(args.probes + args.flood_probes + 3)]
        bulk_images = [line_png(f"bulk job {i} cedar delta ember") for i in range(64)]

        warm = {}
        for i in range(3):
            probe(args.api, args.token, express[i], warm, "warm")
        idle = {}
        for i in range(args.probes):
            probe(args.api, args.token, express[3 + i], idle, "idle")
            time.sleep(0.5)

        # The flood: the worker is stopped until `--backlog` bulk jobs are queued, so that the
        # probes meet full engine batches and a prefetched bulk batch, not only the trickle the
        # upload checks let through.
        stop_worker(worker)
        flood = {}
        bulk_ids = []
        lock = threading.Lock()
        flood_start = now_ms()

        def one(i):
            job_id = submit_bulk(args.api, args.token, bulk_images[i % len(bulk_images)], i)
            with lock:
                bulk_ids.append(job_id)

        pool = ThreadPoolExecutor(12)
        futures = [pool.submit(one, i) for i in range(args.flood)]
        backlog = min(args.backlog, args.flood)
        while int(sql(args.db, "SELECT COUNT(*) FROM jobs WHERE status = 'queued'")[0][0]) < backlog:
            time.sleep(0.5)
        backlog_at = now_ms()
        worker = start_worker(args)
        probes_start = now_ms()
        pids = {"localstack": pids_of("-f", "localstack/run_host.py"), "api-local": pids_of("-x", "api-local"),
                "gpu-worker": str(worker.pid), "bench driver": str(os.getpid()), "mariadb": pids_of("-x", "mariadbd")}
        pids = {k: v for k, v in pids.items() if v}
        cpu_before = cpu_seconds(pids)
        probe_threads = []
        base = 3 + args.probes
        for i in range(args.flood_probes):
            t = threading.Thread(target=probe, args=(args.api, args.token, express[base + i], flood, "flood"))
            t.start()
            probe_threads.append(t)
            time.sleep(args.probe_every)
        for t in probe_threads:
            t.join()
        probes_end = now_ms()
        cpu_after = cpu_seconds(pids)
        for f in futures:
            f.result()
        submitted_end = now_ms()
        pool.shutdown()
        # Bulk throughput while the probes ran: bulk jobs finished in that window.
        ids = ",".join(f"'{i}'" for i in bulk_ids)
        rows = sql(args.db, f"SELECT finished_at_ms FROM jobs WHERE id IN ({ids}) AND status = 'succeeded'")
        finished = sorted(int(r[0]) for r in rows if r[0] != "NULL")
        in_window = [f for f in finished if probes_start <= f <= probes_end]
        window_s = (probes_end - probes_start) / 1000
    finally:
        stop_worker(worker)

    merge_logs(idle, args.api_log, args.worker_log)
    merge_logs(flood, args.api_log, args.worker_log)
    print(f"flood_jobs: {args.flood}")
    print(f"flood_submit_seconds: {(submitted_end - flood_start) / 1000:.1f}")
    print(f"backlog: {backlog} bulk jobs queued after {(backlog_at - flood_start) / 1000:.1f} s; worker started")
    print(f"bulk_succeeded_during_probes: {len(in_window)} in {window_s:.1f} s ({len(in_window) / window_s:.1f}/s)")
    print(f"bulk_succeeded_by_end: {len(finished)}")
    window = (probes_end - probes_start) / 1000
    print("cpu_during_probes (cores used, of " + str(os.cpu_count()) + "): " + ", ".join(
        f"{k} {(cpu_after[k] - cpu_before[k]) / window:.2f}" for k in pids))
    idle_done = table("Idle", idle)
    flood_done = table(f"Under a flood of {args.flood} bulk jobs", flood)
    batches = engine_batches(args.worker_log, probes_start, probes_end)
    main = [s for s, n, lane in batches if lane == "main"]
    if main and flood_done:
        median_batch = statistics.median(main)
        p99 = pct([r["seen"] - r["put_end"] for r in flood_done], 99) / 1000
        target = 2 * median_batch + 1
        print(f"\nmain_batch_seconds_median: {median_batch:.2f} (images median "
              f"{statistics.median(n for s, n, lane in batches if lane == 'main'):.0f})")
        print(f"express_flood_p99_seconds: {p99:.2f}; target (2 batches + 1 s): {target:.2f}; "
              f"{'MET' if p99 <= target else 'MISSED'}")
    if idle_done:
        engine = statistics.median(r["engine_end"] - r["engine_start"] for r in idle_done)
        total = statistics.median(r["seen"] - r["put_end"] for r in idle_done)
        print(f"idle_p50_ms: {total:.0f}; engine_p50_ms: {engine:.0f}; over engine: {total - engine:.0f} "
              f"(target 300): {'MET' if total - engine <= 300 else 'MISSED'}")


if __name__ == "__main__":
    main()
