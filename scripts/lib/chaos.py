"""Load with faults, nothing lost (driven by scripts/chaos.sh).

Runs the real API + upload poller (api-local) and WORKERS gpu-worker processes against the
LocalStack and MariaDB that chaos.sh prepared, with every database connection going through a
TCP proxy this script owns. It submits N small rendered images the way clients do (presigned PUT
or direct body; express and bulk; every request with an Idempotency-Key and retried on
connection errors, 5xx marked retryable and 503 with Retry-After), some corrupt, some with a
duplicated S3 event, some resubmitted with the same key, and while the jobs flow it:

  * kills a worker with SIGKILL three times (each is restarted a second later, as systemd does),
  * cuts the database for a few seconds (every proxied connection dropped, new ones refused),
  * pauses LocalStack (SIGSTOP, then SIGCONT) for a few seconds.

At the end it checks every job against its ledger (database rows, results, the dead-letter
queues, the webhooks its own receiver got, the processes' logs) and prints one `name: value`
line per fact. Exit status 0 only when nothing was lost or overwritten, every failure is a
corrupt image with a reason and in a DLQ, every webhook arrived with a valid signature and no
secret reached a log.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import hmac
import http.server
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from PIL import Image, ImageDraw, ImageFont

from benchlib import proc_status_kib

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
WORDS = (
    "amber basil cedar delta ember fable garnet harbor indigo juniper kestrel lumen maple "
    "nectar orchid pepper quartz raven saffron timber umber velvet willow xenon yarrow zephyr"
).split()
TERMINAL = ("succeeded", "failed")


def now_ms() -> int:
    return int(time.time() * 1000)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] chaos: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Images: one short line of known text each, ~300x60 px, a few KB.


@dataclass
class Spec:
    index: int
    text: str
    fmt: str  # png | jpeg | webp | tiff
    kind: str  # plain | corrupt-deflate | bomb | cmyk | png16 | exif-rotated | animated | multipage
    priority: str
    direct: bool  # image in the POST body (202) instead of a presigned PUT (201)
    dup_event: bool
    resubmit: bool
    data: bytes = b""
    # Filled while running.
    job_id: str | None = None
    key: str | None = None
    uploaded_ms: int | None = None
    submit_error: str | None = None

    @property
    def corrupt(self) -> bool:
        return self.kind in CORRUPT


# Images that pass the upload check but cannot be read: each must fail with a reason.
CORRUPT = ("corrupt-deflate", "bomb")
# Unusual but valid images: each must give its text.
ODD = ("cmyk", "png16", "exif-rotated", "animated", "multipage")
FORMAT = {"corrupt-deflate": "png", "bomb": "png", "cmyk": "jpeg", "png16": "png", "exif-rotated": "jpeg",
          "animated": "webp", "multipage": "tiff"}


def line_image(text: str, rng: random.Random) -> Image.Image:
    fnt = ImageFont.truetype(str(FONT_DIR / rng.choice(["DejaVuSans.ttf", "DejaVuSans-Bold.ttf"])), 34)
    w = int(fnt.getlength(text)) + 40
    img = Image.new("RGB", (w, 60), (250, 250, 246))
    ImageDraw.Draw(img).text((20, 9), text, fill=(15, 15, 15), font=fnt)
    return img


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=90)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=90)
    elif fmt == "tiff":
        img.save(buf, "TIFF")
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def corrupt_png(good: bytes, rng: random.Random) -> bytes:
    """A PNG that passes the upload check (signature, type, ends with IEND) but cannot be
    decoded: the IDAT payload is replaced by random bytes (CRC recomputed, so it is the
    deflate stream that is broken)."""
    out, pos = [good[:8]], 8
    while pos < len(good):
        length = int.from_bytes(good[pos:pos + 4], "big")
        kind = good[pos + 4:pos + 8]
        payload = good[pos + 8:pos + 8 + length]
        if kind == b"IDAT":
            payload = bytes(rng.getrandbits(8) for _ in range(length))
        out.append(png_chunk(kind, payload))
        pos += 12 + length
    return b"".join(out)


def bomb_png() -> bytes:
    """A decompression bomb: a 100,000 x 100,000 RGB header (30 GB of pixels) over a few
    hundred bytes of zeros that deflate to far less; valid signature, CRCs and IEND."""
    ihdr = (100_000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(bytes(200_000), 9)) \
        + png_chunk(b"IEND", b"")


def odd_image(kind: str, img: Image.Image, rng: random.Random) -> bytes:
    buf = io.BytesIO()
    if kind == "cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=90)
    elif kind == "png16":
        # 16-bit grayscale.
        img.convert("L").convert("I").point(lambda v: v * 257).convert("I;16").save(buf, "PNG")
    elif kind == "exif-rotated":
        # Stored turned 90 degrees counter-clockwise; EXIF orientation 6 says "turn clockwise".
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    elif kind == "animated":
        # The text on the first frame; later frames blank.
        blank = Image.new("RGB", img.size, (250, 250, 246))
        img.save(buf, "WEBP", save_all=True, append_images=[blank, blank], duration=200, loop=0, quality=90)
    elif kind == "multipage":
        # The text on the first page; a second, blank page.
        img.save(buf, "TIFF", save_all=True, append_images=[Image.new("RGB", (200, 60), (255, 255, 255))])
    return buf.getvalue()


def make_specs(n: int, seed: int) -> list[Spec]:
    rng = random.Random(seed)
    picks = rng.sample(range(n), n)
    corrupt = picks[:max(2, round(n * 0.02))]
    odd = picks[len(corrupt):len(corrupt) + max(len(ODD), round(n * 0.03))]
    kinds = {i: CORRUPT[k % len(CORRUPT)] for k, i in enumerate(corrupt)}
    kinds.update({i: ODD[k % len(ODD)] for k, i in enumerate(odd)})
    rest = [i for i in range(n) if i not in kinds]
    dup_event = set(rng.sample(rest, max(1, round(n * 0.01))))
    resubmit = set(rng.sample(range(n), max(1, round(n * 0.05))))
    specs = []
    for i in range(n):
        text = f"{rng.choice(WORDS)} {i:05d} {rng.choice(WORDS)}"
        kind = kinds.get(i, "plain")
        fmt = FORMAT.get(kind) or rng.choice(["png", "jpeg", "webp"])
        direct = i not in dup_event and rng.random() < 0.3
        spec = Spec(i, text, fmt, kind, "express" if rng.random() < 0.3 else "bulk", direct, i in dup_event,
                    i in resubmit)
        img = line_image(text, rng)
        if kind == "plain":
            spec.data = encode(img, fmt)
        elif kind == "corrupt-deflate":
            spec.data = corrupt_png(encode(img, "png"), rng)
        elif kind == "bomb":
            spec.data = bomb_png()
        else:
            spec.data = odd_image(kind, img, rng)
        specs.append(spec)
    return specs


# ---------------------------------------------------------------------------------------------
# The database proxy: every service reaches MariaDB through it, so it can be cut.


class DbProxy:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_now = threading.Event()
        # Set: connections stay open and new ones are accepted, but nothing is forwarded (a
        # stopped server, a hung proxy on the way).
        self.frozen = threading.Event()
        self.lock = threading.Lock()
        self.socks: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_now.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.socks.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket):
        try:
            while chunk := src.recv(65536):
                while self.frozen.is_set() and not self.cut_now.is_set():
                    time.sleep(0.05)
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
            with self.lock:
                self.socks.discard(s)

    def cut(self):
        self.cut_now.set()
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self):
        self.cut_now.clear()

    def freeze(self):
        self.frozen.set()

    def thaw(self):
        self.frozen.clear()


# ---------------------------------------------------------------------------------------------
# Webhook receiver: records each delivery; signatures are checked after the run, with each
# caller's own key as the API shows it (GET /v1/webhook-secret).


@dataclass
class Hook:
    job_id: str
    status: str
    at_ms: int
    signature: str
    body: bytes


def verify(key: str | None, signature: str, body: bytes) -> bool:
    """Whether one `v1=` of `t=<t>,v1=<hex>[,v1=…]` is HMAC-SHA256(key, "<t>.<body>")."""
    if not key:
        return False
    parts = [p.split("=", 1) for p in signature.split(",") if "=" in p]
    t = next((v for k, v in parts if k == "t"), "")
    want = hmac.new(key.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(k == "v1" and hmac.compare_digest(want, v) for k, v in parts)


class Receiver:
    def __init__(self):
        self.hooks: list[Hook] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sig = self.headers.get("Ocr-Signature", "")
                try:
                    doc = json.loads(body)
                    hook = Hook(doc["job_id"], doc["status"], now_ms(), sig, body)
                except (ValueError, KeyError):
                    hook = Hook("?", "?", now_ms(), sig, body)
                with receiver.lock:
                    receiver.hooks.append(hook)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self) -> list[Hook]:
        with self.lock:
            return list(self.hooks)


# ---------------------------------------------------------------------------------------------
# Processes.


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict, logfile: Path):
        self.name, self.argv, self.env, self.logfile = name, argv, env, logfile
        self.p: subprocess.Popen | None = None
        # The highest VmHWM seen over every life of the process (a killed worker restarts).
        self.peak_kib = 0

    def sample(self):
        if self.p is not None:
            self.peak_kib = max(self.peak_kib, proc_status_kib(self.p.pid, "VmHWM"))

    def start(self):
        out = open(self.logfile, "ab")
        self.p = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        # chaos.sh kills what is listed here if this driver itself dies.
        with open(self.logfile.parent / "pids", "a") as f:
            f.write(f"{self.p.pid}\n")

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            os.killpg(self.p.pid, sig)

    def stop(self, grace: float = 30):
        if not self.alive():
            return
        self.sample()
        self.signal(signal.SIGTERM)
        try:
            self.p.wait(grace)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.p.wait(10)


def wait_http(url: str, proc: Proc, limit: float = 120):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (OSError, urllib.error.URLError):
            if not proc.alive():
                raise SystemExit(f"{proc.name} exited during start; see {proc.logfile}")
            time.sleep(0.2)
    raise SystemExit(f"{proc.name} not ready after {limit} s; see {proc.logfile}")


# ---------------------------------------------------------------------------------------------
# Database reads (directly, not through the proxy).


DB_PORT = 3306  # --db-port: the run's server (a private one with --db-kill)


def sql(db: str, query: str, patience: float = 60.0) -> list[list[str]]:
    """Rows of `query`; while the server is down (--db-kill restarts it) tries again for up to
    `patience` seconds."""
    deadline = time.time() + patience
    while True:
        try:
            # On stdin: a query naming 5,000 jobs is over the kernel's limit for one argument.
            out = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{DB_PORT}", "-uroot", "-N", "-B", db],
                                 input=query, check=True, capture_output=True, text=True).stdout
            return [line.split("\t") for line in out.splitlines() if line]
        except subprocess.CalledProcessError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# The client side: what a careful mobile app or service does.


class Client:
    def __init__(self, api: str, token: str, sqs, events_queues: dict[str, str], bucket: str, stats: dict):
        """events_queues: priority -> the upload-events queue S3 notifies for it."""
        self.api, self.token, self.sqs = api, token, sqs
        self.events_queues, self.bucket = events_queues, bucket
        self.stats = stats
        self.lock = threading.Lock()
        self.signatures: set[str] = set()

    def bump(self, name: str, by: int = 1):
        with self.lock:
            self.stats[name] = self.stats.get(name, 0) + by

    def request(self, method, url, body=None, headers=None, auth=True, what="request", limit=180.0):
        """Sends until a final answer: retries connection errors, timeouts, 429/503 (after
        Retry-After) and 5xx; returns (status, body bytes) of the final answer."""
        deadline = time.time() + limit
        delay = 0.2
        while True:
            req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
            if auth:
                req.add_header("Authorization", f"Bearer {self.token}")
            retry_after = None
            try:
                with urllib.request.urlopen(req, timeout=20) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                data = e.read()
                if e.code < 500 and e.code != 429:
                    return e.code, data
                retry_after = e.headers.get("Retry-After")
                self.bump(f"client_retries_http_{e.code}")
            except (OSError, urllib.error.URLError):
                self.bump("client_retries_connection")
            if time.time() > deadline:
                raise RuntimeError(f"{what}: no answer within {limit} s")
            wait = min(float(retry_after), 5.0) if retry_after else delay
            time.sleep(wait * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 3.0)

    def create_args(self, spec: Spec, run: str, callback: str):
        """The request that creates `spec`'s job (with its Idempotency-Key)."""
        key = f"{run}-{spec.index}"
        ctype = f"image/{spec.fmt}"
        if spec.direct:
            q = urllib.parse.urlencode({"priority": spec.priority, "callback_url": callback})
            return ("POST", f"{self.api}/v1/jobs?{q}", spec.data, {"Content-Type": ctype, "Idempotency-Key": key})
        body = json.dumps({"content_type": ctype, "content_length": len(spec.data), "priority": spec.priority,
                           "callback_url": callback}).encode()
        return ("POST", f"{self.api}/v1/jobs", body, {"Content-Type": "application/json", "Idempotency-Key": key})

    def submit(self, spec: Spec, run: str, callback: str):
        args = self.create_args(spec, run, callback)
        status, raw = self.request(*args, what=f"create #{spec.index}")
        if status not in (200, 201, 202):
            spec.submit_error = f"create answered {status}: {raw[:200]!r}"
            return
        job = json.loads(raw)
        spec.job_id = job["job_id"]
        spec.key = f"uploads/{spec.priority}/{spec.job_id}"
        if not spec.direct:
            up = job["upload"]
            sig = urllib.parse.parse_qs(urllib.parse.urlsplit(up["url"]).query).get("X-Amz-Signature")
            if sig:
                with self.lock:
                    self.signatures.add(sig[0])
            headers = {k: v for k, v in up["headers"].items() if k.lower() not in ("content-length", "host")}
            status, raw = self.request("PUT", up["url"], spec.data, headers, auth=False,
                                       what=f"upload #{spec.index}")
            if status != 200:
                spec.submit_error = f"upload answered {status}: {raw[:200]!r}"
                return
        spec.uploaded_ms = now_ms()
        if spec.dup_event:
            self.duplicate_event(spec)
        if spec.resubmit:
            status, raw = self.request(*args, what=f"resubmit #{spec.index}")
            again = json.loads(raw).get("job_id") if status in (200, 201, 202) else None
            self.bump("idempotent_resubmissions")
            if again != spec.job_id:
                self.bump("idempotency_mismatches")

    def duplicate_event(self, spec: Spec):
        """The S3 event for this object a second time (S3 delivers at least once)."""
        event = {"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "eventName": "ObjectCreated:Put",
            "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": self.bucket},
                   "object": {"key": spec.key, "size": len(spec.data)}}}]}
        for _ in range(30):
            try:
                self.sqs.send_message(QueueUrl=self.events_queues[spec.priority], MessageBody=json.dumps(event))
                self.bump("duplicate_events")
                return
            except Exception:  # LocalStack paused: try again
                time.sleep(1)
        raise RuntimeError(f"could not send the duplicate event of #{spec.index}")


# ---------------------------------------------------------------------------------------------


@dataclass
class Faults:
    kills: int = 0
    db_cut_s: float = 0.0
    localstack_pause_s: float = 0.0
    db_outage_s: float = 0.0
    db_hang_s: float = 0.0
    db_kills: int = 0
    log: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def drain_dlq(sqs, url: str) -> set[str]:
    ids = set()
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600,
                                  WaitTimeSeconds=0).get("Messages", [])
        if not got:
            return ids
        for m in got:
            try:
                ids.add(json.loads(m["Body"])["job_id"])
            except (ValueError, KeyError):
                ids.add("?")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=25.0, help="submissions per second")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--env-file", required=True, help="localstack/init.py output for this run")
    ap.add_argument("--db", required=True)
    ap.add_argument("--db-user", required=True)
    ap.add_argument("--db-password", required=True)
    ap.add_argument("--localstack-pid", type=int, required=True)
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--api-port", type=int, default=18090)
    ap.add_argument("--metrics-port", type=int, default=19190)
    ap.add_argument("--db-outage", type=float, default=0, help="seconds the database is cut, once")
    ap.add_argument("--db-hang", type=float, default=0, help="seconds the database stops answering, once")
    ap.add_argument("--db-kill", action="store_true", help="SIGKILL the database server mid-run, start it again")
    ap.add_argument("--db-port", type=int, default=3306)
    ap.add_argument("--db-pidfile", help="the server's pid file (--db-kill)")
    ap.add_argument("--db-start", help="command that starts the server again (--db-kill)")
    args = ap.parse_args()
    global DB_PORT
    DB_PORT = args.db_port
    long_db_faults = bool(args.db_outage or args.db_hang or args.db_kill)

    t_start = time.time()
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    res = dict(line.split("=", 1) for line in Path(args.env_file).read_text().split() if "=" in line)
    run = f"chaos{os.getpid()}"
    secret = os.urandom(24).hex()
    tokens = [os.urandom(24).hex(), os.urandom(24).hex()]

    log(f"rendering {args.jobs} images")
    specs = make_specs(args.jobs, args.seed)

    proxy = DbProxy(("127.0.0.1", args.db_port))
    receiver = Receiver()
    callback = f"http://127.0.0.1:{receiver.port}/hook"
    db_url = f"mysql://{args.db_user}:{args.db_password}@127.0.0.1:{proxy.port}/{args.db}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "WEBHOOK_", "CALLER_"))}
    base_env.update(res)
    base_env.update(DATABASE_URL=db_url, LOG_FORMAT="json", RUST_LOG="info,ort=warn")
    if long_db_faults:
        # Sized down so that seconds-long faults cover what minutes-long ones do in production:
        # each database step gives up after 2 s, a worker's batch after 3 s (then requeued);
        # upload events back off 1-2 s, so six receives take ~11 s and an outage longer than
        # that sends them to their DLQ, swept every 3 s.
        base_env.update(DB_TIMEOUT_MS="2000", DB_RETRY_SECS="3", UPLOAD_RETRY_BASE_SECS="1",
                        UPLOAD_RETRY_MAX_SECS="2", UPLOAD_DLQ_SWEEP_SECS="3",
                        UPLOAD_EVENTS_DLQ_URL=res["UPLOAD_EVENTS_DLQ_URL"])

    api_env = dict(base_env, AUTH_MODE="static", API_TOKENS=f"{tokens[0]}:alice,{tokens[1]}:bob",
                   BIND_ADDR=f"127.0.0.1:{args.api_port}", QUEUE_DEPTH_LIMIT="1000000", DB_POOL_MAX="8",
                   # Two callers share the load evenly here: per-caller limits out of reach (still
                   # checked on every create; --flood tests them).
                   CALLER_MAX_QUEUED="1000000", CALLER_MAX_RATE="1000000", CALLER_BURST="1000000",
                   WEBHOOK_ALLOW_HOSTS=f"127.0.0.1:{receiver.port}", WEBHOOK_SECRET=secret)
    api = Proc("api-local", [f"{args.bin_dir}/api-local"], api_env, logs / "api.log")
    api.start()
    wait_http(f"http://127.0.0.1:{args.api_port}/healthz", api)

    workers = []
    for i in range(args.workers):
        env = dict(base_env, WEBHOOK_SECRET=secret, WEBHOOK_ALLOW_HOSTS=f"127.0.0.1:{receiver.port}",
                   METRICS_ADDR=f"127.0.0.1:{args.metrics_port + i}", OCR_MODEL_SET=os.environ.get(
                       "OCR_MODEL_SET", "ppocrv6-tiny"), OCR_THREADS="1", RETRY_BACKOFF_MS="500",
                   SHUTDOWN_GRACE_SECS="20", CLOUDWATCH_INTERVAL_SECS="10", DB_POOL_MAX="4",
                   RESULT_URL_BASE=f"http://127.0.0.1:{args.api_port}", FLEET_NAME=f"chaos-{i}",
                   # Owed webhooks (their worker was killed) are re-sent after 15 s, not 5 min;
                   # jobs dead-lettered because their worker died on the last attempt are
                   # failed within 4 s, not 1 min.
                   WEBHOOK_LEASE_SECS="15", WEBHOOK_SWEEP_SECS="3", DLQ_SWEEP_SECS="4")
        w = Proc(f"worker-{i}", [f"{args.bin_dir}/gpu-worker"], env, logs / f"worker-{i}.log")
        w.start()
        workers.append(w)
    def shutdown():
        log("stopping workers and api (SIGTERM)")
        for w in workers:
            w.stop()
        api.stop()

    for i, w in enumerate(workers):
        wait_http(f"http://127.0.0.1:{args.metrics_port + i}/healthz", w)
    log(f"api and {len(workers)} workers ready; db proxy :{proxy.port}, webhooks :{receiver.port}")

    sqs = boto3.client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    stats: dict[str, int] = {}
    events_queues = {"express": res["UPLOAD_EVENTS_EXPRESS_QUEUE_URL"], "bulk": res["UPLOAD_EVENTS_BULK_QUEUE_URL"]}
    clients = [Client(f"http://127.0.0.1:{args.api_port}", t, sqs, events_queues, res["UPLOAD_BUCKET"], stats)
               for t in tokens]

    # Progress: terminal jobs, read directly from MariaDB; and each result as first stored (its
    # MD5: the result holds the engine's timing, so a second engine run's result differs), to
    # compare with the final one.
    progress = {"done": 0}
    localstack_peak = {"kib": 0}
    first_result: dict[str, str] = {}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for proc in [api, *workers]:
                proc.sample()
            localstack_peak["kib"] = max(localstack_peak["kib"], proc_status_kib(args.localstack_pid, "VmHWM"))
            try:
                progress["done"] = int(sql(args.db, "SELECT COUNT(*) FROM jobs WHERE status IN ('succeeded','failed')",
                                           patience=0)[0][0])
                for job_id, digest in sql(args.db, "SELECT job_id, MD5(result) FROM job_results", patience=0):
                    first_result.setdefault(job_id, digest)
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()

    faults = Faults()
    n = args.jobs

    def restart_later(w: Proc):
        time.sleep(1.0)  # systemd's RestartSec
        w.start()

    def fault_plan():
        plan = [
            (0.10, "kill", 0), (0.25, "db", 5.0), (0.40, "kill", 1), (0.55, "pause", 5.0), (0.70, "kill", 0),
        ]
        if args.db_outage:
            plan.append((0.45, "outage", args.db_outage))
        if args.db_hang:
            plan.append((0.62, "hang", args.db_hang))
        if args.db_kill:
            plan.append((0.78, "dbkill", 0.0))
        plan.sort(key=lambda p: p[0])
        # Faults that last `arg` seconds: how each begins and ends, and the figure it adds to.
        timed = {
            "db": (proxy.cut, proxy.restore, "db_cut_s", "database cut"),
            "outage": (proxy.cut, proxy.restore, "db_outage_s", "database down"),
            "hang": (proxy.freeze, proxy.thaw, "db_hang_s", "database hung"),
            "pause": (lambda: os.killpg(args.localstack_pid, signal.SIGSTOP),
                      lambda: os.killpg(args.localstack_pid, signal.SIGCONT), "localstack_pause_s", "LocalStack paused"),
        }
        for frac, kind, arg in plan:
            while progress["done"] < frac * n:
                if stop.is_set():
                    return
                time.sleep(0.1)
            at = f"{progress['done']}/{n} done"
            if kind == "kill":
                w = workers[arg % len(workers)]
                w.sample()
                w.signal(signal.SIGKILL)
                w.p.wait()
                faults.kills += 1
                faults.log.append(f"SIGKILL {w.name} at {at}")
                threading.Thread(target=restart_later, args=(w,), daemon=True).start()
            elif kind in timed:
                begin, end, seconds, what = timed[kind]
                t = time.time()
                begin()
                time.sleep(arg)
                end()
                setattr(faults, seconds, getattr(faults, seconds) + time.time() - t)
                faults.log.append(f"{what} {arg:.0f} s at {at}")
            elif kind == "dbkill":
                pid = int(Path(args.db_pidfile).read_text().strip())
                os.kill(pid, signal.SIGKILL)
                t = time.time()
                while time.time() - t < 30:
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.05)
                time.sleep(1.0)
                subprocess.run(args.db_start, shell=True, check=True, stdout=subprocess.DEVNULL)
                faults.db_kills += 1
                faults.log.append(f"database server SIGKILLed and restarted in {time.time() - t:.1f} s at {at}")
            log(faults.log[-1])

    faulter = threading.Thread(target=fault_plan, daemon=True)
    faulter.start()

    # Submit at a steady rate from 8 client threads; two callers (alice, bob).
    log(f"submitting {n} jobs at {args.rate}/s")
    t_submit = time.time()

    def submit(spec: Spec):
        time.sleep(max(0.0, t_submit + spec.index / args.rate - time.time()))
        try:
            clients[spec.index % 2].submit(spec, run, callback)
        except Exception as e:  # noqa: BLE001 (recorded in the ledger)
            spec.submit_error = str(e)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(submit, specs))
    ledger = {s.job_id: s for s in specs if s.job_id}
    log(f"submitted {len(ledger)} jobs in {time.time() - t_submit:.1f} s")
    for s in [s for s in specs if s.submit_error][:3]:
        log(f"submit error #{s.index}: {s.submit_error}")
    if not ledger:
        stop.set()
        shutdown()
        print("result: FAIL (no job could be submitted)")
        return 1

    # Wait until every job of the ledger has ended and its webhook arrived (or the time is up).
    deadline = t_start + args.timeout
    ids_sql = ",".join(f"'{i}'" for i in ledger)
    last_terminal = None
    while time.time() < deadline:
        rows = sql(args.db, f"SELECT COUNT(*) FROM jobs WHERE id IN ({ids_sql}) AND status IN ('succeeded','failed')")
        done = int(rows[0][0])
        hooked = {h.job_id for h in receiver.snapshot()} & set(ledger)
        if done == len(ledger):
            last_terminal = last_terminal or time.time()
            if len(hooked) >= done or time.time() - last_terminal > 60:
                break
        time.sleep(0.5)
    faulter.join(timeout=15)
    stop.set()
    wall = (last_terminal or time.time()) - t_submit

    # Failed jobs must reach their DLQ: the message is moved on the receive after its last
    # attempt, which the running workers make; give them a little time.
    failed_rows = sql(args.db, f"SELECT id, COALESCE(error,'') FROM jobs WHERE id IN ({ids_sql}) AND status='failed'")
    failed_ids = {r[0] for r in failed_rows}
    in_dlq: set[str] = set()
    dlq_deadline = time.time() + 90
    while time.time() < dlq_deadline:
        for name in ("EXPRESS_DLQ_URL", "BULK_DLQ_URL"):
            in_dlq |= drain_dlq(sqs, res[name])
        if failed_ids <= in_dlq:
            break
        time.sleep(1)

    # Callers kept apart: each one's webhook key, and the other caller can neither read a job
    # nor get it by replaying its Idempotency-Key and body (that makes its own new job).
    keys = []
    for c in clients:
        st, raw = c.request("GET", f"{c.api}/v1/webhook-secret", what="webhook secret")
        keys.append(json.loads(raw)["secret"] if st == 200 else None)
    sample = [s for s in specs if s.job_id][:20]
    foreign_reads = sum(1 for s in sample
                        if clients[(s.index + 1) % 2].request("GET", f"{clients[0].api}/v1/jobs/{s.job_id}")[0] != 404)
    foreign_replays = cross_jobs = 0
    replayed = [s for s in sample if not s.direct][:10]
    for s in replayed:
        other = clients[(s.index + 1) % 2]
        st, raw = other.request(*other.create_args(s, run, callback), what=f"foreign replay #{s.index}")
        if st in (200, 201, 202):
            again = json.loads(raw).get("job_id")
            cross_jobs += again != s.job_id
            foreign_replays += again == s.job_id

    shutdown()

    # ---- The ledger check.
    rows = sql(args.db, f"SELECT id, status, COALESCE(error,''), COALESCE(finished_at_ms,0) FROM jobs WHERE id IN ({ids_sql})")
    status = {r[0]: r[1] for r in rows}
    errors = {r[0]: r[2] for r in rows}
    finished = {r[0]: int(r[3]) for r in rows}
    result_rows = sql(args.db, f"SELECT job_id, COUNT(*), MD5(MIN(result)) FROM job_results WHERE job_id IN ({ids_sql}) GROUP BY job_id")
    result_count = {r[0]: int(r[1]) for r in result_rows}
    final_result = {r[0]: r[2] for r in result_rows}
    # A stored result replaced by another (a second engine run's, say): must never happen.
    overwritten = [j for j, digest in final_result.items() if first_result.get(j, digest) != digest]
    # Results the watcher never saw before the end cannot be compared: say how many were.
    compared = sum(1 for j in final_result if j in first_result)
    texts = {}
    for r in sql(args.db, f"SELECT job_id, JSON_UNQUOTE(JSON_EXTRACT(result, '$.text')) FROM job_results WHERE job_id IN ({ids_sql})"):
        texts[r[0]] = r[1] if len(r) > 1 else ""
    all_jobs = int(sql(args.db, "SELECT COUNT(*) FROM jobs")[0][0])

    # How many times the engine read each job's image: one "engine batch" line per engine call,
    # with its jobs (killed workers' logs included). Above 1 only for the batches a killed worker
    # held: at most kills × the batches a worker holds at once (receive + prefetch + engine).
    engine_runs: dict[str, int] = {}
    for f in logs.glob("worker-*.log"):
        for line in f.read_text(errors="replace").splitlines():
            if '"engine batch"' in line:
                m = re.search(r'"jobs":"([0-9a-f,]*)"', line)
                for j in (m.group(1).split(",") if m and m.group(1) else []):
                    engine_runs[j] = engine_runs.get(j, 0) + 1

    swept = sum(f.read_text(errors="replace").count('"webhook owed; queued again"') for f in logs.glob("worker-*.log"))
    requeued = sum(f.read_text(errors="replace").count('"message requeued (no attempt used)"')
                   for f in logs.glob("worker-*.log"))
    api_log = (logs / "api.log").read_text(errors="replace") if (logs / "api.log").exists() else ""
    events_swept = api_log.count('"dead-lettered upload event handled"')
    # Upload checks that lost their compare-and-set to a job queued but not sent (by a concurrent
    # handler, or by a timed-out try of the same event whose statement reached the database
    # late), and jobs found queued but unsent, sent by a later delivery.
    lost_races = api_log.count('"queued by another try whose message is not sent yet; checking again later"')
    sent_late = api_log.count('"job queued but its message not sent: sending it"')
    events_backed_off = api_log.count('"upload event failed"') + api_log.count('"upload event left for later"')

    succeeded = [j for j in ledger if status.get(j) == "succeeded" and result_count.get(j) == 1]
    failed = [j for j in ledger if status.get(j) == "failed"]
    lost = [j for j in ledger if status.get(j) not in TERMINAL
            or (status.get(j) == "succeeded" and result_count.get(j, 0) == 0)]
    runs = [engine_runs.get(j, 0) for j in succeeded]
    read_again = [j for j in ledger if engine_runs.get(j, 0) > 1]
    # Every result came from an engine read of its job (no result without a run).
    unread = [j for j in succeeded if engine_runs.get(j, 0) == 0]
    # Killed workers' batches, and batches whose results a database fault kept from being
    # written (each worker's batch in persist, once per fault): read again by design.
    db_faults = int(faults.db_cut_s > 0) + int(faults.db_outage_s > 0) + int(faults.db_hang_s > 0) + faults.db_kills
    max_rereads = (faults.kills * 3 + db_faults * args.workers) * 32
    corrupt = {s.job_id for s in specs if s.corrupt and s.job_id}
    failed_not_corrupt = [j for j in failed if j not in corrupt]
    corrupt_not_failed = [j for j in corrupt if status.get(j) != "failed"]
    failed_no_reason = [j for j in failed if not errors.get(j)]
    failed_not_in_dlq = [j for j in failed if j not in in_dlq]
    norm = lambda t: re.sub(r"\s+", " ", (t or "").strip()).lower()  # noqa: E731
    expected_text = {s.job_id: norm(s.text) for s in specs if s.job_id}
    by_text = {v: k for k, v in expected_text.items()}
    exact = sum(1 for j in succeeded if norm(texts.get(j)) == expected_text[j])
    odd_specs = [s for s in specs if s.kind in ODD and s.job_id]
    odd_ok = [s for s in odd_specs if status.get(s.job_id) == "succeeded" and norm(texts.get(s.job_id)) == expected_text[s.job_id]]
    odd_failed = [s for s in odd_specs if status.get(s.job_id) != "succeeded"]
    mixed_up = [j for j in succeeded if norm(texts.get(j)) != expected_text[j] and by_text.get(norm(texts.get(j))) not in (None, j)]

    hooks = receiver.snapshot()
    final_hooks = {}
    repeated = 0
    # A job's webhook verifies with its caller's key (alice submits the even specs, bob the
    # odd ones) and never with the other caller's.
    owner_of = {j: s.index % 2 for j, s in ledger.items()}
    valid = {id(h): h.job_id in owner_of and verify(keys[owner_of[h.job_id]], h.signature, h.body) for h in hooks}
    bad_sig = sum(1 for h in hooks if not valid[id(h)])
    foreign_sig = sum(1 for h in hooks
                      if h.job_id in owner_of and verify(keys[1 - owner_of[h.job_id]], h.signature, h.body))
    for h in hooks:
        if valid[id(h)] and h.job_id in ledger and h.status == status.get(h.job_id):
            if h.job_id in final_hooks:
                repeated += 1
            final_hooks.setdefault(h.job_id, h)
    expected_hooks = [j for j in ledger if status.get(j) in TERMINAL]
    latencies = [final_hooks[j].at_ms - ledger[j].uploaded_ms for j in succeeded if j in final_hooks and ledger[j].uploaded_ms]

    # Secrets in logs: the webhook secret, both API tokens, the database password, and every
    # presigned URL signature handed out during the run.
    secrets = [secret, args.db_password, *tokens, *(k for k in keys if k)]
    for c in clients:
        secrets.extend(c.signatures)
    leaks = 0
    scanned = 0
    for f in sorted(logs.glob("*.log")):
        text = f.read_text(errors="replace")
        scanned += text.count("\n")
        hits = [s for s in secrets if s and s in text]
        if hits:
            log(f"SECRET in {f.name}: {len(hits)} distinct values")
        leaks += len(hits)

    submit_errors = [s for s in specs if s.submit_error]
    facts = [
        ("submitted", len(ledger)),
        ("submit_errors", len(submit_errors)),
        ("succeeded", len(succeeded)),
        ("failed", len(failed)),
        ("corrupt_submitted", len(corrupt)),
        ("failed_not_corrupt", len(failed_not_corrupt)),
        ("corrupt_not_failed", len(corrupt_not_failed)),
        ("failed_without_reason", len(failed_no_reason)),
        # Their worker died on the last delivery; the dead-letter sweep ended them.
        ("failed_by_dlq_sweep", sum(1 for j in failed if "dead-letter queue" in errors.get(j, ""))),
        ("failed_in_dlq", len(failed) - len(failed_not_in_dlq)),
        ("lost", len(lost)),
        ("engine_runs_per_job", f"{sum(runs) / max(1, len(runs)):.3f} mean, {max(runs, default=0)} max"),
        ("jobs_read_more_than_once", f"{len(read_again)} (at most {max_rereads}: {faults.kills} kills × 3 batches "
                                     f"+ {db_faults} database faults × {args.workers} workers' batches, of 32)"),
        ("results_overwritten", f"{len(overwritten)} of {compared} compared"),
        ("results_text_exact", exact),
        ("results_mixed_up", len(mixed_up)),
        ("odd_images", f"{len(odd_ok)}/{len(odd_specs)} read exactly ({', '.join(ODD)})"),
        ("odd_images_failed", len(odd_failed)),
        ("webhooks_delivered", len(final_hooks)),
        ("webhooks_expected", len(expected_hooks)),
        ("webhooks_repeated", repeated),
        ("webhooks_resent_by_sweep", swept),
        ("webhooks_bad_signature", bad_sig),
        ("webhooks_verified_by_another_caller", foreign_sig),
        ("jobs_read_by_another_caller", foreign_reads),
        ("jobs_replayed_by_another_caller", foreign_replays),
        ("idempotent_resubmissions", stats.get("idempotent_resubmissions", 0)),
        ("idempotency_mismatches", stats.get("idempotency_mismatches", 0)),
        ("jobs_rows_total", all_jobs),
        ("duplicate_s3_events", stats.get("duplicate_events", 0)),
        ("worker_kills", faults.kills),
        ("db_cut_s", f"{faults.db_cut_s:.1f}"),
        ("localstack_pause_s", f"{faults.localstack_pause_s:.1f}"),
        ("db_outage_s", f"{faults.db_outage_s:.1f}"),
        ("db_hang_s", f"{faults.db_hang_s:.1f}"),
        ("db_server_kills", faults.db_kills),
        ("messages_requeued_by_workers", requeued),
        ("upload_events_backed_off", events_backed_off),
        ("upload_events_swept_from_dlq", events_swept),
        ("upload_checks_lost_to_an_unsent_job", lost_races),
        ("jobs_queued_but_unsent_sent_later", sent_late),
        ("client_retries", sum(v for k, v in stats.items() if k.startswith("client_retries"))),
        ("secrets_in_logs", leaks),
        ("log_lines_scanned", scanned),
        ("latency_p50_ms", f"{percentile(latencies, 0.50):.0f}"),
        ("latency_p99_ms", f"{percentile(latencies, 0.99):.0f}"),
        ("wall_s", f"{wall:.1f}"),
        ("peak_rss_mib", ", ".join([f"{p.name} {p.peak_kib / 1024:.0f}" for p in [api, *workers]]
                                   + [f"localstack {localstack_peak['kib'] / 1024:.0f}"])),
    ]
    for name, value in facts:
        print(f"{name}: {value}", flush=True)
    for line in faults.log:
        log(line)
    for s in submit_errors[:5]:
        log(f"submit error #{s.index}: {s.submit_error}")
    for j in lost[:10]:
        log(f"lost {j}: status {status.get(j)} results {result_count.get(j, 0)}")
        # What the services said about it (the logs are overwritten by the next run).
        for f in sorted(logs.glob("*.log")):
            said = [line for line in f.read_text(errors="replace").splitlines() if j in line]
            for line in said[:8]:
                log(f"  {f.name}: {line[:400]}")
    for j in failed_not_corrupt[:10]:
        log(f"unexpected failure {j} ({ledger[j].kind}): {errors.get(j)}")
    for s in odd_specs:
        if s not in odd_ok:
            log(f"{s.kind} #{s.index}: {status.get(s.job_id)} {texts.get(s.job_id)!r} (want {s.text!r})")
    for j in corrupt:
        log(f"{ledger[j].kind} #{ledger[j].index}: {status.get(j)}: {errors.get(j)}")
    for j in overwritten[:10]:
        log(f"result of {j} overwritten: first {first_result[j]}, final {final_result[j]}")
    for j in unread[:10]:
        log(f"result of {j} without an engine run in any worker log")
    missing_hooks = [j for j in expected_hooks if j not in final_hooks]
    for j in missing_hooks[:10]:
        log(f"no webhook for {j} ({status.get(j)})")

    problems = {
        "submit errors": len(submit_errors), "lost": len(lost), "results overwritten": len(overwritten),
        "results without an engine run": len(unread), "jobs read again beyond the kills' batches": max(0, len(read_again) - max_rereads),
        "failed but not corrupt": len(failed_not_corrupt), "corrupt but not failed": len(corrupt_not_failed),
        "failed without a reason": len(failed_no_reason), "failed but not in a DLQ": len(failed_not_in_dlq),
        "mixed-up results": len(mixed_up), "missing webhooks": len(missing_hooks),
        "bad webhook signatures": bad_sig, "idempotency mismatches": stats.get("idempotency_mismatches", 0),
        "webhooks verified by another caller's key": foreign_sig,
        "jobs read by another caller": foreign_reads, "jobs replayed by another caller": foreign_replays,
        "foreign replays that made no job": len(replayed) - cross_jobs - foreign_replays,
        "secrets in logs": leaks, "jobs beyond the ledger": all_jobs - len(ledger) - cross_jobs,
        "faults not all injected": int(faults.kills < 3 or faults.db_cut_s == 0 or faults.localstack_pause_s == 0
                                       or (args.db_outage > 0) != (faults.db_outage_s > 0)
                                       or (args.db_hang > 0) != (faults.db_hang_s > 0)
                                       or args.db_kill != (faults.db_kills > 0)),
    }
    bad = {k: v for k, v in problems.items() if v}
    print(f"result: {'PASS' if not bad else 'FAIL (' + ', '.join(f'{k} {v}' for k, v in bad.items()) + ')'}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
