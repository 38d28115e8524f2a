#!/usr/bin/env python3
"""Deploy the non-compute core of template.yaml to LocalStack's CloudFormation and check it.

LocalStack here has no Docker and stubs RDS, HTTP APIs, launch templates and Auto Scaling, so
this keeps, from template.yaml itself (never from a hand-kept copy), only the resource types in
CORE_TYPES: the bucket with its notification and policy, the queues and DLQs with their
policies, the CloudWatch alarms and the dashboard (which LocalStack accepts but does not store:
its body is checked by infra/tests/test_template.py). Everything else (functions,
HTTP API, VPC, database, proxy, workers, scaling policies, log groups) is dropped, and so is
every reference to a dropped resource (an alarm keeps its other actions; an output that needs a
dropped resource goes). Parameters and conditions nothing kept uses are dropped too. Checks that:
  - the stack creates (no dependency cycle; the queue policy admits the bucket, so S3 accepts
    the notification),
  - resource names equal localstack/init.py's names_for(stage) (one naming rule),
  - every job queue redrives to its DLQ after init.py's MAX_RECEIVE_COUNT (3), both
    upload-events queues (express, bulk) to the one upload-events DLQ after
    UPLOAD_EVENTS_MAX_RECEIVE_COUNT (6) receives, with init.py's visibility timeouts and retention, SSE-SQS on every queue, and the
    workers' user data (VISIBILITY_TIMEOUT_SECS, MAX_ATTEMPTS) agrees with the queues,
  - the bucket blocks public access and encrypts,
  - the alarms exist with the intended thresholds: every DLQ > 0, queue
    depth high/low at the template's ScaleOutQueueDepth / ScaleInQueueDepth over both queues,
    oldest express message at ExpressMaxAgeSecs, and the database's (proxy pinning > 0,
    connections > DatabaseConnectionsAlarmThreshold, CPU > 80%, free storage < 5 GiB) on the
    stage's instance and proxy names,
  - an object put under uploads/express/ reaches the express upload-events queue as
    ObjectCreated:Put, one under uploads/bulk/ the bulk one, and neither reaches the other.
Then deletes the stack. Used by scripts/test.sh; needs .venv/localstack (boto3, cfn-lint).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import boto3
from cfnlint.decode import decode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from init import (  # noqa: E402
    DLQ_RETENTION_SECS,
    JOB_VISIBILITY_SECS,
    LOCAL_ACCOUNT,
    MAX_RECEIVE_COUNT,
    PRIORITIES,
    UPLOAD_EVENTS_MAX_RECEIVE_COUNT,
    QUEUE_RETENTION_SECS,
    UPLOAD_EVENTS_VISIBILITY_SECS,
    names_for,
)

# The non-compute core that LocalStack's CloudFormation really creates.
CORE_TYPES = {
    "AWS::S3::Bucket", "AWS::S3::BucketPolicy",
    "AWS::SQS::Queue", "AWS::SQS::QueuePolicy",
    "AWS::CloudWatch::Alarm", "AWS::CloudWatch::Dashboard",
}  # not SNS: scripts/lib/localstack.sh does not enable it (the alarm topic is checked in infra/tests)
_GONE = object()  # a value that referred to a dropped resource


def _refs(node) -> set[str]:
    """Logical ids (resources, parameters, conditions) a template node refers to."""
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "Ref" and isinstance(v, str):
                out.add(v)
            elif k == "Fn::GetAtt":
                out.add(v[0] if isinstance(v, list) else str(v).split(".")[0])
            elif k == "Fn::Sub":
                s, extra = (v[0], v[1]) if isinstance(v, list) else (v, {})
                out |= {m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", s)} - set(extra)
                out |= _refs(extra)
            elif k in ("Condition", "Fn::If") and isinstance(v, (str, list)):
                if isinstance(v, str):
                    out.add(v)
                else:
                    out.add(v[0])
                    out |= _refs(v[1:])
            else:
                out |= _refs(v)
    elif isinstance(node, list):
        for v in node:
            out |= _refs(v)
    return out


def _prune(node, dropped: set[str]):
    """node without the parts that refer to dropped resources (_GONE if it all goes)."""
    if isinstance(node, dict):
        if _refs({k: v for k, v in node.items() if k in ("Ref", "Fn::GetAtt", "Fn::Sub")}) & dropped:
            return _GONE
        out = {}
        for k, v in node.items():
            pv = _prune(v, dropped)
            if pv is _GONE:
                if k.startswith("Fn::") or k == "Ref":
                    return _GONE
                continue
            out[k] = pv
        return out
    if isinstance(node, list):
        return [pv for pv in (_prune(v, dropped) for v in node) if pv is not _GONE]
    return node


def plain_cfn(template_path: Path) -> dict:
    """template.yaml reduced to CORE_TYPES, as plain CloudFormation (no SAM transform)."""
    tpl, problems = decode(str(template_path))
    if problems:
        raise SystemExit(f"cannot parse {template_path}: {problems}")
    tpl = json.loads(json.dumps(tpl, default=str))
    for key in ("Transform", "Globals", "Rules", "Metadata"):
        tpl.pop(key, None)
    res = tpl["Resources"]
    dropped = {k for k, r in res.items() if r["Type"] not in CORE_TYPES}
    for k in dropped:
        del res[k]
    for k in list(res):
        res[k] = _prune(res[k], dropped)
        depends = [d for d in _as_list(res[k].get("DependsOn")) if d not in dropped]
        if depends:
            res[k]["DependsOn"] = depends
        else:
            res[k].pop("DependsOn", None)
    outputs = {}
    for key, out in tpl.get("Outputs", {}).items():
        if not _refs(out) & dropped:
            outputs[key] = out
    tpl["Outputs"] = outputs
    # Keep only the conditions and parameters something kept uses (e.g. WorkerAmiId, an AMI id
    # LocalStack would check and that has no default, goes).
    conds = tpl.get("Conditions", {})
    used = _refs(res) | _refs(outputs) | {r.get("Condition") for r in res.values()} - {None}
    while True:
        more = set().union(*(_refs(conds[c]) for c in used & set(conds))) - used
        if not more:
            break
        used |= more
    tpl["Conditions"] = {k: v for k, v in conds.items() if k in used}
    tpl["Parameters"] = {k: v for k, v in tpl.get("Parameters", {}).items() if k in used}
    if not tpl["Conditions"]:
        del tpl["Conditions"]
    return tpl


def _as_list(v) -> list:
    return [] if v is None else v if isinstance(v, list) else [v]


def template_defaults(template_path: Path) -> dict:
    tpl, _ = decode(str(template_path))
    return {k: p.get("Default") for k, p in tpl["Parameters"].items()}


def user_data_settings(template_path: Path) -> dict[str, str]:
    """KEY=value lines of the workers' stack.env (the launch template's user data)."""
    tpl, _ = decode(str(template_path))
    data = tpl["Resources"]["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    text = data["Fn::Base64"]["Fn::Sub"]
    text = text[0] if isinstance(text, list) else text
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(\S*)$", text, re.M))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--template", default=str(HERE.parent / "template.yaml"))
    p.add_argument("--stage", default=f"chk{os.getpid()}")
    p.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    p.add_argument("--print-template", action="store_true", help="print the reduced template and exit")
    args = p.parse_args()
    template = Path(args.template)
    core = plain_cfn(template)
    if args.print_template:
        print(json.dumps(core, indent=2))
        return 0
    region = "us-east-1"
    kw = dict(endpoint_url=args.endpoint, region_name=region,
              aws_access_key_id="test", aws_secret_access_key="test")
    cfn, s3, sqs, cw = (boto3.client(s, **kw) for s in ("cloudformation", "s3", "sqs", "cloudwatch"))

    stack = f"ocr-template-check-{args.stage}"
    values = {
        "StageName": args.stage,
        "JwtIssuer": "https://issuer.example.com",
        "JwtAudience": "ocr-fleet",
        "ArtifactBucket": "ocr-fleet-artifacts-check",
    }
    params = {k: v for k, v in values.items() if k in core.get("Parameters", {})}
    missing = [k for k, v in core.get("Parameters", {}).items() if "Default" not in v and k not in params]
    if missing:
        raise SystemExit(f"check_template: no test value for parameter(s) {missing}")
    cfn.create_stack(StackName=stack, TemplateBody=json.dumps(core),
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()])
    failures: list[str] = []
    try:
        st = wait(cfn, stack, "CREATE")
        if st["StackStatus"] != "CREATE_COMPLETE":
            events = cfn.describe_stack_events(StackName=stack)["StackEvents"][:10]
            detail = "; ".join(f"{e['LogicalResourceId']} {e['ResourceStatus']} {e.get('ResourceStatusReason', '')}"
                               for e in events)
            raise SystemExit(f"stack {st['StackStatus']}: {detail}")
        out = {o["OutputKey"]: o["OutputValue"] for o in st.get("Outputs", [])}
        want = names_for(args.stage, account=LOCAL_ACCOUNT, region=region)
        pairs = [("BucketName", want.bucket),
                 ("UploadEventsExpressQueueUrl", want.upload_events_express),
                 ("UploadEventsBulkQueueUrl", want.upload_events_bulk),
                 ("ExpressQueueUrl", want.express), ("BulkQueueUrl", want.bulk),
                 ("ExpressDeadLetterQueueUrl", f"{want.express}-dlq"),
                 ("BulkDeadLetterQueueUrl", f"{want.bulk}-dlq"),
                 ("UploadEventsDeadLetterQueueUrl", want.upload_events_dlq)]
        for key, name in pairs:
            got = out.get(key, "")
            if got.rsplit("/", 1)[-1] != name:
                failures.append(f"{key}={got!r}, init.py names it {name!r}")
        if not failures:
            failures += check_queues(sqs, out, user_data_settings(template))
            failures += check_bucket(s3, want.bucket)
            failures += check_alarms(cw, args.stage, template_defaults(template), out)
            failures += check_events(s3, sqs, want.bucket, {
                "express": out["UploadEventsExpressQueueUrl"], "bulk": out["UploadEventsBulkQueueUrl"]})
    finally:
        cfn.delete_stack(StackName=stack)
        wait(cfn, stack, "DELETE")
    for f in failures:
        print(f"check_template: {f}", file=sys.stderr)
    if not failures:
        print(f"check_template: stack for stage {args.stage} created from {len(core['Resources'])} core "
              "resources; names match init.py; redrive, visibility, retention, SSE, bucket and alarm "
              "thresholds as intended; S3 events reach their priority's upload-events queue", file=sys.stderr)
    return 1 if failures else 0


def check_queues(sqs, out: dict, worker: dict[str, str]) -> list[str]:
    failures = []
    # queue -> (its visibility timeout, its DLQ, receives before it): both upload-events queues
    # share one DLQ (one sweep, one alarm).
    queues = {"ExpressQueueUrl": (JOB_VISIBILITY_SECS, "ExpressDeadLetterQueueUrl", MAX_RECEIVE_COUNT),
              "BulkQueueUrl": (JOB_VISIBILITY_SECS, "BulkDeadLetterQueueUrl", MAX_RECEIVE_COUNT),
              "UploadEventsExpressQueueUrl": (UPLOAD_EVENTS_VISIBILITY_SECS, "UploadEventsDeadLetterQueueUrl",
                                              UPLOAD_EVENTS_MAX_RECEIVE_COUNT),
              "UploadEventsBulkQueueUrl": (UPLOAD_EVENTS_VISIBILITY_SECS, "UploadEventsDeadLetterQueueUrl",
                                           UPLOAD_EVENTS_MAX_RECEIVE_COUNT)}
    for key, (visibility, dlq_key, want) in queues.items():
        url = out[key]
        a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        dlq = sqs.get_queue_attributes(QueueUrl=out[dlq_key], AttributeNames=["All"])["Attributes"]
        redrive = json.loads(a.get("RedrivePolicy", "{}"))
        if int(redrive.get("maxReceiveCount", 0)) != want:
            failures.append(f"{key}: maxReceiveCount {redrive.get('maxReceiveCount')}, want {want}")
        if redrive.get("deadLetterTargetArn") != dlq["QueueArn"]:
            failures.append(f"{key}: redrives to {redrive.get('deadLetterTargetArn')}, want {dlq['QueueArn']}")
        if int(a["VisibilityTimeout"]) != visibility:
            failures.append(f"{key}: VisibilityTimeout {a['VisibilityTimeout']}, want {visibility}")
        if int(a["MessageRetentionPeriod"]) != QUEUE_RETENTION_SECS:
            failures.append(f"{key}: retention {a['MessageRetentionPeriod']}, want {QUEUE_RETENTION_SECS}")
        if int(dlq["MessageRetentionPeriod"]) != DLQ_RETENTION_SECS:
            failures.append(f"{key} DLQ: retention {dlq['MessageRetentionPeriod']}, want {DLQ_RETENTION_SECS}")
        for name, attrs in ((key, a), (f"{key} DLQ", dlq)):
            if str(attrs.get("SqsManagedSseEnabled", "")).lower() != "true":
                failures.append(f"{name}: SSE-SQS is off")
    # The workers' settings in the launch template's user data must agree with the queues.
    if worker.get("VISIBILITY_TIMEOUT_SECS") != str(JOB_VISIBILITY_SECS):
        failures.append(f"worker VISIBILITY_TIMEOUT_SECS={worker.get('VISIBILITY_TIMEOUT_SECS')}, "
                        f"job queues have {JOB_VISIBILITY_SECS}")
    if worker.get("MAX_ATTEMPTS") != str(MAX_RECEIVE_COUNT):
        failures.append(f"worker MAX_ATTEMPTS={worker.get('MAX_ATTEMPTS')}, queues redrive after {MAX_RECEIVE_COUNT}")
    return failures


def check_bucket(s3, bucket: str) -> list[str]:
    failures = []
    pab = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    if not all(pab.get(k) for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls",
                                    "RestrictPublicBuckets")):
        failures.append(f"bucket public access block incomplete: {pab}")
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    if not enc or enc[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] not in ("AES256", "aws:kms"):
        failures.append(f"bucket not encrypted by default: {enc}")
    return failures


def check_alarms(cw, stage: str, defaults: dict, out: dict) -> list[str]:
    """The alarms and their thresholds, as the template intends them."""
    failures = []
    alarms = {a["AlarmName"]: a for page in cw.get_paginator("describe_alarms").paginate(
        AlarmNamePrefix=f"ocr-{stage}-") for a in page["MetricAlarms"]}
    queue = {k: ("QueueName", v.rsplit("/", 1)[-1]) for k, v in out.items() if k.endswith("QueueUrl")}
    db, proxy = ("DBInstanceIdentifier", f"ocr-{stage}-db"), ("ProxyName", f"ocr-{stage}-db-proxy")
    # name -> (comparison, threshold, the (dimension, value) pairs the alarm watches)
    want = {
        f"ocr-{stage}-express-dlq-new": ("GreaterThanThreshold", 0, [queue["ExpressDeadLetterQueueUrl"]]),
        f"ocr-{stage}-bulk-dlq-new": ("GreaterThanThreshold", 0, [queue["BulkDeadLetterQueueUrl"]]),
        f"ocr-{stage}-upload-events-dlq-new": ("GreaterThanThreshold", 0, [queue["UploadEventsDeadLetterQueueUrl"]]),
        f"ocr-{stage}-express-oldest-message": ("GreaterThanThreshold", float(defaults["ExpressMaxAgeSecs"]),
                                                [queue["ExpressQueueUrl"]]),
        f"ocr-{stage}-queue-depth-high": ("GreaterThanThreshold", float(defaults["ScaleOutQueueDepth"]),
                                          [queue["ExpressQueueUrl"], queue["BulkQueueUrl"]]),
        f"ocr-{stage}-queue-depth-low": ("LessThanThreshold", float(defaults["ScaleInQueueDepth"]),
                                         [queue["ExpressQueueUrl"], queue["BulkQueueUrl"]]),
        f"ocr-{stage}-db-proxy-pinned": ("GreaterThanThreshold", 0, [proxy]),
        f"ocr-{stage}-db-connections-high": ("GreaterThanThreshold",
                                             float(defaults["DatabaseConnectionsAlarmThreshold"]), [db]),
        f"ocr-{stage}-db-cpu-high": ("GreaterThanThreshold", 80, [db]),
        f"ocr-{stage}-db-free-storage-low": ("LessThanThreshold", 5 * 2**30, [db]),
    }
    for name, (op, threshold, dims) in want.items():
        a = alarms.get(name)
        if a is None:
            failures.append(f"alarm {name} missing (have {sorted(alarms)})")
            continue
        if a["ComparisonOperator"] != op or float(a["Threshold"]) != threshold:
            failures.append(f"alarm {name}: {a['ComparisonOperator']} {a['Threshold']}, want {op} {threshold}")
        watched = {(d["Name"], d["Value"]) for d in a.get("Dimensions", [])}
        for m in a.get("Metrics", []):
            watched |= {(d["Name"], d["Value"]) for d in m.get("MetricStat", {}).get("Metric", {}).get("Dimensions", [])}
        if watched != set(dims):
            failures.append(f"alarm {name} watches {sorted(watched)}, want {sorted(dims)}")
    return failures


def check_events(s3, sqs, bucket: str, events_urls: dict[str, str]) -> list[str]:
    """An upload of each priority notifies its own upload-events queue, and only that one."""
    failures = []
    for priority in PRIORITIES:
        s3.put_object(Bucket=bucket, Key=f"uploads/{priority}/check", Body=b"x")
    seen: dict[str, list] = {p: [] for p in PRIORITIES}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(
            any(key == f"uploads/{p}/check" for _, key in seen[p]) for p in PRIORITIES):
        for priority, url in events_urls.items():
            for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                         WaitTimeSeconds=1).get("Messages", []):
                body = json.loads(m["Body"])
                seen[priority] += [(r["eventName"], r["s3"]["object"]["key"]) for r in body.get("Records", [])]
    for priority in PRIORITIES:
        s3.delete_object(Bucket=bucket, Key=f"uploads/{priority}/check")
        want = ("ObjectCreated:Put", f"uploads/{priority}/check")
        if want not in seen[priority]:
            failures.append(f"no ObjectCreated event of uploads/{priority}/ on its upload-events queue "
                            f"(saw {seen[priority]})")
        stray = [e for e in seen[priority] if not e[1].startswith(f"uploads/{priority}/")]
        if stray:
            failures.append(f"the {priority} upload-events queue got another priority's events: {stray}")
    return failures


def wait(cfn, stack: str, op: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            st = cfn.describe_stacks(StackName=stack)["Stacks"][0]
        except cfn.exceptions.ClientError:
            return {"StackStatus": f"{op}_COMPLETE"}  # deleted stacks vanish
        if not st["StackStatus"].endswith("IN_PROGRESS") or time.monotonic() > deadline:
            return st
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
