"""Drives the pipeline benchmark (called by scripts/bench-pipeline.sh).

Phase 1 (engine alone): the `ocr` CLI on the images, same model set, threads and batch size
as the worker; images/s = N / (wall time - the CLI's own start-up time, measured on 1 image).
Phase 2 (pipeline): all N jobs created and uploaded like phones (presigned PUT) and queued;
then one worker starts; jobs/s = N / (last result committed - worker ready). Latency is
queue-to-result per job from the database (with everything queued at once, it is mostly
waiting in the queue). Engine busy ratio = engine seconds / the same window.
Prints `name: value` lines.
"""

import argparse
import concurrent.futures
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchlib
from benchlib import http, sql

TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def upload(api, token, path, i):
    return benchlib.upload(api, token, path.read_bytes(), TYPES[path.suffix], "express" if i % 4 == 0 else "bulk")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def engine_alone(ocr, images, threads, batch, model_set):
    """images/s and CPU seconds of the CLI on the images, minus its own start-up (1 image)."""
    env = dict(os.environ, OCR_MODEL_SET=model_set)
    args = [ocr, "--format", "json", "--threads", str(threads), "--batch", str(batch)]
    t, c = time.perf_counter(), children_cpu()
    subprocess.run(args + [str(images[0])], env=env, check=True, capture_output=True)
    startup, startup_cpu = time.perf_counter() - t, children_cpu() - c
    t, c = time.perf_counter(), children_cpu()
    subprocess.run(args + [str(p) for p in images], env=env, check=True, capture_output=True)
    wall, cpu = time.perf_counter() - t, children_cpu() - c
    return len(images) / max(wall - startup, 1e-9), wall, startup, max(cpu - startup_cpu, 1e-9)


def cpu_seconds(pids):
    """user+system CPU seconds used so far by each pid and its threads (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            out[name] = 0.0
    return out


def pids_of(*pgrep_args):
    res = subprocess.run(["pgrep", *pgrep_args], capture_output=True, text=True).stdout.split()
    return res[0] if res else None


def metric(url, name):
    _, raw = http("GET", url)
    for line in raw.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


def pdf_engine_alone(ocr, pdf, threads, batch, model_set, startup):
    """Pages/s and peak RSS (MiB) of the CLI alone on the PDF, minus its start-up."""
    env = dict(os.environ, OCR_MODEL_SET=model_set)
    t = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "%M", ocr, "--format", "json", "--threads", str(threads),
                          "--batch", str(batch), pdf], env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    pages = len(json.loads(out.stdout.splitlines()[0])["pages"])
    rss = int(out.stderr.strip().splitlines()[-1]) / 1024
    rate = pages / max(wall - startup, 1e-9)
    print(f"pdf_pages: {pages}", flush=True)
    print(f"pdf_engine_alone_pages_per_s: {rate:.2f} ({wall:.1f} s, CLI start-up {startup:.1f} s subtracted)", flush=True)
    print(f"pdf_engine_alone_peak_rss_mib: {rss:.0f}", flush=True)
    return pages, rate


def pdf_pipeline(args, worker_pid, alone):
    """The PDF as one job through the running pipeline: queued to result, pages/s, worker RSS."""
    pages, rate_alone = alone
    before = benchlib.proc_status_kib(worker_pid, "VmHWM") / 1024 if worker_pid else 0
    job = benchlib.upload(args.api, args.token, Path(args.pdf).read_bytes(), "application/pdf", "bulk")
    deadline = time.time() + 1800
    while sql(args.db, f"SELECT status FROM jobs WHERE id = '{job}'")[0][0] not in ("succeeded", "failed"):
        if time.time() > deadline:
            sys.exit("the PDF job did not end")
        time.sleep(0.5)
    status, queued, finished = sql(args.db, f"SELECT status, queued_at_ms, finished_at_ms FROM jobs WHERE id = '{job}'")[0]
    _, raw = http("GET", f"{args.api}/v1/jobs/{job}", args.token)
    got = len((json.loads(raw).get("result") or {}).get("pages") or [])
    secs = (int(finished) - int(queued)) / 1000
    after = benchlib.proc_status_kib(worker_pid, "VmHWM") / 1024 if worker_pid else 0
    print(f"pdf_pipeline_status: {status} ({got} of {pages} pages)")
    print(f"pdf_pipeline_pages_per_s: {got / max(secs, 1e-9):.2f} (queued to result {secs:.1f} s)")
    print(f"pdf_pipeline_vs_engine_alone: {got / max(secs, 1e-9) / rate_alone:.3f}")
    print(f"pdf_worker_peak_rss_mib: {after:.0f} (before the PDF: {before:.0f})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--ocr", required=True)
    ap.add_argument("--worker-cmd", required=True, help="shell command that starts the worker")
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model-set", default="ppocrv6-tiny")
    ap.add_argument("--pdf", help="a multi-page PDF: pages/s of the CLI alone and through the pipeline, "
                                  "and the peak RSS of each, after the images")
    args = ap.parse_args()
    images = sorted(p for p in Path(args.images).iterdir() if p.suffix in TYPES and "document" not in p.name)
    n = len(images)

    rate_alone, wall_alone, startup, cpu_alone = engine_alone(
        args.ocr, images, args.threads, args.batch, args.model_set)
    print(f"engine_alone_images_per_s: {rate_alone:.2f}", flush=True)
    print(f"engine_alone_images_per_cpu_s: {n / cpu_alone:.2f}", flush=True)
    print(f"engine_alone_wall_s: {wall_alone:.1f} (CLI start-up {startup:.1f} s subtracted)", flush=True)
    if args.pdf:
        pdf_alone = pdf_engine_alone(args.ocr, args.pdf, args.threads, args.batch, args.model_set, startup)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda a: upload(args.api, args.token, a[1], a[0]), enumerate(images)))
    deadline = time.time() + 120
    while int(sql(args.db, "SELECT COUNT(*) FROM jobs WHERE status='queued'")[0][0]) < n:
        if time.time() > deadline:
            sys.exit("jobs did not all reach 'queued'")
        time.sleep(0.5)
    print(f"submitted: {n}", flush=True)

    worker = subprocess.Popen(args.worker_cmd, shell=True, start_new_session=True)
    try:
        while True:
            try:
                http("GET", args.metrics.replace("/metrics", "/healthz"))
                break
            except Exception:
                if worker.poll() is not None:
                    sys.exit("worker exited during start")
                time.sleep(0.1)
        ready_ms = int(time.time() * 1000)
        # CPU used by the emulated cloud (LocalStack, MariaDB, the API + poller) in the window:
        # on AWS none of it runs on the worker's machine.
        watched = {k: v for k, v in {
            "localstack": pids_of("-f", "localstack/run_host.py"),
            "mariadb": pids_of("-x", "mariadbd"),
            "api-local": pids_of("-x", "api-local"),
            "worker": pids_of("-x", "gpu-worker"),
        }.items() if v}
        cpu_before = cpu_seconds(watched)
        deadline = time.time() + 3600
        while True:
            done = int(sql(args.db, "SELECT COUNT(*) FROM jobs WHERE status IN ('succeeded','failed')")[0][0])
            if done >= n or time.time() > deadline:
                break
            time.sleep(0.5)
        cpu_after = cpu_seconds(watched)
        busy = metric(args.metrics, "ocr_engine_busy_seconds_total")
        batches = metric(args.metrics, "ocr_batch_size_count")
        jobs_sum = metric(args.metrics, "ocr_batch_size_sum")
        if args.pdf:
            pdf_pipeline(args, watched.get("worker"), pdf_alone)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, 15)
            worker.wait(60)
    # The images' jobs (the PDF's job, read after them, is reported on its own above).
    rows = sql(args.db, "SELECT status, finished_at_ms, queued_at_ms FROM jobs WHERE content_type <> 'application/pdf'")
    succeeded = [r for r in rows if r[0] == "succeeded"]
    results = int(sql(args.db, "SELECT COUNT(*) FROM job_results r JOIN jobs j ON j.id = r.job_id "
                               "WHERE j.content_type <> 'application/pdf'")[0][0])
    last = max(int(r[1]) for r in succeeded) if succeeded else ready_ms
    window = max(last - ready_ms, 1) / 1000
    lat = sorted((int(r[1]) - int(r[2])) / 1000 for r in succeeded)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    rate = len(succeeded) / window
    print(f"succeeded: {len(succeeded)}")
    print(f"lost: {n - len(succeeded)}")
    print(f"results_rows: {results}")
    print(f"pipeline_jobs_per_s: {rate:.2f}")
    print(f"pipeline_vs_engine_alone: {rate / rate_alone:.3f}")
    print(f"engine_busy_ratio: {busy / window:.3f}")
    print(f"mean_batch_size: {jobs_sum / max(batches, 1):.1f}")
    print(f"latency_p50_s: {p(0.5):.1f}")
    print(f"latency_p99_s: {p(0.99):.1f}")
    print(f"window_s: {window:.1f}")
    for name in watched:
        used = cpu_after[name] - cpu_before[name]
        print(f"cpu_{name.replace('-', '_')}_cores: {used / window:.2f}")
    # Load-independent view on a shared machine: images per CPU-second the worker process got,
    # against the same for the engine alone (both include decoding).
    worker_cpu = cpu_after.get("worker", 0) - cpu_before.get("worker", 0)
    if worker_cpu > 0:
        print(f"pipeline_images_per_worker_cpu_s: {len(succeeded) / worker_cpu:.2f}")
        print(f"pipeline_vs_engine_alone_per_cpu_s: {(len(succeeded) / worker_cpu) / (n / cpu_alone):.3f}")
    return 0 if len(succeeded) == n and results == n else 1


if __name__ == "__main__":
    sys.exit(main())
