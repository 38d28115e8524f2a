"""Grafana dashboard and Prometheus scrape config agree with the worker's metrics and the stack."""

from __future__ import annotations

import json
import re

import yaml

from conftest import METRICS_RS, ROOT
from worker_sandbox import bootstrap_constant

GRAFANA = ROOT / "infra" / "grafana" / "ocr-fleet.json"
PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus.yml"
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "")


def exposed_metrics() -> set[str]:
    """Names the worker registers (prometheus-client, prefix `ocr`)."""
    text = METRICS_RS.read_text()
    assert 'with_prefix("ocr")' in text
    names = set(re.findall(r'register\(\s*"([a-z_]+)"', text))
    assert names
    return {"ocr_" + n for n in names}


def test_grafana_queries_use_real_metrics():
    dash = json.loads(GRAFANA.read_text())
    exposed = exposed_metrics()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set()
    for e in exprs:
        for name in re.findall(r"\bocr_[a-z_]+", e):
            base = next((name[: -len(s)] if s else name for s in SUFFIXES if name.endswith(s) and
                         (name[: -len(s)] if s else name) in exposed), None)
            assert base, f"{name} (in {e}) is not a metric the worker exposes ({sorted(exposed)})"
            used.add(base)
    # Every metric of the list is on the dashboard.
    assert used == exposed, exposed - used
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])


def test_prometheus_scrapes_the_workers():
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = cfg["scrape_configs"]
    (sd,) = job["ec2_sd_configs"]
    port = int(bootstrap_constant("METRICS_PORT"))
    assert sd["port"] == port == 9100
    filters = {f["name"]: f["values"] for f in sd["filters"]}
    assert filters["tag:ocr-fleet:role"] == ["worker"]
    assert job["metrics_path"] == "/metrics"
    # The dashboard's `up{job=...}` is this job.
    exprs = [t["expr"] for p in json.loads(GRAFANA.read_text())["panels"] for t in p["targets"]]
    assert any(f'job="{job["job_name"]}"' in e for e in exprs)


def test_worker_tags_match_service_discovery(tpl):
    tags = {t["Key"]: t["Value"] for t in tpl["Resources"]["WorkerGroup"]["Properties"]["Tags"]}
    assert tags["ocr-fleet:role"] == "worker"
    assert "ocr-fleet:stage" in tags  # -> __meta_ec2_tag_ocr_fleet_stage -> label stage
    assert "__meta_ec2_tag_ocr_fleet_stage" in PROMETHEUS.read_text()
