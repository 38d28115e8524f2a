"""Scaling arithmetic: the template's alarms, thresholds and policies give the intended fleet size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from scaling_model import rules_from_template


@pytest.fixture(scope="module")
def rules(tpl, defaults):
    return rules_from_template(tpl, defaults)


# (visible, in flight, in-service workers) -> desired workers, with the template's defaults
# (MinWorkers 2, MaxWorkers 4, ScaleOutQueueDepth 720, ScaleOutStepQueueDepth 720,
# BacklogPerWorkerTarget 360, ScaleInQueueDepth 90).
TABLE = [
    # idle: scale in one at a time, never below MinWorkers
    (0, 0, 2, 2, "idle at the baseline stays at MinWorkers"),
    (0, 0, 4, 3, "idle at MaxWorkers sheds one worker"),
    (0, 0, 3, 2, "idle sheds down to MinWorkers"),
    (50, 30, 3, 2, "80 outstanding < 90: scale in"),
    (50, 64, 3, 3, "114 outstanding (jobs still in flight) holds the fleet"),
    (0, 256, 4, 4, "a busy fleet with an empty queue is not shrunk under its work"),
    # steady state between the thresholds: hold
    (300, 0, 3, 3, "between thresholds: hold (target tracking never scales in)"),
    (700, 0, 2, 2, "700 waiting: under the scale-out threshold, 350 per worker under target"),
    (720, 0, 2, 2, "exactly at the threshold: no alarm (GreaterThanThreshold)"),
    # scale out
    (721, 0, 2, 3, "just over the threshold: +1 (and target tracking wants 3)"),
    (1000, 0, 3, 4, "breach 280: +1 from the step policy"),
    (1439, 0, 2, 4, "breach 719: step +1, but target tracking wants ceil(1439/360) = 4"),
    (1440, 0, 2, 4, "breach 720: second step, +2"),
    (1500, 0, 2, 4, "a spike adds two workers at once"),
    (5000, 0, 4, 4, "never above MaxWorkers"),
    (5000, 0, 2, 4, "a big spike goes straight to MaxWorkers"),
]


@pytest.mark.parametrize("visible,in_flight,workers,want,why", TABLE, ids=[r[4] for r in TABLE])
def test_desired_capacity(rules, visible, in_flight, workers, want, why):
    assert rules.desired(visible, in_flight, workers) == want, why


def test_target_tracking_alone(tpl, defaults):
    """Target tracking by itself: ceil(visible / BacklogPerWorkerTarget) workers, up only."""
    r = rules_from_template(tpl, defaults)
    assert r.target == 360
    assert not r.target_scale_in
    # Under the step threshold target tracking is what adds workers, e.g. with MinWorkers 1.
    one = type(r)(**{**r.__dict__, "min_size": 1})
    assert one.desired(700, 0, 1) == 2  # 700 per worker > 360: ceil(700/360) = 2
    assert one.desired(100, 0, 1) == 1


def test_scale_in_slower_than_scale_out(rules):
    # Out: 2 one-minute periods, warm-up 600 s; in: 15 periods, one worker per 600 s cooldown.
    assert rules.out_periods < rules.in_periods
    assert rules.in_periods >= 15 and rules.in_cooldown >= 600
    assert rules.in_adjustment == -1
    assert max(s.adjustment for s in rules.out_steps) >= 2


def test_steps_cover_every_breach(rules):
    steps = sorted(rules.out_steps, key=lambda s: s.lower or 0)
    assert steps[0].lower == 0
    assert steps[-1].upper is None
    for a, b in zip(steps, steps[1:]):
        assert a.upper == b.lower


def test_minimum_and_defaults(rules, defaults):
    assert rules.min_size == int(defaults["MinWorkers"]) == 2
    assert rules.max_size == int(defaults["MaxWorkers"]) == 4
    # One simulated day: the fleet never leaves [MinWorkers, MaxWorkers].
    workers = rules.min_size
    for minute in range(24 * 60):
        visible = 2000 if 600 <= minute < 660 else 20
        workers = rules.desired(visible, 0, workers)
        assert rules.min_size <= workers <= rules.max_size


def test_template_defaults_are_the_capacity_plan(defaults):
    """The threshold defaults are what scripts/capacity prints for the seed's T4 (6 images/s, 60 s)."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "capacity"), "--images-per-sec", "6",
                          "--target-latency", "60", "--format", "json"], check=True, capture_output=True, text=True)
    plan = json.loads(out.stdout)["parameters"]
    for key, value in plan.items():
        assert int(defaults[key]) == value, f"template {key}={defaults[key]}, scripts/capacity says {value}"
