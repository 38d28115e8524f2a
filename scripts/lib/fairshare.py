"""Two callers, one flooding (driven by `scripts/chaos.sh --flood N`).

Runs the real API + upload poller (api-local) and WORKERS gpu-worker processes against the
LocalStack and MariaDB that chaos.sh prepared. Caller `bob` floods: FLOOD bulk jobs (direct
uploads of small rendered lines) from 6 threads as fast as the API lets him, retrying each 429
after its Retry-After, as a well-behaved client does. Caller `alice` meanwhile submits JOBS jobs
at RATE per second (bulk and express, presigned PUT and direct), the way a quiet tenant does.

With the per-caller quota (CALLER_MAX_QUEUED, CALLER_MAX_RATE) bob is held to his own share and
alice's jobs wait behind at most that many of his; with `--no-quota` (both limits 0) his whole
flood is queued ahead of her. One `name: value` line per fact, per caller: jobs, 429 answers,
p50/p99 from the first create request to the result being stored (`finished_at_ms`), lost.
Exit status 0 only when nothing was lost or failed, alice never got a 429, and (with the quota)
bob did.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from chaos import TERMINAL, WORDS, Client, Proc, encode, line_image, log, now_ms, percentile, sql, wait_http


class Job:
    def __init__(self, caller: str, index: int, text: str, data: bytes, priority: str, direct: bool):
        self.caller, self.index, self.text, self.data = caller, index, text, data
        self.priority, self.direct = priority, direct
        self.job_id: str | None = None
        self.submitted_ms: int | None = None  # the first create request
        self.error: str | None = None


def make_jobs(caller: str, n: int, rng: random.Random, express_share: float, direct_share: float) -> list[Job]:
    jobs = []
    for i in range(n):
        text = f"{rng.choice(WORDS)} {caller[0]}{i:05d} {rng.choice(WORDS)}"
        data = encode(line_image(text, rng), "png")
        jobs.append(Job(caller, i, text, data, "express" if rng.random() < express_share else "bulk",
                        rng.random() < direct_share))
    return jobs


def submit(client: Client, job: Job, run: str):
    """Creates the job (with an Idempotency-Key, so a retried create is the same job) and
    uploads its image; Client.request retries 429/503 after Retry-After and counts them."""
    job.submitted_ms = now_ms()
    key = f"{run}-{job.caller}-{job.index}"
    if job.direct:
        q = urllib.parse.urlencode({"priority": job.priority})
        status, raw = client.request("POST", f"{client.api}/v1/jobs?{q}", job.data,
                                     {"Content-Type": "image/png", "Idempotency-Key": key}, limit=600)
    else:
        body = json.dumps({"content_type": "image/png", "content_length": len(job.data),
                           "priority": job.priority}).encode()
        status, raw = client.request("POST", f"{client.api}/v1/jobs", body,
                                     {"Content-Type": "application/json", "Idempotency-Key": key}, limit=600)
    if status not in (201, 202):
        job.error = f"create answered {status}: {raw[:200]!r}"
        return
    view = json.loads(raw)
    job.job_id = view["job_id"]
    if not job.direct:
        up = view["upload"]
        headers = {k: v for k, v in up["headers"].items() if k.lower() not in ("content-length", "host")}
        status, raw = client.request("PUT", up["url"], job.data, headers, auth=False, limit=600)
        if status != 200:
            job.error = f"upload answered {status}: {raw[:200]!r}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100, help="the quiet caller's jobs")
    ap.add_argument("--flood", type=int, required=True, help="the flooding caller's jobs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=5.0, help="the quiet caller's submissions per second")
    ap.add_argument("--caller-max-queued", type=int, default=40)
    ap.add_argument("--caller-max-rate", type=float, default=100.0)
    ap.add_argument("--no-quota", action="store_true", help="both per-caller limits off (0)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--env-file", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--db-user", required=True)
    ap.add_argument("--db-password", required=True)
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--api-port", type=int, default=18090)
    ap.add_argument("--metrics-port", type=int, default=19190)
    args = ap.parse_args()

    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    res = dict(line.split("=", 1) for line in Path(args.env_file).read_text().split() if "=" in line)
    run = f"fair{os.getpid()}"
    tokens = {"alice": os.urandom(24).hex(), "bob": os.urandom(24).hex()}
    max_queued, max_rate = (0, 0.0) if args.no_quota else (args.caller_max_queued, args.caller_max_rate)

    rng = random.Random(args.seed)
    log(f"rendering {args.jobs} + {args.flood} images")
    quiet = make_jobs("alice", args.jobs, rng, express_share=0.25, direct_share=0.5)
    flood = make_jobs("bob", args.flood, rng, express_share=0.0, direct_share=1.0)

    db_url = f"mysql://{args.db_user}:{args.db_password}@127.0.0.1:3306/{args.db}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "WEBHOOK_", "CALLER_"))}
    base_env.update(res)
    base_env.update(DATABASE_URL=db_url, LOG_FORMAT="json", RUST_LOG="info,ort=warn")
    api_env = dict(base_env, AUTH_MODE="static", API_TOKENS=",".join(f"{t}:{c}" for c, t in tokens.items()),
                   BIND_ADDR=f"127.0.0.1:{args.api_port}", QUEUE_DEPTH_LIMIT="1000000", DB_POOL_MAX="8",
                   CALLER_MAX_QUEUED=str(max_queued), CALLER_MAX_RATE=str(max_rate), CALLER_BURST="50",
                   # A flooder at its waiting limit is told to come back soon: places free as
                   # fast as the workers finish jobs (the shipped default is 30 s).
                   RETRY_AFTER_SECS="1")
    api = Proc("api-local", [f"{args.bin_dir}/api-local"], api_env, logs / "api.log")
    api.start()
    wait_http(f"http://127.0.0.1:{args.api_port}/healthz", api)
    workers = []
    for i in range(args.workers):
        env = dict(base_env, METRICS_ADDR=f"127.0.0.1:{args.metrics_port + i}",
                   OCR_MODEL_SET=os.environ.get("OCR_MODEL_SET", "ppocrv6-tiny"), OCR_THREADS="1",
                   CLOUDWATCH_INTERVAL_SECS="10", DB_POOL_MAX="4", FLEET_NAME=f"fair-{i}")
        w = Proc(f"worker-{i}", [f"{args.bin_dir}/gpu-worker"], env, logs / f"worker-{i}.log")
        w.start()
        workers.append(w)
    for i, w in enumerate(workers):
        wait_http(f"http://127.0.0.1:{args.metrics_port + i}/healthz", w)
    log(f"api and {len(workers)} workers ready; quota: CALLER_MAX_QUEUED={max_queued} CALLER_MAX_RATE={max_rate}")

    stats = {"alice": {}, "bob": {}}
    api_url = f"http://127.0.0.1:{args.api_port}"
    clients = {c: Client(api_url, tokens[c], None, "", "", stats[c]) for c in tokens}

    def run_job(job: Job):
        try:
            submit(clients[job.caller], job, run)
        except Exception as e:  # noqa: BLE001 (counted below)
            job.error = str(e)

    t0 = time.time()
    flooder = concurrent.futures.ThreadPoolExecutor(6)
    flood_futures = [flooder.submit(run_job, j) for j in flood]
    # Alice starts once the flood is under way (bob's first jobs are queued).
    while time.time() - t0 < 30 and sum(1 for j in flood if j.job_id) < min(len(flood), 20):
        time.sleep(0.1)
    log(f"flood under way ({sum(1 for j in flood if j.job_id)} of bob's jobs created); alice starts")
    t_quiet = time.time()

    def paced(job: Job):
        time.sleep(max(0.0, t_quiet + job.index / args.rate - time.time()))
        run_job(job)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(paced, quiet))
    concurrent.futures.wait(flood_futures)
    flooder.shutdown()
    log(f"submitted in {time.time() - t0:.1f} s")

    everyone = quiet + flood
    ids = [j.job_id for j in everyone if j.job_id]
    ids_sql = ",".join(f"'{i}'" for i in ids)
    deadline = t0 + args.timeout
    rows: dict[str, tuple[str, int]] = {}
    while ids and time.time() < deadline:
        rows = {r[0]: (r[1], int(r[2])) for r in sql(args.db, f"SELECT id, status, COALESCE(finished_at_ms, 0) FROM jobs WHERE id IN ({ids_sql})")}
        if all(rows.get(i, ("", 0))[0] in TERMINAL for i in ids):
            break
        time.sleep(0.5)
    wall = time.time() - t0
    for w in workers:
        w.stop()
    api.stop()

    facts: list[tuple[str, object]] = [("quota", f"CALLER_MAX_QUEUED={max_queued} CALLER_MAX_RATE={max_rate}")]
    problems: dict[str, int] = {}
    for caller, jobs in (("alice", quiet), ("bob", flood)):
        made = [j for j in jobs if j.job_id]
        status = {j.job_id: rows.get(j.job_id, ("missing", 0))[0] for j in made}
        succeeded = [j for j in made if status[j.job_id] == "succeeded"]
        failed = [j for j in made if status[j.job_id] == "failed"]
        lost = [j for j in made if status[j.job_id] not in TERMINAL]
        latency = [rows[j.job_id][1] - j.submitted_ms for j in succeeded]
        refused = stats[caller].get("client_retries_http_429", 0)
        facts += [
            (f"{caller}_jobs", len(jobs)),
            (f"{caller}_submit_errors", len(jobs) - len(made) + sum(1 for j in made if j.error)),
            (f"{caller}_succeeded", len(succeeded)),
            (f"{caller}_failed", len(failed)),
            (f"{caller}_lost", len(lost)),
            (f"{caller}_429", refused),
            (f"{caller}_submit_to_result_p50_ms", f"{percentile(latency, 0.50):.0f}"),
            (f"{caller}_submit_to_result_p99_ms", f"{percentile(latency, 0.99):.0f}"),
        ]
        problems[f"{caller} lost"] = len(lost)
        problems[f"{caller} failed"] = len(failed)
        problems[f"{caller} submit errors"] = len(jobs) - len(succeeded) - len(failed) - len(lost)
        for j in [j for j in jobs if j.error][:3]:
            log(f"{caller} #{j.index}: {j.error}")
    problems["alice got 429"] = stats["alice"].get("client_retries_http_429", 0)
    if not args.no_quota:
        problems["bob never got 429"] = int(stats["bob"].get("client_retries_http_429", 0) == 0)
    facts.append(("wall_s", f"{wall:.1f}"))
    for name, value in facts:
        print(f"{name}: {value}", flush=True)
    bad = {k: v for k, v in problems.items() if v}
    print(f"result: {'PASS' if not bad else 'FAIL (' + ', '.join(f'{k} {v}' for k, v in bad.items()) + ')'}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
