"""What the benchmark and load drivers in scripts/lib share: HTTP as a phone does it, the
database read directly, and a process's memory figures from /proc."""

import json
import subprocess
import urllib.request


def http(method, url, token=None, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read()


def sql(db, query):
    """Rows of `query` on the local MariaDB (port 3306, root), sent on stdin."""
    out = subprocess.run(["mariadb", "-h127.0.0.1", "-uroot", "-N", "-B", db],
                         input=query, check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.strip().splitlines() if line]


def upload(api, token, data, content_type, priority):
    """Creates a job for `data` and PUTs it to the presigned URL with the signed headers, as a
    phone does; returns the job's id."""
    body = json.dumps({"content_type": content_type, "content_length": len(data), "priority": priority}).encode()
    _, raw = http("POST", f"{api}/v1/jobs", token, body, {"Content-Type": "application/json"})
    job = json.loads(raw)
    up = job["upload"]
    headers = {k: v for k, v in up["headers"].items() if k != "content-length"}
    status, _ = http("PUT", up["url"], None, data, headers)
    assert status == 200, status
    return job["job_id"]


def proc_status_kib(pid, field):
    """A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM`: the peak so far); 0 when gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
