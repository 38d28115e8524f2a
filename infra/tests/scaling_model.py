"""The fleet's scaling rules, read from template.yaml, as arithmetic.

One evaluation step: given the waiting (visible) and in-flight messages summed over the express
and bulk queues and the in-service workers, the desired capacity Auto Scaling would set:
  - QueueDepthHighAlarm (visible > ScaleOutQueueDepth) runs ScaleOutPolicy's step adjustments on
    the breach (visible - threshold),
  - BacklogPerWorkerPolicy (target tracking) wants ceil(workers x (visible / workers) / target),
    only upward (DisableScaleIn),
  - Auto Scaling takes the largest scale-out; only when none applies does QueueDepthLowAlarm
    (visible + in flight < ScaleInQueueDepth) run ScaleInPolicy,
  - the result stays within the group's MinSize..MaxSize.
The alarms' metric math is checked to be what this model assumes (sums over both queues).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from conftest import num, resolve

_OPS = {
    "GreaterThanThreshold": lambda v, t: v > t,
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


@dataclass(frozen=True)
class Step:
    lower: float | None
    upper: float | None
    adjustment: int


@dataclass(frozen=True)
class Rules:
    min_size: int
    max_size: int
    out_op: str
    out_threshold: float
    out_steps: tuple[Step, ...]
    target: float
    target_scale_in: bool
    in_op: str
    in_threshold: float
    in_adjustment: int
    in_cooldown: int
    out_periods: int
    in_periods: int

    def desired(self, visible: float, in_flight: float, workers: int) -> int:
        proposals = []
        if _OPS[self.out_op](visible, self.out_threshold):
            breach = visible - self.out_threshold
            for s in self.out_steps:
                if (s.lower is None or breach >= s.lower) and (s.upper is None or breach < s.upper):
                    proposals.append(workers + s.adjustment)
        if workers > 0:
            metric = visible / workers
            wanted = math.ceil(workers * metric / self.target - 1e-9)
            if wanted > workers or (self.target_scale_in and wanted < workers):
                proposals.append(wanted)
        if proposals:
            new = max(proposals)
        elif _OPS[self.in_op](visible + in_flight, self.in_threshold):
            new = workers + self.in_adjustment
        else:
            new = workers
        return max(self.min_size, min(self.max_size, new))


def _metric_ids(alarm_props: dict) -> dict[str, tuple[str, str]]:
    """Alarm metric id -> (metric name, queue logical id)."""
    out = {}
    for m in alarm_props["Metrics"]:
        if "MetricStat" in m:
            metric = m["MetricStat"]["Metric"]
            (dim,) = metric["Dimensions"]
            queue = dim["Value"]["Fn::GetAtt"][0]
            out[m["Id"]] = (metric["MetricName"], queue)
    return out


def _expression_terms(alarm_props: dict) -> list[str]:
    (expr,) = [m["Expression"] for m in alarm_props["Metrics"] if m.get("ReturnData", True) and "Expression" in m]
    assert re.fullmatch(r"[a-z_]+( \+ [a-z_]+)*", expr), f"expected a plain sum, got {expr!r}"
    return expr.split(" + ")


def rules_from_template(tpl: dict, defaults: dict) -> Rules:
    res = tpl["Resources"]
    group = res["WorkerGroup"]["Properties"]
    high = res["QueueDepthHighAlarm"]["Properties"]
    low = res["QueueDepthLowAlarm"]["Properties"]
    out = res["ScaleOutPolicy"]["Properties"]
    scale_in = res["ScaleInPolicy"]["Properties"]
    tt = res["BacklogPerWorkerPolicy"]["Properties"]

    # The alarms drive the policies this model says they drive.
    assert high["AlarmActions"] == [{"Ref": "ScaleOutPolicy"}]
    assert low["AlarmActions"] == [{"Ref": "ScaleInPolicy"}]
    for p in (out, scale_in, tt):
        assert p["AutoScalingGroupName"] == {"Ref": "WorkerGroup"}
    # High: visible messages of both job queues; low: visible + in flight of both.
    ids = _metric_ids(high)
    assert sorted(ids[t] for t in _expression_terms(high)) == [
        ("ApproximateNumberOfMessagesVisible", "BulkQueue"), ("ApproximateNumberOfMessagesVisible", "ExpressQueue")]
    ids = _metric_ids(low)
    assert sorted(ids[t] for t in _expression_terms(low)) == [
        ("ApproximateNumberOfMessagesNotVisible", "BulkQueue"), ("ApproximateNumberOfMessagesNotVisible", "ExpressQueue"),
        ("ApproximateNumberOfMessagesVisible", "BulkQueue"), ("ApproximateNumberOfMessagesVisible", "ExpressQueue")]

    assert out["PolicyType"] == "StepScaling" and out["AdjustmentType"] == "ChangeInCapacity"
    steps = tuple(Step(None if "MetricIntervalLowerBound" not in s else num(s["MetricIntervalLowerBound"], defaults),
                       None if "MetricIntervalUpperBound" not in s else num(s["MetricIntervalUpperBound"], defaults),
                       int(s["ScalingAdjustment"])) for s in out["StepAdjustments"])
    assert scale_in["PolicyType"] == "SimpleScaling" and scale_in["AdjustmentType"] == "ChangeInCapacity"
    ttc = tt["TargetTrackingConfiguration"]
    (backlog,) = [m for m in ttc["CustomizedMetricSpecification"]["Metrics"] if m.get("ReturnData")]
    assert backlog["Expression"].replace(" ", "") == "(express+bulk)/workers"
    return Rules(
        min_size=int(num(group["MinSize"], defaults)),
        max_size=int(num(group["MaxSize"], defaults)),
        out_op=high["ComparisonOperator"],
        out_threshold=num(high["Threshold"], defaults),
        out_steps=steps,
        target=num(ttc["TargetValue"], defaults),
        target_scale_in=not resolve(ttc.get("DisableScaleIn", False), defaults),
        in_op=low["ComparisonOperator"],
        in_threshold=num(low["Threshold"], defaults),
        in_adjustment=int(scale_in["ScalingAdjustment"]),
        in_cooldown=int(scale_in["Cooldown"]),
        out_periods=int(high["EvaluationPeriods"]),
        in_periods=int(low["EvaluationPeriods"]),
    )
