"""List and redrive dead-letter queue messages (scripts/dlq).

  dlq list    [--queue express|bulk|upload-events]   show what is in the DLQ(s)
  dlq redrive [--queue ...] [--max N] [--reset-jobs] move messages back to their queue

Queues are found by name from the stage's naming (ocr-<name> locally, ocr-<stage>-<name> on
AWS; `--prefix` overrides). Listing peeks (visibility 0) and changes nothing. Redrive sends
each message back to its source queue and only then deletes it from the DLQ. A job that a
worker marked `failed` is left failed by a plain redrive (the worker acknowledges it); with
--reset-jobs its row goes back to `queued` (attempts 0) first, so it is really tried again
(needs DATABASE_URL and the `mariadb` client).
"""

import argparse
import json
import os
import subprocess
import sys
import urllib.parse

import boto3

KINDS = ["express", "bulk", "upload-events"]


def base(args):
    if args.prefix:
        return args.prefix
    return "ocr" if args.stage == "local" else f"ocr-{args.stage}"


def queue_url(sqs, name):
    return sqs.get_queue_url(QueueName=name)["QueueUrl"]


def peek(sqs, url, limit):
    seen, out = set(), []
    while len(out) < limit:
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0,
                                    AttributeNames=["All"], WaitTimeSeconds=0).get("Messages", [])
        fresh = [m for m in batch if m["MessageId"] not in seen]
        if not fresh:
            break
        for m in fresh:
            seen.add(m["MessageId"])
            out.append(m)
    return out[:limit]


def job_id(body):
    try:
        return json.loads(body).get("job_id")
    except (ValueError, AttributeError):
        return None


def reset_jobs(ids):
    url = urllib.parse.urlparse(os.environ["DATABASE_URL"])
    cmd = ["mariadb", f"-h{url.hostname}", f"-P{url.port or 3306}", f"-u{url.username or 'root'}", url.path.lstrip("/")]
    env = dict(os.environ, MYSQL_PWD=urllib.parse.unquote(url.password or ""))
    quoted = ",".join("'%s'" % i for i in ids if i and all(c in "0123456789abcdef" for c in i))
    if not quoted:
        return
    sql = ("UPDATE jobs SET status='queued', attempts=0, error=NULL, finished_at_ms=NULL "
           f"WHERE id IN ({quoted}) AND status='failed'")
    subprocess.run(cmd + ["-e", sql], check=True, env=env)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["list", "redrive"])
    ap.add_argument("--queue", choices=KINDS, action="append")
    ap.add_argument("--stage", default=os.environ.get("STAGE", "local"))
    ap.add_argument("--prefix")
    ap.add_argument("--max", type=int, default=1000)
    ap.add_argument("--reset-jobs", action="store_true")
    args = ap.parse_args()
    sqs = boto3.client("sqs")
    for kind in args.queue or KINDS:
        dlq = queue_url(sqs, f"{base(args)}-{kind}-dlq")
        messages = peek(sqs, dlq, args.max)
        print(f"{kind}-dlq: {len(messages)} message(s)")
        if args.command == "list":
            for m in messages:
                count = m.get("Attributes", {}).get("ApproximateReceiveCount", "?")
                print(f"  {m['MessageId']}  receives={count}  job={job_id(m['Body']) or '-'}  {m['Body'][:120]}")
            continue
        source = queue_url(sqs, f"{base(args)}-{kind}")
        if args.reset_jobs and kind != "upload-events":
            reset_jobs([job_id(m["Body"]) for m in messages])
        moved = 0
        while moved < args.max:
            batch = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=60,
                                        WaitTimeSeconds=0).get("Messages", [])
            if not batch:
                break
            for m in batch:
                sqs.send_message(QueueUrl=source, MessageBody=m["Body"])
                sqs.delete_message(QueueUrl=dlq, ReceiptHandle=m["ReceiptHandle"])
                moved += 1
        print(f"  redrove {moved} to {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
