"""scripts/capacity never plans a fleet whose rolling update cannot run (MaxWorkers > MinWorkers),
and the template refuses one that would (its RollingUpdateHasRoom rule)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
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
