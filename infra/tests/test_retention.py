"""Retention (issue 11): one number, the RetentionDays parameter, is the API's RETENTION_DAYS (older
jobs show as expired), the workers' (they purge older jobs, results and webhook deliveries every
PURGE_INTERVAL_SECS) and the bucket's expiry of uploads/ (the images of those jobs)."""

from __future__ import annotations

from conftest import stack_env
from worker_sandbox import SANDBOX_RETENTION_DAYS, read_env, run_bootstrap

# Where the functions store uploads (uploads/{priority}/{job_id}) and S3 notifies on-upload.
UPLOADS_PREFIX = "uploads/"


def bucket(tpl) -> dict:
    (b,) = [r for r in tpl["Resources"].values() if r["Type"] == "AWS::S3::Bucket"]
    return b["Properties"]


def test_retention_parameter(tpl):
    p = tpl["Parameters"]["RetentionDays"]
    assert p["Type"] == "Number"
    # 7 days by default, like Textract's job results; at least a day, at most ten years.
    assert (int(p["Default"]), int(p["MinValue"]), int(p["MaxValue"])) == (7, 1, 3650)


def test_the_bucket_expires_uploads_after_the_retention(tpl):
    rules = bucket(tpl)["LifecycleConfiguration"]["Rules"]
    prefix_of = lambda r: r.get("Prefix", r.get("Filter", {}).get("Prefix"))  # noqa: E731
    expiring = [r for r in rules if "ExpirationInDays" in r or "ExpirationDate" in r]
    # Outputs too large to answer inline expire after a day: never later than their job, whose
    # retention is at least a day.
    (outputs,) = [r for r in expiring if prefix_of(r) == "outputs/"]
    assert (outputs["Status"], outputs["ExpirationInDays"]) == ("Enabled", 1)
    assert int(tpl["Parameters"]["RetentionDays"]["MinValue"]) >= 1
    # One expiry on exactly the prefix the uploads and their notifications use, from the
    # parameter: never a fixed number of days that could drift from the database's.
    expiring = [r for r in expiring if r is not outputs]
    assert len(expiring) == 1, expiring
    (rule,) = expiring
    assert rule["Status"] == "Enabled"
    prefix = rule.get("Prefix", rule.get("Filter", {}).get("Prefix"))
    assert prefix == UPLOADS_PREFIX
    assert rule["ExpirationInDays"] == {"Ref": "RetentionDays"}
    # The notifications (one per priority, test_template.py) cover nothing but that prefix.
    for notify in bucket(tpl)["NotificationConfiguration"]["QueueConfigurations"]:
        (key_rule,) = notify["Filter"]["S3Key"]["Rules"]
        assert key_rule["Name"] == "prefix" and key_rule["Value"].startswith(UPLOADS_PREFIX), key_rule


def test_the_api_and_the_workers_get_the_same_retention(tpl, transformed):
    api = tpl["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert api["RETENTION_DAYS"] == {"Ref": "RetentionDays"}
    lam = transformed["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert lam["RETENTION_DAYS"] == {"Ref": "RetentionDays"}
    assert stack_env(tpl)["RETENTION_DAYS"] == "${RetentionDays}"
    # Nothing else sets it: one value everywhere.
    assert "RETENTION_DAYS" not in tpl["Globals"]["Function"]["Environment"]["Variables"]


def test_workers_purge_with_the_stacks_retention(sandbox):
    root, env, tmp = sandbox
    r = run_bootstrap(env)
    assert r.returncode == 0, r.stdout + r.stderr
    w = read_env(root / "etc" / "ocr-fleet" / "worker.env")
    assert w["RETENTION_DAYS"] == SANDBOX_RETENTION_DAYS  # the stack's, not a default
    # Small batches often enough that a day's expired jobs never pile up, rarely enough to be
    # no load: every 5 minutes.
    assert int(w["PURGE_INTERVAL_SECS"]) == 300
