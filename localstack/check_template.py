#!/usr/bin/env python3
"""Deploy the non-Lambda part of template.yaml to LocalStack's CloudFormation and check it.

LocalStack here has no Docker, so the functions and the HTTP API (the SAM part) are left out;
what is deployed is every plain CloudFormation resource: the bucket with its notification and
policy, the queues, DLQs and the queue policy. Checks that:
  - the stack creates (no dependency cycle; the queue policy admits the bucket, so S3 accepts
    the notification),
  - resource names equal localstack/init.py's names_for(stage) (one naming rule),
  - an object put under uploads/ reaches the upload-events queue as ObjectCreated:Put.
Then deletes the stack. Used by scripts/test.sh; needs .venv/localstack (boto3, cfn-lint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import boto3
from cfnlint.decode import decode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from init import LOCAL_ACCOUNT, names_for  # noqa: E402

SAM_ONLY = {"AWS::Serverless::Function", "AWS::Serverless::HttpApi", "AWS::Logs::LogGroup"}


def plain_cfn(template_path: Path) -> dict:
    tpl, problems = decode(str(template_path))
    if problems:
        raise SystemExit(f"cannot parse {template_path}: {problems}")
    tpl = json.loads(json.dumps(tpl, default=str))
    tpl.pop("Transform", None)
    tpl.pop("Globals", None)
    dropped = {k for k, r in tpl["Resources"].items() if r["Type"] in SAM_ONLY}
    for k in dropped:
        del tpl["Resources"][k]
    for key in list(tpl.get("Outputs", {})):
        if any(d in json.dumps(tpl["Outputs"][key]) for d in dropped):
            del tpl["Outputs"][key]
    return tpl


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--template", default=str(HERE.parent / "template.yaml"))
    p.add_argument("--stage", default=f"chk{os.getpid()}")
    p.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    args = p.parse_args()
    region = "us-east-1"
    kw = dict(endpoint_url=args.endpoint, region_name=region,
              aws_access_key_id="test", aws_secret_access_key="test")
    cfn, s3, sqs = (boto3.client(s, **kw) for s in ("cloudformation", "s3", "sqs"))

    stack = f"ocr-template-check-{args.stage}"
    params = {
        "StageName": args.stage,
        "JwtIssuer": "https://issuer.example.com",
        "JwtAudience": "ocr-fleet",
        "DatabaseSecretArn": f"arn:aws:secretsmanager:{region}:{LOCAL_ACCOUNT}:secret:db-AbCdEf",
    }
    cfn.create_stack(StackName=stack, TemplateBody=json.dumps(plain_cfn(Path(args.template))),
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
        pairs = [("BucketName", want.bucket), ("UploadEventsQueueUrl", want.upload_events),
                 ("ExpressQueueUrl", want.express), ("BulkQueueUrl", want.bulk),
                 ("ExpressDeadLetterQueueUrl", f"{want.express}-dlq"),
                 ("BulkDeadLetterQueueUrl", f"{want.bulk}-dlq"),
                 ("UploadEventsDeadLetterQueueUrl", f"{want.upload_events}-dlq")]
        for key, name in pairs:
            got = out.get(key, "")
            if got.rsplit("/", 1)[-1] != name:
                failures.append(f"{key}={got!r}, init.py names it {name!r}")
        if not failures:
            s3.put_object(Bucket=want.bucket, Key="uploads/bulk/check", Body=b"x")
            seen = []
            deadline = time.monotonic() + 10
            while "ObjectCreated:Put" not in seen and time.monotonic() < deadline:
                for m in sqs.receive_message(QueueUrl=out["UploadEventsQueueUrl"], MaxNumberOfMessages=10,
                                             WaitTimeSeconds=1).get("Messages", []):
                    body = json.loads(m["Body"])
                    seen += [r["eventName"] for r in body.get("Records", [])] or [body.get("Event")]
            if "ObjectCreated:Put" not in seen:
                failures.append(f"no ObjectCreated event on upload-events (saw {seen})")
            s3.delete_object(Bucket=want.bucket, Key="uploads/bulk/check")
    finally:
        cfn.delete_stack(StackName=stack)
        wait(cfn, stack, "DELETE")
    for f in failures:
        print(f"check_template: {f}", file=sys.stderr)
    if not failures:
        print(f"check_template: stack for stage {args.stage} created, names match init.py, "
              "S3 events reach upload-events", file=sys.stderr)
    return 1 if failures else 0


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
