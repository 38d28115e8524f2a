#!/usr/bin/env python3
"""Create the ocr-fleet AWS resources in LocalStack, idempotently.

The same resources, with the same names, as template.yaml creates for a stage:

    bucket   <base>-uploads            private, SSE, CORS for PUT, lifecycle, and two
                                       s3:ObjectCreated:* notifications: prefix
                                       uploads/express/ to the express upload-events queue,
                                       uploads/bulk/ to the bulk one
    queues   <base>-upload-events-express  visibility 60 s   (DLQ <base>-upload-events-dlq)
             <base>-upload-events-bulk     visibility 60 s   (DLQ <base>-upload-events-dlq)
             <base>-express                visibility 30 s   (DLQ <base>-express-dlq)
             <base>-bulk                   visibility 30 s   (DLQ <base>-bulk-dlq)
             a job queue's DLQ takes a message after 3 receives (maxReceiveCount 3), the
             upload-events DLQ (one for both upload-events queues) after 6

An upload's event goes to its priority's own queue so that an express event never waits
behind a bulk backlog (issue #15): on-upload reads each with its own event source mapping, the
local poller with its own loop.

Naming (see README "Resource names"): stage `local` uses base `ocr`, so the names are the plain
`ocr-uploads`, `ocr-express`, ...; any other stage uses `ocr-<stage>` (`ocr-prod-express`) and
its bucket also gets the account and region (`ocr-prod-uploads-<account>-<region>`), as in
template.yaml. `--prefix BASE` replaces the base, so tests or a second local stage can make their
own set (`--prefix t1234` -> `t1234-uploads`, `t1234-express`, ...).

Prints the env lines the functions read (stdout, one per line):

    UPLOAD_BUCKET=ocr-uploads
    UPLOAD_EVENTS_EXPRESS_QUEUE_URL=http://127.0.0.1:4566/queue/us-east-1/000000000000/ocr-upload-events-express
    UPLOAD_EVENTS_BULK_QUEUE_URL=http://127.0.0.1:4566/queue/us-east-1/000000000000/ocr-upload-events-bulk
    EXPRESS_QUEUE_URL=...
    BULK_QUEUE_URL=...
    (and UPLOAD_EVENTS_DLQ_URL, EXPRESS_DLQ_URL, BULK_DLQ_URL)

`--delete` removes the set instead (bucket objects included). Needs boto3 (.venv/localstack).
Endpoint: $AWS_ENDPOINT_URL or http://127.0.0.1:4566; credentials test/test; us-east-1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass

import boto3
import botocore.config
from botocore.exceptions import ClientError, EndpointConnectionError

DEFAULT_ENDPOINT = "http://127.0.0.1:4566"
DEFAULT_REGION = "us-east-1"
LOCAL_ACCOUNT = "000000000000"

MAX_RECEIVE_COUNT = 3
# Upload events back off (on-upload's UPLOAD_RETRY_BASE_SECS, doubling up to
# UPLOAD_RETRY_MAX_SECS: 30+60+120+240+480+900 s) before the DLQ: a database outage of half an
# hour costs no event its place; longer ones are swept back from the DLQ (README Reliability).
UPLOAD_EVENTS_MAX_RECEIVE_COUNT = 6
JOB_VISIBILITY_SECS = 30
# >= 6x the on-upload function timeout (10 s in template.yaml), as AWS advises for Lambda sources.
UPLOAD_EVENTS_VISIBILITY_SECS = 60
DLQ_RETENTION_SECS = 14 * 24 * 3600
QUEUE_RETENTION_SECS = 4 * 24 * 3600
UPLOAD_PREFIX = "uploads/"
OUTPUT_PREFIX = "outputs/"
# Each priority's uploads (uploads/<priority>/<job id>) notify their own upload-events queue.
PRIORITIES = ("express", "bulk")
UPLOAD_EXPIRY_DAYS = 7


@dataclass(frozen=True)
class Names:
    bucket: str
    upload_events_express: str
    upload_events_bulk: str
    # The one DLQ of both upload-events queues.
    upload_events_dlq: str
    express: str
    bulk: str

    @property
    def upload_events(self) -> list[str]:
        """The upload-events queues, in PRIORITIES' order."""
        return [self.upload_events_express, self.upload_events_bulk]

    @property
    def queues(self) -> list[str]:
        return [*self.upload_events, self.express, self.bulk]

    @property
    def dlqs(self) -> list[str]:
        return [self.upload_events_dlq, f"{self.express}-dlq", f"{self.bulk}-dlq"]

    def dlq_of(self, queue: str) -> str:
        return self.upload_events_dlq if queue in self.upload_events else f"{queue}-dlq"


def names_for(stage: str = "local", prefix: str | None = None,
              account: str = LOCAL_ACCOUNT, region: str = DEFAULT_REGION) -> Names:
    """The naming function shared with template.yaml (keep them in step)."""
    if prefix:
        base, bucket = prefix, f"{prefix}-uploads"
    elif stage == "local":
        base, bucket = "ocr", "ocr-uploads"
    else:
        base = f"ocr-{stage}"
        bucket = f"{base}-uploads-{account}-{region}"
    return Names(bucket=bucket, upload_events_express=f"{base}-upload-events-express",
                 upload_events_bulk=f"{base}-upload-events-bulk",
                 upload_events_dlq=f"{base}-upload-events-dlq",
                 express=f"{base}-express", bulk=f"{base}-bulk")


def log(msg: str) -> None:
    print(f"init: {msg}", file=sys.stderr, flush=True)


def clients(endpoint: str, region: str):
    session = boto3.session.Session(
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        region_name=region,
    )
    cfg = botocore.config.Config(s3={"addressing_style": "path"},
                                 retries={"max_attempts": 5, "mode": "standard"})
    return (session.client("s3", endpoint_url=endpoint, config=cfg),
            session.client("sqs", endpoint_url=endpoint, config=cfg))


def wait_until_up(sqs, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sqs.list_queues(MaxResults=1)
            return
        except (EndpointConnectionError, ConnectionError) as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"init: LocalStack does not answer: {e}")
            time.sleep(0.5)


def queue_url(sqs, name: str) -> str | None:
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as e:
        if e.response["Error"]["Code"] in ("AWS.SimpleQueueService.NonExistentQueue",
                                           "QueueDoesNotExist"):
            return None
        raise


def ensure_queue(sqs, name: str, attributes: dict[str, str]) -> tuple[str, str]:
    """Create the queue or bring its attributes in line. Returns (url, arn)."""
    url = queue_url(sqs, name)
    if url is None:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        log(f"created queue {name}")
    else:
        current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        changed = {k: v for k, v in attributes.items() if not _same_attr(k, current.get(k), v)}
        if changed:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=changed)
            log(f"updated queue {name}: {', '.join(sorted(changed))}")
        else:
            log(f"queue {name} is up to date")
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def _same_attr(key: str, have: str | None, want: str) -> bool:
    if have is None:
        return False
    if key in ("RedrivePolicy", "Policy"):
        try:
            return json.loads(have) == json.loads(want)
        except ValueError:
            return False
    return str(have).lower() == str(want).lower()


def s3_send_policy(queue_arn: str, bucket: str, account: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AllowS3ObjectCreated",
            "Effect": "Allow",
            "Principal": {"Service": "s3.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {
                "ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"},
                "StringEquals": {"aws:SourceAccount": account},
            },
        }],
    }, sort_keys=True)


def ensure_bucket(s3, bucket: str, region: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        log(f"bucket {bucket} exists")
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise
        kwargs = {}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(Bucket=bucket, **kwargs)
        log(f"created bucket {bucket}")
    # The settings below are PUTs that replace the whole configuration: safe to repeat.
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True,
        "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
    })
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}],
    })
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [{
        "AllowedMethods": ["PUT"],
        "AllowedOrigins": ["*"],
        "AllowedHeaders": ["*"],
        "ExposeHeaders": ["ETag"],
        "MaxAgeSeconds": 3000,
    }]})
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "expire-uploads", "Status": "Enabled", "Filter": {"Prefix": UPLOAD_PREFIX},
         "Expiration": {"Days": UPLOAD_EXPIRY_DAYS}},
        # Result outputs too large for an API response (the API answers 303 to them).
        {"ID": "expire-outputs", "Status": "Enabled", "Filter": {"Prefix": OUTPUT_PREFIX},
         "Expiration": {"Days": 1}},
        {"ID": "abort-incomplete-multipart", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}},
    ]})


def ensure_notification(s3, bucket: str, queue_arns: dict[str, str]) -> None:
    """queue_arns: priority -> its upload-events queue's ARN."""
    want = {"QueueConfigurations": [{
        "Id": f"upload-events-{priority}",
        "QueueArn": queue_arns[priority],
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": f"{UPLOAD_PREFIX}{priority}/"}]}},
    } for priority in PRIORITIES]}
    have = s3.get_bucket_notification_configuration(Bucket=bucket)
    have.pop("ResponseMetadata", None)
    if _normalise_notification(have) == _normalise_notification(want):
        log(f"bucket {bucket} notification is up to date")
        return
    # Only written when it changed: S3 sends an s3:TestEvent to the queue on every write.
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=want)
    for priority in PRIORITIES:
        log(f"bucket {bucket}: s3:ObjectCreated:* on {UPLOAD_PREFIX}{priority}/ -> {queue_arns[priority]}")


def _normalise_notification(cfg: dict) -> list:
    out = []
    for q in cfg.get("QueueConfigurations", []):
        rules = sorted((r["Name"].lower(), r["Value"])
                       for r in q.get("Filter", {}).get("Key", {}).get("FilterRules", []))
        out.append((q.get("QueueArn"), tuple(sorted(q.get("Events", []))), tuple(rules)))
    extra = [k for k in ("TopicConfigurations", "LambdaFunctionConfigurations",
                         "EventBridgeConfiguration") if cfg.get(k)]
    return [sorted(out), extra]


def create(s3, sqs, names: Names, region: str, account: str) -> dict[str, str]:
    urls: dict[str, str] = {}
    arns: dict[str, str] = {}
    for dlq in names.dlqs:
        urls[dlq], arns[dlq] = ensure_queue(sqs, dlq, {
            "MessageRetentionPeriod": str(DLQ_RETENTION_SECS),
            "SqsManagedSseEnabled": "true",
        })
    for name in names.queues:
        events = name in names.upload_events
        attrs = {
            "VisibilityTimeout": str(UPLOAD_EVENTS_VISIBILITY_SECS if events else JOB_VISIBILITY_SECS),
            "MessageRetentionPeriod": str(QUEUE_RETENTION_SECS),
            "SqsManagedSseEnabled": "true",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": arns[names.dlq_of(name)], "maxReceiveCount": (
                UPLOAD_EVENTS_MAX_RECEIVE_COUNT if events else MAX_RECEIVE_COUNT)}),
        }
        if events:
            arn = f"arn:aws:sqs:{region}:{account}:{name}"
            attrs["Policy"] = s3_send_policy(arn, names.bucket, account)
        urls[name], arns[name] = ensure_queue(sqs, name, attrs)
    ensure_bucket(s3, names.bucket, region)
    ensure_notification(s3, names.bucket, {
        priority: arns[queue] for priority, queue in zip(PRIORITIES, names.upload_events)})
    return {
        "UPLOAD_BUCKET": names.bucket,
        "UPLOAD_EVENTS_EXPRESS_QUEUE_URL": urls[names.upload_events_express],
        "UPLOAD_EVENTS_BULK_QUEUE_URL": urls[names.upload_events_bulk],
        "EXPRESS_QUEUE_URL": urls[names.express],
        "BULK_QUEUE_URL": urls[names.bulk],
        "UPLOAD_EVENTS_DLQ_URL": urls[names.upload_events_dlq],
        "EXPRESS_DLQ_URL": urls[f"{names.express}-dlq"],
        "BULK_DLQ_URL": urls[f"{names.bulk}-dlq"],
    }


def delete(s3, sqs, names: Names) -> None:
    try:
        paginator = s3.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=names.bucket):
            objs = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                    for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            if objs:
                s3.delete_objects(Bucket=names.bucket, Delete={"Objects": objs, "Quiet": True})
        s3.delete_bucket(Bucket=names.bucket)
        log(f"deleted bucket {names.bucket}")
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("NoSuchBucket", "404"):
            raise
    for q in names.queues + names.dlqs:
        url = queue_url(sqs, q)
        if url:
            sqs.delete_queue(QueueUrl=url)
            log(f"deleted queue {q}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default=os.environ.get("STAGE", "local"),
                   help="stage name (default: local -> ocr-uploads, ocr-express, ...)")
    p.add_argument("--prefix", help="base name replacing ocr / ocr-<stage> (e.g. a test's t1234)")
    p.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL", DEFAULT_ENDPOINT))
    p.add_argument("--region", default=os.environ.get("AWS_REGION", DEFAULT_REGION))
    p.add_argument("--env-file", help="also write the env lines to this file (mode 600)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--delete", action="store_true", help="delete the resources instead")
    args = p.parse_args(argv)

    s3, sqs = clients(args.endpoint, args.region)
    wait_until_up(sqs)
    account = LOCAL_ACCOUNT
    names = names_for(args.stage, args.prefix, account, args.region)
    if args.delete:
        delete(s3, sqs, names)
        return 0
    env = create(s3, sqs, names, args.region, account)
    lines = [f"{k}={v}" for k, v in env.items()]
    if args.env_file:
        fd = os.open(args.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
    print(json.dumps(env, indent=2) if args.json else "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
