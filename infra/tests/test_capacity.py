"""scripts/capacity never plans a fleet whose rolling update cannot run (MaxWorkers > MinWorkers),
and the template refuses one that would (its RollingUpdateHasRoom rule)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import json
import subprocess
import sys

import pytest

from conftest import ROOT, broken_rules

CAPACITY = ROOT / "scripts" / "capacity"


def capacity_module():
    loader = importlib.machinery.SourceFileLoader("ocr_capacity", str(CAPACITY))
    spec = importlib.util.spec_from_loader("ocr_capacity", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def params_of(*args: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, str(CAPACITY), *args, "--format", "params"],
                         check=True, capture_output=True, text=True).stdout
    return dict(kv.split("=", 1) for kv in out.split())


def rollout_has_room(p: dict) -> bool:
    return int(p["MaxWorkers"]) > int(p["MinWorkers"])


# 40 images/s per worker is the case that printed MaxWorkers = MinWorkers = 2 (1M/day needs one
# worker even at the peak, the HA floor is 2).
@pytest.mark.parametrize("args", [
    ["--images-per-sec", "40"],
    ["--images-per-sec", "40", "--images-per-day", "100000"],
    ["--images-per-sec", "40", "--min-workers", "1"],
    ["--images-per-sec", "400", "--min-workers", "3"],
    ["--images-per-sec", "6"],
    ["--images-per-sec", "1.33", "--on-demand-base", "0"],
    ["--images-per-sec", "8", "--peak-factor", "1"],
])
def test_the_script_never_prints_max_equal_to_min(tpl, args):
    p = params_of(*args)
    assert rollout_has_room(p), p
    # ... and what it prints passes the template's rules as deploy.sh --capacity passes it.
    assert broken_rules(tpl, p) == [], p


def test_forty_images_per_sec_gets_one_spare_worker():
    p = params_of("--images-per-sec", "40")
    assert (int(p["MinWorkers"]), int(p["MaxWorkers"])) == (2, 3)
    text = subprocess.run([sys.executable, str(CAPACITY), "--images-per-sec", "40"], check=True,
                          capture_output=True, text=True).stdout
    assert "MaxWorkers 3 (MinWorkers + 1: room for a rolling update)" in text


def test_property_over_many_loads():
    plan = capacity_module().plan
    rates = [0.1, 0.5, 1, 1.33, 2.5, 5, 6, 6.04, 8, 12, 20, 40, 100, 1000]
    days = [1_000, 50_000, 1_000_000, 2_000_000, 10_000_000]
    floors = [1, 2, 3, 5]
    peaks = [1.0, 1.5, 2.0, 4.0]
    utils = [0.5, 0.8, 1.0]
    n = 0
    for rate, day, floor, peak, util in itertools.product(rates, days, floors, peaks, utils):
        p = plan(day, rate, peak_factor=peak, utilization=util, min_workers=floor)
        t = p["parameters"]
        assert t["MaxWorkers"] > t["MinWorkers"] >= floor, (rate, day, floor, peak, util, t)
        assert t["MaxWorkers"] >= p["workers_for_peak"], (rate, day, floor, peak, util, t)
        assert t["MinWorkers"] >= p["workers_for_average"]
        n += 1
    assert n > 3000


def test_the_spare_worker_is_not_costed_as_peak_work():
    # The rollout's spare worker only runs during a rollout; the fleet cost counts the peak's.
    plan = capacity_module().plan
    p = plan(1_000_000, 40)
    assert p["parameters"]["MaxWorkers"] == 3
    assert p["fleet_hours_per_day"] == 2 * 24.0


def test_capacity_refuses_a_zero_floor():
    r = subprocess.run([sys.executable, str(CAPACITY), "--images-per-sec", "6", "--min-workers", "0"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "min-workers" in r.stderr


# ------------------------------------------------------------------ the template's rule
def test_template_refuses_max_equal_to_min(tpl):
    assert broken_rules(tpl, {"MinWorkers": "2", "MaxWorkers": "2"}) == ["RollingUpdateHasRoom"]
    assert broken_rules(tpl, {"MinWorkers": "3", "MaxWorkers": "3"}) == ["RollingUpdateHasRoom"]
    assert broken_rules(tpl, {"MinWorkers": "2", "MaxWorkers": "3"}) == []
    assert broken_rules(tpl, {}) == []  # the defaults


def test_template_rule_guards_the_rolling_update(tpl):
    """The rule is about the policy that needs it: MinInstancesInService is MinWorkers, one at a time."""
    g = tpl["Resources"]["WorkerGroup"]
    roll = g["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert roll["MinInstancesInService"] == {"Ref": "MinWorkers"} and int(roll["MaxBatchSize"]) == 1
    assert g["Properties"]["MaxSize"] == {"Ref": "MaxWorkers"}
    # MaxWorkers 1 could never exceed MinWorkers (at least 1): refused by the parameter itself.
    assert int(tpl["Parameters"]["MaxWorkers"]["MinValue"]) == 2
    assert int(tpl["Parameters"]["MinWorkers"]["MinValue"]) == 1


# ------------------------------------------------------------------ instance types side by side
def test_instances_price_cpu_types_beside_the_gpu_one():
    cap = capacity_module()
    rows = cap.instances(["ppocrv6-small", "ppocrv6-small-int8"], "A", 6.0)
    gpu = [r for r in rows if r["kind"] == "gpu"]
    cpu = [r for r in rows if r["kind"] == "cpu"]
    assert [r["instance"] for r in gpu] == ["g4dn.xlarge"] and len(cpu) == 2 * (len(cap.PRICES) - 1)
    assert gpu[0]["images_per_sec"] == 6.0
    # cost per million images while busy = $/h / (images/s x 3600) x 1e6, per instance type
    for r in rows:
        expect = r["on_demand_price_per_hour"] / (r["images_per_sec"] * 3600) * 1e6
        assert abs(r["cost_per_million_busy_on_demand"] - expect) < 1e-9
    # a CPU instance's rate is the measured one-thread rate x cores (x the SMT gain with 2 vCPU/core)
    one = cap.MEASURED["ppocrv6-small"]["A"]
    c7a = next(r for r in cpu if r["instance"] == "c7a.xlarge" and r["model_set"] == "ppocrv6-small")
    c7i = next(r for r in cpu if r["instance"] == "c7i.xlarge" and r["model_set"] == "ppocrv6-small")
    assert abs(c7a["images_per_sec"] - 4 * one) < 1e-9
    assert abs(c7i["images_per_sec"] - 2 * one * cap.SMT_GAIN) < 1e-9
    # the faster (quantized) set is cheaper per image on every CPU type
    for name in {r["instance"] for r in cpu}:
        small, int8 = (next(r for r in cpu if r["instance"] == name and r["model_set"] == m)
                       for m in ("ppocrv6-small", "ppocrv6-small-int8"))
        if cap.MEASURED["ppocrv6-small-int8"]["A"] > one:
            assert int8["cost_per_million_busy_on_demand"] < small["cost_per_million_busy_on_demand"]


def test_instances_cli_text_json_and_price_override():
    text = subprocess.run([sys.executable, str(CAPACITY), "--instances"], check=True,
                          capture_output=True, text=True).stdout
    assert "g4dn.xlarge" in text and "c7i.large" in text and "ppocrv6-small-int8" in text
    out = subprocess.run([sys.executable, str(CAPACITY), "--instances", "--eval-set", "B", "--format", "json",
                          "--price", "c7a.large=0.2:0.1"], check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    c7a = [r for r in rows if r["instance"] == "c7a.large"]
    assert c7a and all(r["on_demand_price_per_hour"] == 0.2 and r["spot_price_per_hour"] == 0.1 for r in c7a)
    bad = subprocess.run([sys.executable, str(CAPACITY), "--instances", "--model-set", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "no measured CPU figure" in bad.stderr
    missing = subprocess.run([sys.executable, str(CAPACITY)], capture_output=True, text=True)
    assert missing.returncode != 0 and "--images-per-sec is required" in missing.stderr
