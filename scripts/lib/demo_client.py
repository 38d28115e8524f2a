"""A client that behaves like a phone: create a job, PUT the image to the presigned URL,
then poll until the job ends. Prints progress, then each image's text and timings (and, for
a PDF, the size of its searchable PDF).

Usage: demo_client.py API_URL TOKEN IMAGE...   (stdlib only)
"""

import json
import mimetypes
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
         ".tif": "image/tiff", ".tiff": "image/tiff", ".pdf": "application/pdf"}


def call(method, url, token=None, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main():
    api, token, images = sys.argv[1].rstrip("/"), sys.argv[2], [Path(p) for p in sys.argv[3:]]
    jobs = []
    for i, path in enumerate(images):
        data = path.read_bytes()
        ctype = TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
        priority = "express" if i % 2 == 0 else "bulk"
        status, body = call("POST", f"{api}/v1/jobs", token,
                            json.dumps({"content_type": ctype, "content_length": len(data),
                                        "priority": priority}).encode(),
                            {"Content-Type": "application/json"})
        if status != 201:
            print(f"{path.name}: create failed: HTTP {status} {body.decode(errors='replace')}", file=sys.stderr)
            return 1
        job = json.loads(body)
        up = job["upload"]
        headers = {k: v for k, v in up["headers"].items() if k.lower() != "content-length"}
        started = time.monotonic()
        status, body = call(up["method"], up["url"], None, data, headers)
        if status != 200:
            print(f"{path.name}: upload failed: HTTP {status}", file=sys.stderr)
            return 1
        jobs.append({"file": path.name, "id": job["job_id"], "priority": priority, "started": started,
                     "bytes": len(data), "pdf": ctype == "application/pdf"})
        print(f"uploaded {path.name} ({len(data)} bytes, {priority}) as job {job['job_id']}", file=sys.stderr)

    # Each job read with `?wait=20` (one request answered when the job ends), side by side.
    done = [0]
    lock = threading.Lock()

    def wait_for(j):
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status, body = call("GET", f"{api}/v1/jobs/{j['id']}?wait=20", token)
            if status != 200:
                time.sleep(0.5)
                continue
            view = json.loads(body)
            if view["status"] in ("succeeded", "failed"):
                j["view"] = view
                j["seconds"] = time.monotonic() - j["started"]
                with lock:
                    done[0] += 1
                    print(f"progress: {done[0]}/{len(jobs)} done", file=sys.stderr)
                return

    with ThreadPoolExecutor(max(1, len(jobs))) as pool:
        list(pool.map(wait_for, jobs))
    failed = 0
    for j in jobs:
        view = j.get("view")
        print(f"\n=== {j['file']} ({j['priority']}) ===")
        if view is None:
            print("still not done after 10 minutes")
            failed += 1
            continue
        if view["status"] != "succeeded":
            print(f"FAILED: {view.get('error')}")
            failed += 1
            continue
        result = view["result"]
        pages = result.get("pages") or [result]
        print(f"upload to result {j['seconds']:.1f} s; engine {result['seconds']:.2f} s; {len(pages)} page(s)")
        for p in pages:
            words = sum(len(l.get("words", [])) for l in p["lines"])
            if len(pages) > 1:
                print(f"--- page {p.get('page', 1)} ---")
            print(f"{len(p['lines'])} lines, {words} words; {p['width']}x{p['height']} px")
            print(p["text"])
        if j["pdf"]:
            # The searchable PDF of a PDF: the upload itself with the words added as invisible text.
            status, body = call("GET", f"{api}/v1/jobs/{j['id']}/result?format=pdf", token)
            if status == 200 and body.startswith(b"%PDF-"):
                print(f"searchable PDF (?format=pdf): {len(body)} bytes, the upload's {j['bytes']} "
                      f"and a text layer of {len(body) - j['bytes']}")
            else:
                print(f"searchable PDF (?format=pdf): HTTP {status}")
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
