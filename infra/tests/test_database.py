"""The database holds up behind RDS Proxy: one connection per function environment, capped
function concurrency, a proxy pool sized by the connection arithmetic, borrows that give up
inside the API's timeout, and alarms on pinning, connections, CPU and storage."""

from __future__ import annotations

import math
import re

import pytest

from conftest import MYSQL_RS, ROOT, num, resolve, resources_of
from worker_sandbox import bootstrap_constant

# RDS for MariaDB (as for MySQL): max_connections = {DBInstanceClassMemory/12582880}. DBInstanceClassMemory is the
# class's memory less what RDS keeps for the OS and its own processes, so the real value is below
# the ceiling; the planning figure is what a 4 GiB class reports (312). Add a class here when the
# template's default changes.
CLASS_MEMORY_GIB = {"db.t4g.medium": 4}
PLANNING_MAX_CONNECTIONS = {"db.t4g.medium": 312}


def props(tpl, rid):
    return tpl["Resources"][rid]["Properties"]


# ------------------------------------------------------------------ one connection per environment
def test_functions_hold_one_connection(tpl, transformed):
    assert tpl["Globals"]["Function"]["Environment"]["Variables"]["DB_POOL_MAX"] == "1"
    for rid, r in resources_of(tpl, "AWS::Serverless::Function").items():
        assert "DB_POOL_MAX" not in r["Properties"].get("Environment", {}).get("Variables", {}), rid
    lambdas = resources_of(transformed, "AWS::Lambda::Function")
    assert len(lambdas) == 2
    for rid, r in lambdas.items():
        assert r["Properties"]["Environment"]["Variables"]["DB_POOL_MAX"] == "1", rid


def test_function_concurrency_is_capped(tpl, transformed, defaults):
    api = props(tpl, "ApiFunction")
    assert api["ReservedConcurrentExecutions"] == {"Ref": "ApiReservedConcurrency"}
    assert transformed["Resources"]["ApiFunction"]["Properties"]["ReservedConcurrentExecutions"] == \
        {"Ref": "ApiReservedConcurrency"}
    # on-upload: one cap per upload-events mapping, and no reservation (the caps are its whole
    # concurrency; test_template.py checks which mapping reads which queue).
    assert "ReservedConcurrentExecutions" not in props(tpl, "OnUploadFunction")
    caps = sorted(m["Properties"]["ScalingConfig"]["MaximumConcurrency"]["Ref"]
                  for m in resources_of(transformed, "AWS::Lambda::EventSourceMapping").values())
    assert caps == ["OnUploadBulkMaxConcurrency", "OnUploadExpressMaxConcurrency"]
    # The defaults: well above the peak's needs (README "The connection arithmetic"), and the
    # SQS event source's bounds.
    assert 50 <= int(defaults["ApiReservedConcurrency"]) <= 200
    for cap in caps:
        p = tpl["Parameters"][cap]
        assert int(p["MinValue"]) == 2 and int(p["MaxValue"]) == 1000 and 2 <= int(defaults[cap]) <= 50, cap


def test_waiting_requests_take_at_most_half_the_api_concurrency(tpl, defaults):
    """A waiting GET (`?wait=`) holds an API environment for up to 20 s, so waits are capped across
    every environment (WAIT_MAX_TOTAL, counted in MySQL) at half the reserved concurrency, and one
    caller gets a few of those places (WAIT_MAX_PER_CALLER): one caller's waits never throttle
    everyone's job creation. CloudFormation cannot divide, so ApiMaxWaiting is its own parameter."""
    env = props(tpl, "ApiFunction")["Environment"]["Variables"]
    assert env["WAIT_MAX_TOTAL"] == {"Ref": "ApiMaxWaiting"}
    total, reserved = int(defaults["ApiMaxWaiting"]), int(defaults["ApiReservedConcurrency"])
    assert total * 2 == reserved, (total, reserved)
    assert int(tpl["Parameters"]["ApiMaxWaiting"]["MinValue"]) == 0
    per_caller = int(env["WAIT_MAX_PER_CALLER"])
    assert 1 <= per_caller <= total // 10, (per_caller, total)
    # One name per setting: the code's and the README's.
    config_rs = (ROOT / "functions" / "api" / "src" / "config.rs").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in ("WAIT_MAX_TOTAL", "WAIT_MAX_PER_CALLER"):
        assert f'env = "{name}"' in config_rs, name
        assert f"| `{name}` |" in readme, name
    assert "ApiMaxWaiting" in readme


# ------------------------------------------------------------------ the proxy
def test_borrow_gives_up_inside_the_api_timeout(tpl):
    pool = props(tpl, "DatabaseProxyTargetGroup")["ConnectionPoolConfigurationInfo"]
    borrow = int(pool["ConnectionBorrowTimeout"])
    for fn in ("ApiFunction", "OnUploadFunction"):
        timeout = int(props(tpl, fn).get("Timeout", tpl["Globals"]["Function"]["Timeout"]))
        # Time left after a failed borrow to answer 503 + Retry-After (or report the batch item).
        assert 1 <= borrow <= timeout / 2, (fn, borrow, timeout)


def test_proxy_pool_and_idle_clients(tpl):
    proxy = props(tpl, "DatabaseProxy")
    pool = props(tpl, "DatabaseProxyTargetGroup")["ConnectionPoolConfigurationInfo"]
    assert 0 < int(pool["MaxIdleConnectionsPercent"]) < int(pool["MaxConnectionsPercent"]) <= 90
    # Lambda: long enough for a warm environment's gaps, short enough to drop reaped ones.
    assert 300 <= int(proxy["IdleClientTimeout"]) <= 1800


def test_no_session_state_needed(tpl):
    """No InitQuery: nothing needs session state. The times are epoch milliseconds (the comment on
    the target group says so), so no column depends on the session's time zone."""
    assert "InitQuery" not in props(tpl, "DatabaseProxyTargetGroup")
    text = MYSQL_RS.read_text()
    migrations = text.split("const MIGRATIONS", 1)[1].split("];", 1)[0]
    assert not re.search(r"\b(DATETIME|TIMESTAMP)\b", migrations, re.I), "a time column the session zone would shift"
    assert re.findall(r"\b\w+_ms BIGINT", migrations)


def test_connection_arithmetic(tpl, defaults):
    """Client connections into the proxy at the caps fit the proxy's share of max_connections, and
    the connections alarm sits between the two."""
    worker_pool = int(bootstrap_constant("DB_POOL_MAX"))
    function_pool = int(tpl["Globals"]["Function"]["Environment"]["Variables"]["DB_POOL_MAX"])
    # A rolling update or a capacity rebalance runs one worker beyond MaxWorkers for a while.
    workers = (int(defaults["MaxWorkers"]) + 1) * worker_pool
    functions = sum(int(defaults[p]) for p in ("ApiReservedConcurrency", "OnUploadExpressMaxConcurrency",
                                              "OnUploadBulkMaxConcurrency"))
    clients = workers + functions * function_pool
    cls = defaults["DatabaseInstanceClass"]
    ceiling = math.floor(CLASS_MEMORY_GIB[cls] * 2**30 / 12582880)
    planning = PLANNING_MAX_CONNECTIONS[cls]
    assert (ceiling, planning) == (341, 312)
    pct = int(props(tpl, "DatabaseProxyTargetGroup")["ConnectionPoolConfigurationInfo"]["MaxConnectionsPercent"])
    budget = planning * pct // 100
    assert (worker_pool, workers, clients, budget) == (4, 20, 135, 249)
    assert clients < budget
    threshold = int(defaults["DatabaseConnectionsAlarmThreshold"])
    assert clients < threshold < budget, (clients, threshold, budget)


# ------------------------------------------------------------------ alarms
def alarm(tpl, rid):
    a = props(tpl, rid)
    assert a["AlarmActions"] == [{"Ref": "AlarmTopic"}] and a["OKActions"] == [{"Ref": "AlarmTopic"}], rid
    assert a["Namespace"] == "AWS/RDS", rid
    (dim,) = a["Dimensions"]
    return a, dim


def test_alarm_dimensions_name_the_stacks_database_and_proxy(tpl):
    db_id = props(tpl, "Database")["DBInstanceIdentifier"]
    proxy_name = props(tpl, "DatabaseProxy")["DBProxyName"]
    for rid in ("DatabaseConnectionsAlarm", "DatabaseCpuAlarm", "DatabaseStorageAlarm"):
        _, dim = alarm(tpl, rid)
        assert dim == {"Name": "DBInstanceIdentifier", "Value": db_id}, rid
    _, dim = alarm(tpl, "DatabaseProxyPinnedAlarm")
    assert dim == {"Name": "ProxyName", "Value": proxy_name}


def test_pinning_alarm(tpl):
    a, _ = alarm(tpl, "DatabaseProxyPinnedAlarm")
    assert a["MetricName"] == "DatabaseConnectionsCurrentlySessionPinned"
    assert a["ComparisonOperator"] == "GreaterThanThreshold" and num(a["Threshold"], {}) == 0
    # Sustained, not a worker's migration lock at start: at least 5 minutes.
    assert int(a["Period"]) * int(a["DatapointsToAlarm"]) >= 300
    assert a["DatapointsToAlarm"] == a["EvaluationPeriods"]


def test_connections_cpu_and_storage_alarms(tpl, defaults):
    a, _ = alarm(tpl, "DatabaseConnectionsAlarm")
    assert a["MetricName"] == "DatabaseConnections" and a["ComparisonOperator"] == "GreaterThanThreshold"
    assert a["Threshold"] == {"Ref": "DatabaseConnectionsAlarmThreshold"}
    a, _ = alarm(tpl, "DatabaseCpuAlarm")
    assert a["MetricName"] == "CPUUtilization" and a["ComparisonOperator"] == "GreaterThanThreshold"
    assert 60 <= num(a["Threshold"], defaults) <= 90
    assert int(a["Period"]) * int(a["DatapointsToAlarm"]) >= 600
    a, _ = alarm(tpl, "DatabaseStorageAlarm")
    assert a["MetricName"] == "FreeStorageSpace" and a["ComparisonOperator"] == "LessThanThreshold"
    assert a["Statistic"] == "Minimum"
    threshold = num(a["Threshold"], defaults)
    smallest = int(tpl["Parameters"]["DatabaseAllocatedStorageGiB"]["MinValue"]) * 2**30
    # At or under storage autoscaling's trigger (10% free): the alarm means autoscaling failed.
    assert 2**30 <= threshold <= smallest / 10
    assert resolve(props(tpl, "Database")["MaxAllocatedStorage"], defaults) >= 10 * int(defaults["DatabaseAllocatedStorageGiB"])


@pytest.mark.parametrize("rid", ["DatabaseProxyPinnedAlarm", "DatabaseConnectionsAlarm", "DatabaseCpuAlarm",
                                 "DatabaseStorageAlarm"])
def test_database_alarm_names_follow_the_stage(tpl, rid):
    assert re.fullmatch(r"ocr-\$\{StageName\}-db-[a-z-]+", props(tpl, rid)["AlarmName"]["Fn::Sub"])
