"""scripts/deploy.sh before and after `sam deploy`, with a stand-in `aws`: the preflight (G/VT vCPU
quotas split on-demand/spot as the group splits them, Lambda's unreserved concurrency, MaxWorkers
above MinWorkers), the first create (no deletion protection until created, then on; a failed
first create in ROLLBACK_COMPLETE deleted so it can be retried), the pinned AMI, and --rollback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DEPLOY = ROOT / "scripts" / "deploy.sh"
DLAMI = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"

# The stand-in: answers the calls deploy.sh makes from a JSON state, records every call.
AWS_STUB = r'''#!PYTHON
import json, os, sys
state = json.load(open(os.environ["STUB_STATE"]))
args = sys.argv[1:]
with open(os.environ["STUB_CALLS"], "a") as f:
    f.write(json.dumps(args) + "\n")
if args[:1] == ["--region"]:
    args = args[2:]
op = " ".join(args[:2])
opt = {args[i]: args[i + 1] for i in range(2, len(args) - 1) if args[i].startswith("--")}

def fail(msg):
    sys.stderr.write(f"An error occurred: {msg}\n")
    sys.exit(254)

if op == "cloudformation describe-stacks":
    if state.get("stack_status") is None:
        fail(f"Stack with id {opt['--stack-name']} does not exist")
    q = opt["--query"]
    if q.endswith("StackStatus"):
        print(state["stack_status"])
    elif "ResolvedValue" in q:
        for k, v, r in state.get("stack_params", []):
            print(f"{k}\t{v}\t{r}")
    else:
        print("\t".join(k for k, _, _ in state.get("stack_params", [])))
elif op == "service-quotas get-service-quota":
    code = opt["--quota-code"]
    if code not in state.get("quotas", {}):
        fail("NoSuchResourceException")
    print(state["quotas"][code])
elif op == "ec2 describe-instance-types":
    types = args[args.index("--instance-types") + 1:]
    types = types[:next((i for i, t in enumerate(types) if t.startswith("--")), len(types))]
    for t in types:
        print(f"{t}\t{state['vcpus'][t]}")
elif op == "lambda get-account-settings":
    print("\t".join(str(v) for v in state["lambda"]))
elif op == "lambda get-function-concurrency":
    print(state.get("api_reserved", "None"))
elif op == "ssm get-parameter":
    print(state["ssm"][opt["--name"]])
elif op == "lambda get-alias":
    print(state["alias"][opt["--function-name"]])
elif op == "lambda list-versions-by-function":
    print("\t".join(state["versions"][opt["--function-name"]]))
elif op in ("lambda update-alias", "cloudformation delete-stack", "cloudformation wait",
            "cloudformation update-stack"):
    print(opt.get("--function-version", ""))
else:
    fail(f"unexpected call {args}")
'''

SUFFICIENT = {
    "stack_status": None,
    "quotas": {"L-DB2E81BA": "64.0", "L-3819A6DF": "64.0"},
    "vcpus": {"g4dn.xlarge": 4, "g4dn.2xlarge": 8, "g5.xlarge": 4},
    "lambda": [1000, 1000],
    "ssm": {DLAMI: "ami-0123456789abcdef0"},
}


class Deploy:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        stubs = tmp / "bin"
        stubs.mkdir()
        aws = stubs / "aws"
        aws.write_text(AWS_STUB.replace("PYTHON", sys.executable))
        aws.chmod(aws.stat().st_mode | stat.S_IEXEC)
        self.env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_STATE": str(tmp / "state.json"),
                    "STUB_CALLS": str(tmp / "calls")}

    def run(self, state: dict, script: str, overrides=(), dry_run=False):
        """Sources deploy.sh (its functions only) and runs `script` with the given parameters."""
        (self.tmp / "state.json").write_text(json.dumps(state))
        (self.tmp / "calls").write_text("")
        quoted = " ".join("'" + o + "'" for o in overrides)
        prog = (f"source '{DEPLOY}'; STAGE=prod STACK=ocr-fleet-prod DRY_RUN={int(dry_run)}; REGION_ARGS=(); "
                f"USER_OVERRIDES=({quoted}); {script}")
        return subprocess.run(["bash", "-c", prog], env=self.env, capture_output=True, text=True, timeout=60)

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in (self.tmp / "calls").read_text().splitlines()]


@pytest.fixture()
def deploy(tmp_path):
    return Deploy(tmp_path)


def with_(**changes):
    return {**json.loads(json.dumps(SUFFICIENT)), **changes}


# ------------------------------------------------------------------ quotas and concurrency
def test_sufficient_quotas_pass(deploy):
    r = deploy.run(SUFFICIENT, "preflight; echo PASSED")
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stderr
    # The template's defaults: MaxWorkers 4 = 2 on-demand (the base) + 2 spot (100% above it).
    assert "on-demand G/VT quota: 64 vCPUs, need 8" in r.stderr
    assert "spot G/VT quota: 64 vCPUs, need 16" in r.stderr  # spot may get g4dn.2xlarge (8 vCPUs)
    assert "unreserved 1000 + 0 held by ocr-prod-api - 100 = 900 left, need >= 100" in r.stderr


def test_short_on_demand_quota_fails_with_the_numbers(deploy):
    r = deploy.run(with_(quotas={"L-DB2E81BA": "4.0", "L-3819A6DF": "64.0"}), "preflight; echo PASSED")
    assert r.returncode != 0 and "PASSED" not in r.stdout
    assert "on-demand G/VT quota L-DB2E81BA is 4 vCPUs; 2 on-demand g4dn.xlarge workers need 8" in r.stderr
    assert "--quota-code L-DB2E81BA --desired-value 8" in r.stderr
    assert "1 preflight check(s) failed" in r.stderr


def test_short_spot_quota_fails(deploy):
    # A new account's spot G quota is often 0.
    r = deploy.run(with_(quotas={"L-DB2E81BA": "64.0", "L-3819A6DF": "0.0"}), "preflight")
    assert r.returncode != 0
    assert "spot G/VT quota L-3819A6DF is 0 vCPUs; 2 spot workers need up to 16" in r.stderr


def test_split_follows_the_groups_distribution(deploy):
    # 6 workers, 2 on-demand base, 50% spot above it: 2 + ceil(4 x 50%) = 4 on-demand, 2 spot.
    r = deploy.run(with_(quotas={"L-DB2E81BA": "15", "L-3819A6DF": "64"}), "preflight",
                   ["MaxWorkers=6", "SpotSharePercent=50"])
    assert "MaxWorkers 6 = 4 on-demand (OnDemandBaseWorkers 2, then 50% of the rest) + 2 spot" in r.stderr
    assert r.returncode != 0 and "4 on-demand g4dn.xlarge workers need 16" in r.stderr
    # No spot alternative: spot counts the main type only; all on-demand: no spot quota needed.
    r = deploy.run(with_(quotas={"L-DB2E81BA": "64", "L-3819A6DF": "8"}), "preflight",
                   ["SpotAlternativeInstanceType="])
    assert r.returncode == 0, r.stderr
    assert "spot G/VT quota: 8 vCPUs, need 8" in r.stderr
    r = deploy.run(with_(quotas={"L-DB2E81BA": "16"}), "preflight", ["SpotSharePercent=0"])
    assert r.returncode == 0, r.stderr
    assert not any("L-3819A6DF" in c for c in deploy.calls())


def test_lambda_reservation_must_leave_100_unreserved(deploy):
    r = deploy.run(with_(lambda_=None, **{"lambda": [1000, 150]}), "preflight")
    assert r.returncode != 0
    assert "reserving 100 for ocr-prod-api leaves 50, below 100" in r.stderr
    # A new account's limit of 10: nothing can be reserved.
    r = deploy.run(with_(**{"lambda": [10, 10]}), "preflight")
    assert r.returncode != 0 and "allows 10 concurrent executions" in r.stderr
    # A redeploy gives back what the function already holds.
    state = with_(stack_status="UPDATE_COMPLETE", stack_params=[["MaxWorkers", "4", "None"]],
                  api_reserved=100, **{"lambda": [1000, 100]})
    r = deploy.run(state, "prepare_stack; preflight")
    assert r.returncode == 0, r.stderr
    assert "unreserved 100 + 100 held by ocr-prod-api - 100 = 100 left" in r.stderr


def test_max_workers_must_exceed_min_workers(deploy):
    r = deploy.run(SUFFICIENT, "preflight", ["MinWorkers=3", "MaxWorkers=3"])
    assert r.returncode != 0 and "MaxWorkers (3) must be above MinWorkers (3)" in r.stderr
    r = deploy.run(SUFFICIENT, "preflight", ["MinWorkers=4", "MaxWorkers=3"])
    assert r.returncode != 0 and "MaxWorkers (3) must be above MinWorkers (4)" in r.stderr


def test_parameters_come_from_overrides_then_the_stack_then_the_template(deploy):
    state = with_(stack_status="UPDATE_COMPLETE",
                  stack_params=[["MaxWorkers", "8", "None"], ["GpuInstanceType", "g5.xlarge", "None"],
                                ["WorkerAmiId", "ami-0aaaaaaaaaaaaaaaa", "None"]])
    r = deploy.run(state, "prepare_stack; param MaxWorkers; param GpuInstanceType; param MinWorkers",
                   ["GpuInstanceType=g4dn.2xlarge"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["8", "g4dn.2xlarge", "2"]


def test_dry_run_shows_the_checks_without_aws(deploy):
    r = deploy.run(SUFFICIENT, "prepare_stack; preflight", dry_run=True)
    assert r.returncode == 0, r.stderr
    assert deploy.calls() == []  # nothing asked
    out = r.stdout
    for want in ("+ aws cloudformation describe-stacks --stack-name ocr-fleet-prod",
                 "+ aws service-quotas get-service-quota --service-code ec2 --quota-code L-DB2E81BA",
                 "+ aws service-quotas get-service-quota --service-code ec2 --quota-code L-3819A6DF",
                 "on-demand needs 2 x 4 (g4dn.xlarge) = 8 vCPUs", "spot needs 2 x 8",
                 "+ aws lambda get-account-settings", "+ aws lambda get-function-concurrency",
                 f"+ aws ssm get-parameter --name {DLAMI}"):
        assert want in out, want


# ------------------------------------------------------------------ first create, protection, AMI
def overrides_of(out: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith("CREATE_OVERRIDES="))
    return line.split("=", 1)[1].split()


PRINT = "prepare_stack; echo FIRST_CREATE=$FIRST_CREATE; echo CREATE_OVERRIDES=${CREATE_OVERRIDES[*]}"


def test_first_create_runs_without_deletion_protection_and_pins_the_ami(deploy):
    r = deploy.run(SUFFICIENT, PRINT)
    assert r.returncode == 0, r.stderr
    assert "FIRST_CREATE=1" in r.stdout
    assert overrides_of(r.stdout) == ["DatabaseDeletionProtection=false", "WorkerAmiId=ami-0123456789abcdef0"]


def test_protection_is_turned_on_once_created(deploy):
    state = with_(stack_status="CREATE_COMPLETE",
                  stack_params=[["StageName", "prod", "None"], ["DatabaseDeletionProtection", "false", "None"],
                                ["WorkerAmiId", "ami-0123456789abcdef0", "None"]])
    r = deploy.run(state, "FIRST_CREATE=1 WANT_PROTECTION=true; protect_database")
    assert r.returncode == 0, r.stderr
    (update,) = [c for c in deploy.calls() if c[:2] == ["cloudformation", "update-stack"]]
    assert "--use-previous-template" in update
    params = update[update.index("--parameters") + 1:]
    assert params == ["ParameterKey=DatabaseDeletionProtection,ParameterValue=true",
                      "ParameterKey=StageName,UsePreviousValue=true", "ParameterKey=WorkerAmiId,UsePreviousValue=true"]
    assert ["cloudformation", "wait", "stack-update-complete", "--stack-name", "ocr-fleet-prod"] in deploy.calls()
    # A create that did not complete (changeset declined, failed): protection stays off, said so.
    r = deploy.run(with_(stack_status="REVIEW_IN_PROGRESS"), "FIRST_CREATE=1 WANT_PROTECTION=true; protect_database")
    assert r.returncode == 0 and "left off" in r.stderr
    assert not [c for c in deploy.calls() if "update-stack" in c]
    # Not wanted, or not a first create: nothing to do.
    r = deploy.run(state, "FIRST_CREATE=1 WANT_PROTECTION=false; protect_database; FIRST_CREATE=0 WANT_PROTECTION=true; protect_database")
    assert r.returncode == 0 and deploy.calls() == []


def test_later_deploys_pass_protection_explicitly(deploy):
    # sam deploy keeps a parameter's previous value: the first create's "false" must not stick.
    state = with_(stack_status="UPDATE_COMPLETE",
                  stack_params=[["DatabaseDeletionProtection", "false", "None"], ["WorkerAmiId", "ami-0aaaaaaaaaaaaaaaa", "None"]])
    r = deploy.run(state, PRINT)
    assert r.returncode == 0, r.stderr
    assert "FIRST_CREATE=0" in r.stdout
    assert overrides_of(r.stdout) == ["DatabaseDeletionProtection=true"]  # and the AMI stays pinned
    r = deploy.run(state, PRINT, ["DatabaseDeletionProtection=false"])
    assert overrides_of(r.stdout) == ["DatabaseDeletionProtection=false"]


def test_failed_first_create_is_deleted_and_retried(deploy):
    r = deploy.run(with_(stack_status="ROLLBACK_COMPLETE"), PRINT)
    assert r.returncode == 0, r.stderr
    calls = deploy.calls()
    assert ["cloudformation", "delete-stack", "--stack-name", "ocr-fleet-prod"] in calls
    assert ["cloudformation", "wait", "stack-delete-complete", "--stack-name", "ocr-fleet-prod"] in calls
    assert "FIRST_CREATE=1" in r.stdout and "DatabaseDeletionProtection=false" in overrides_of(r.stdout)


@pytest.mark.parametrize("status", ["ROLLBACK_FAILED", "DELETE_FAILED", "UPDATE_ROLLBACK_FAILED", "UPDATE_IN_PROGRESS"])
def test_stuck_stacks_stop_the_deploy_with_advice(deploy, status):
    r = deploy.run(with_(stack_status=status), PRINT)
    assert r.returncode != 0 and status in r.stderr
    assert not [c for c in deploy.calls() if "delete-stack" in c]


def test_ami_bump_is_deliberate(deploy):
    state = with_(stack_status="UPDATE_COMPLETE", stack_params=[["WorkerAmiId", "ami-0aaaaaaaaaaaaaaaa", "None"]])
    r = deploy.run(state, PRINT)
    assert "WorkerAmiId=" not in r.stdout and not [c for c in deploy.calls() if c[:1] == ["ssm"]]
    r = deploy.run(state, "BUMP_AMI=1; " + PRINT)
    assert "WorkerAmiId=ami-0123456789abcdef0" in overrides_of(r.stdout)
    assert "ami-0aaaaaaaaaaaaaaaa -> ami-0123456789abcdef0" in r.stderr
    r = deploy.run(state, "BUMP_AMI=1; " + PRINT, ["WorkerAmiId=ami-0bbbbbbbbbbbbbbbb"])
    assert not [o for o in overrides_of(r.stdout) if o.startswith("WorkerAmiId=")]  # --param wins


def test_a_stack_that_followed_latest_keeps_the_ami_it_runs(deploy):
    state = with_(stack_status="UPDATE_COMPLETE", stack_params=[["WorkerAmiId", DLAMI, "ami-0ccccccccccccccccc"]])
    r = deploy.run(state, PRINT)
    assert r.returncode == 0, r.stderr
    assert "WorkerAmiId=ami-0ccccccccccccccccc" in overrides_of(r.stdout)


# ------------------------------------------------------------------ rollback
def test_rollback_points_the_alias_at_the_previous_version(deploy):
    state = with_(alias={"ocr-prod-api": "7", "ocr-prod-on-upload": "3"},
                  versions={"ocr-prod-api": ["$LATEST", "5", "6", "7", "8"], "ocr-prod-on-upload": ["$LATEST", "1", "3"]})
    r = deploy.run(state, "rollback")
    assert r.returncode == 0, r.stderr
    updates = [c for c in deploy.calls() if c[:2] == ["lambda", "update-alias"]]
    assert [(c[c.index("--function-name") + 1], c[c.index("--name") + 1], c[c.index("--function-version") + 1])
            for c in updates] == [("ocr-prod-api", "live", "6"), ("ocr-prod-on-upload", "live", "1")]
    r = deploy.run(state, "ROLLBACK_FUNCTIONS=(api); rollback")
    assert len([c for c in deploy.calls() if c[:2] == ["lambda", "update-alias"]]) == 1


def test_rollback_without_an_earlier_version_fails(deploy):
    state = with_(alias={"ocr-prod-api": "1"}, versions={"ocr-prod-api": ["$LATEST", "1"]})
    r = deploy.run(state, "ROLLBACK_FUNCTIONS=(api); rollback")
    assert r.returncode != 0 and "no version before 1" in r.stderr
    assert not [c for c in deploy.calls() if c[:2] == ["lambda", "update-alias"]]


def test_rollback_command_line(tmp_path):
    r = subprocess.run([str(DEPLOY), "--rollback", "--dry-run", "--function", "api", "--region", "eu-west-1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "+ aws --region eu-west-1 lambda get-alias --function-name ocr-prod-api --name live" in r.stdout
    assert "+ aws --region eu-west-1 lambda update-alias --function-name ocr-prod-api --name live" in r.stdout
    assert "on-upload" not in r.stdout


def test_the_alias_is_the_templates(tpl, transformed):
    """--rollback moves the alias that API Gateway and the SQS event sources call, and the versions
    it moves between are kept."""
    assert "LAMBDA_ALIAS=live" in DEPLOY.read_text()
    assert tpl["Globals"]["Function"]["AutoPublishAlias"] == "live"
    res = transformed["Resources"]
    aliases = {r["Properties"]["FunctionName"]["Ref"]: k for k, r in res.items() if r["Type"] == "AWS::Lambda::Alias"}
    assert set(aliases) == {"ApiFunction", "OnUploadFunction"}
    assert all(res[a]["Properties"]["Name"] == "live" for a in aliases.values())
    for k, r in res.items():
        if r["Type"] == "AWS::Lambda::Version":
            assert r.get("DeletionPolicy") == "Retain", k  # the previous version outlives a deploy
        if r["Type"] == "AWS::Lambda::Permission":
            # API Gateway calls the API's alias; the sweep's schedule calls on-upload's.
            caller = r["Properties"]["Principal"]
            want = "ApiFunction" if caller == "apigateway.amazonaws.com" else "OnUploadFunction"
            assert caller in ("apigateway.amazonaws.com", "events.amazonaws.com"), k
            assert r["Properties"]["FunctionName"] == {"Ref": aliases[want]}, k
    mappings = [r for r in res.values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert len(mappings) == 2  # one per upload-events queue (express, bulk)
    for mapping in mappings:
        assert mapping["Properties"]["FunctionName"] == {"Ref": aliases["OnUploadFunction"]}
    body = json.dumps(res["HttpApi"]["Properties"]["Body"])
    uris = [m for m in __import__("re").findall(r"functions/\$\{(\w+)\}/invocations", body)]
    assert uris and set(uris) == {aliases["ApiFunction"]}, uris
