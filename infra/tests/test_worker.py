"""The worker's instance side: deploy.sh's artifact layout -> user data -> bootstrap.sh -> worker.env
and the systemd unit, run in a sandbox with stand-ins for aws, curl and systemctl."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, UNIT, config_env_names
from worker_sandbox import bootstrap_constant, read_env, run_bootstrap, secret_arn

# Set by the bootstrap for the process, not worker settings of config.rs.
PROCESS_ENV = {"AWS_REGION", "LD_LIBRARY_PATH", "RUST_LOG"}
# Tests only: private webhook receivers, a private CA for the test database (RDS Proxy's is public).
TEST_ONLY = {"WEBHOOK_ALLOW_HOSTS", "DATABASE_CA_FILE"}
# Settings whose default the worker derives from the machine it runs on (a quarter of its memory);
# the bootstrap leaves them unset so that each instance type gets its own.
MACHINE_DEFAULTS = {"DECODED_BUDGET_MB"}
# Engine tuning whose defaults come from the engine or the model set; the bootstrap leaves them
# unset (the worker reads them like the `ocr` tool, should an operator add one).
ENGINE_TUNING = {"OCR_REC_BATCH", "OCR_REC_BATCH_WIDTH", "OCR_REC_WIDTH_STEP", "OCR_REC_MIN_WIDTH",
                 "OCR_REC_SESSIONS", "OCR_DET_SESSIONS", "OCR_DET_UNCLIP_RATIO", "OCR_DET_BOX_THRESH",
                 "OCR_DET_THRESH", "OCR_DET_LIMIT", "OCR_DET_LIMIT_TYPE", "OCR_DET_TALL_LIMIT", "OCR_MIN_CONFIDENCE",
                 "OCR_SPIN"}


def unit_settings(path=UNIT) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z]+)=(.*)$", path.read_text(), re.M))


UNHEALTHY_UNIT = ROOT / "infra" / "worker" / "ocr-fleet-unhealthy.service"
UNHEALTHY = ROOT / "infra" / "worker" / "ocr-fleet-unhealthy.sh"


def test_unit_restarts_and_stops_gracefully():
    u = unit_settings()
    assert u["Restart"] == "always"
    assert u["KillSignal"] == "SIGTERM"
    assert int(u["TimeoutStopSec"]) >= int(bootstrap_constant("SHUTDOWN_GRACE_SECS")) + 10
    assert u["EnvironmentFile"] == "/etc/ocr-fleet/worker.env"
    assert u["ExecStart"] == "/opt/ocr-fleet/bin/gpu-worker"
    assert "PrivateDevices" not in u  # the GPU device nodes must stay visible


def test_a_crash_loop_ends_in_the_unhealthy_handler():
    """Restart=always, but not forever: a crash loop hits the start limit, the unit fails and its
    OnFailure= marks the instance Unhealthy (it used to restart forever: StartLimitIntervalSec=0)."""
    u = unit_settings()
    interval, burst, pause = int(u["StartLimitIntervalSec"]), int(u["StartLimitBurst"]), int(u["RestartSec"])
    assert interval > 0 and 2 <= burst <= 10
    # A worker that dies at start (seconds, plus model loading: allow a minute) hits the limit.
    assert burst * (pause + 60) < interval
    assert u["OnFailure"] == UNHEALTHY_UNIT.name
    h = unit_settings(UNHEALTHY_UNIT)
    assert h["Type"] == "oneshot"
    assert h["ExecStart"] == f"/opt/ocr-fleet/bin/ocr-fleet-unhealthy {UNIT.name}"
    assert "User" not in h  # root: reads stack.env, asks IMDS


def test_gpu_device_nodes_are_made_for_the_unprivileged_worker():
    u = unit_settings()
    assert u["User"] == "ocr-fleet" and u["NoNewPrivileges"] == "true"
    # "+": with full privileges, before the unprivileged ExecStart; the bootstrap's path.
    assert u["ExecStartPre"] == f"+{bootstrap_constant('NVIDIA_MODPROBE')} -u -c=0"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_files_are_valid(tmp_path):
    units = []
    for f in (UNIT, UNHEALTHY_UNIT):
        (tmp_path / f.name).write_text(f.read_text())
        units.append(str(tmp_path / f.name))
    r = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    # The binaries are not installed here; anything else (unknown keys, a missing OnFailure= unit) counts.
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if line.strip() and not re.search(r"Command /(opt/ocr-fleet/bin|usr/bin)/[\w.-]+ is not executable", line)]
    assert not problems, problems


def test_bootstrap_writes_every_worker_setting(sandbox):
    root, env, tmp = sandbox
    r = run_bootstrap(env)
    assert r.returncode == 0, r.stdout + r.stderr
    worker_env = root / "etc" / "ocr-fleet" / "worker.env"
    assert stat.S_IMODE(worker_env.stat().st_mode) == 0o600
    w = read_env(worker_env)
    names = config_env_names()
    assert ENGINE_TUNING <= names, ENGINE_TUNING - names
    assert names - TEST_ONLY - ENGINE_TUNING - MACHINE_DEFAULTS - set(w) == set(), \
        "settings of config.rs the bootstrap does not write"
    assert not MACHINE_DEFAULTS & set(w)
    assert set(w) - names - PROCESS_ENV == set(), "settings the worker does not read"
    assert not TEST_ONLY & set(w)
    assert w["DATABASE_URL"] == ("mysql://ocr_worker@ocr-prod-db-proxy.proxy-abc.us-east-1.rds.amazonaws.com"
                                 ":3306/ocr_fleet?require_ssl=true")
    assert w["DATABASE_PASSWORD"] == secret_arn("WorkerDatabaseSecret") + "#password"
    assert w["WEBHOOK_SECRET"] == secret_arn("WebhookSecret")
    assert w["DB_MIGRATE"] == "true" and w["EC2_LIFECYCLE"] == "true" and w["OCR_PROVIDER"] == "cuda"
    assert w["METRICS_ADDR"] == "0.0.0.0:9100" and w["FLEET_NAME"] == "prod"
    assert w["AUTOSCALING_GROUP_NAME"] == "ocr-prod-workers" and w["LIFECYCLE_HOOK_NAME"] == "ocr-prod-drain"
    assert w["VISIBILITY_TIMEOUT_SECS"] == "30" and w["MAX_ATTEMPTS"] == "3"
    assert w["ORT_DYLIB_PATH"] == "/opt/ocr-fleet/lib/libonnxruntime.so.1.32.0"
    assert w["RESULT_URL_BASE"] == "https://abc123.execute-api.us-east-1.amazonaws.com"
    assert int(w["SHUTDOWN_GRACE_SECS"]) < int(unit_settings()["TimeoutStopSec"])
    # Installed and started; the models unpacked; the stack told.
    assert (root / "opt/ocr-fleet/models/ppocrv6-small/manifest.json").exists()
    assert (root / "etc/systemd/system/ocr-fleet-worker.service").read_text() == UNIT.read_text()
    assert (root / "etc/systemd/system/ocr-fleet-unhealthy.service").read_text() == UNHEALTHY_UNIT.read_text()
    assert os.access(root / "opt/ocr-fleet/bin/ocr-fleet-unhealthy", os.X_OK)
    assert os.access(root / "usr/local/bin/ocr-fleet-dlq", os.X_OK)
    calls = (tmp / "calls").read_text()
    assert "systemctl enable --now ocr-fleet-worker.service" in calls
    assert "systemctl enable --now amazon-ssm-agent.service" in calls  # Session Manager
    # The device nodes before the worker starts.
    assert calls.index("nvidia-modprobe -u -c=0") < calls.index("systemctl enable --now ocr-fleet-worker.service")
    # In service only once healthy: the launching hook completed, then the stack told.
    assert (tmp / "lifecycle").read_text().split() == ["CONTINUE"]
    assert (tmp / "signals").read_text().split() == ["SUCCESS"]


def test_operators_dlq_tool_runs_with_the_workers_settings(sandbox):
    """sudo ocr-fleet-dlq ... on a worker: gpu-worker dlq as the worker's user, with worker.env's
    DATABASE_URL and DATABASE_PASSWORD and the stage's queue names (STAGE)."""
    root, env, tmp = sandbox
    r = run_bootstrap(env)
    assert r.returncode == 0, r.stdout + r.stderr
    fake = root / "opt" / "ocr-fleet" / "bin" / "gpu-worker"
    fake.write_text('#!/bin/bash\necho "args=$*"\necho "STAGE=$STAGE"\necho "DATABASE_URL=$DATABASE_URL"\n'
                    'echo "DATABASE_PASSWORD=$DATABASE_PASSWORD"\necho "LOG_FORMAT=$LOG_FORMAT"\n')
    fake.chmod(0o755)
    out = subprocess.run([str(root / "usr/local/bin/ocr-fleet-dlq"), "redrive", "--queue", "express", "--reset-jobs"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    got = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert got["args"] == "dlq redrive --queue express --reset-jobs"
    assert got["STAGE"] == "prod" and got["LOG_FORMAT"] == "text"
    w = read_env(root / "etc" / "ocr-fleet" / "worker.env")
    # The worker's own database user; its password reference keeps its "#" through the tool.
    assert (got["DATABASE_URL"], got["DATABASE_PASSWORD"]) == (w["DATABASE_URL"], w["DATABASE_PASSWORD"])
    assert got["DATABASE_PASSWORD"].endswith("#password")
    assert "runuser -u ocr-fleet --" in (tmp / "calls").read_text()
    # The tool's STAGE flag is what names the queues ocr-<stage>-<queue>-dlq.
    assert 'env = "STAGE"' in (ROOT / "gpu-worker" / "worker" / "src" / "dlq.rs").read_text()


def without_cuda_bundle(root: Path) -> None:
    f = root / "etc" / "ocr-fleet" / "stack.env"
    f.write_text(re.sub(r"^CUDA_LIBS_URI=.*$", "CUDA_LIBS_URI=", f.read_text(), flags=re.M))


def test_bootstrap_uses_the_cuda_bundle(sandbox):
    root, env, tmp = sandbox
    r = run_bootstrap(env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (root / "opt/ocr-fleet/cuda/libcublasLt.so.13").exists()
    w = read_env(root / "etc" / "ocr-fleet" / "worker.env")
    assert w["LD_LIBRARY_PATH"] == "/opt/ocr-fleet/lib:/opt/ocr-fleet/cuda"


def test_bootstrap_falls_back_to_the_amis_cuda_13(sandbox):
    root, env, tmp = sandbox
    without_cuda_bundle(root)
    for d, has in (("cuda-12.8", False), ("cuda-13.0", True), ("cuda-13.1", False)):
        lib = root / "usr" / "local" / d / "lib64"
        lib.mkdir(parents=True)
        if has:
            (lib / "libcublasLt.so.13").write_bytes(b"elf")
    r = run_bootstrap(env)
    assert r.returncode == 0, r.stdout + r.stderr
    w = read_env(root / "etc" / "ocr-fleet" / "worker.env")
    assert w["LD_LIBRARY_PATH"] == "/opt/ocr-fleet/lib:/usr/local/cuda-13.0/lib64"


def test_bootstrap_fails_without_cuda_13(sandbox):
    root, env, tmp = sandbox
    without_cuda_bundle(root)
    (root / "usr" / "local" / "cuda-12.8" / "lib64").mkdir(parents=True)
    r = run_bootstrap(env)
    assert r.returncode != 0
    assert "no CUDA toolkit with libcublasLt.so.13" in r.stdout
    assert (tmp / "signals").read_text().split() == ["FAILURE"]
    assert (tmp / "lifecycle").read_text().split() == ["ABANDON"]


def test_bootstrap_signals_failure_when_the_worker_never_gets_healthy(sandbox):
    root, env, tmp = sandbox
    r = run_bootstrap(env, SANDBOX_HEALTH_RC="7", OCR_HEALTH_TIMEOUT_SECS="0")
    assert r.returncode != 0
    assert (tmp / "signals").read_text().split() == ["FAILURE"]
    # Never InService: abandoned, so Auto Scaling replaces it rather than counting it.
    assert (tmp / "lifecycle").read_text().split() == ["ABANDON"]


def test_bootstrap_fails_without_gpu_device_nodes(sandbox):
    root, env, tmp = sandbox
    r = run_bootstrap(env, SANDBOX_NO_GPU="1")
    assert r.returncode != 0
    assert "/dev/nvidia0 missing after nvidia-modprobe" in r.stdout
    assert "enable --now ocr-fleet-worker" not in (tmp / "calls").read_text()
    assert (tmp / "lifecycle").read_text().split() == ["ABANDON"]
    (root / "usr" / "bin" / "nvidia-modprobe").unlink()
    r = run_bootstrap(env)
    assert r.returncode != 0 and "no /usr/bin/nvidia-modprobe" in r.stdout


@pytest.mark.parametrize("result,marks", [("start-limit-hit", True), ("exit-code", False), ("success", False)])
def test_unhealthy_handler_acts_only_on_a_crash_loop(sandbox, result, marks):
    root, env, tmp = sandbox
    r = subprocess.run(["bash", str(UNHEALTHY), "ocr-fleet-worker.service"],
                       env={**env, "SANDBOX_UNIT_RESULT": result}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = (tmp / "calls").read_text() if (tmp / "calls").exists() else ""
    assert "systemctl show --property=Result --value ocr-fleet-worker.service" in calls
    health = [line for line in calls.splitlines() if "set-instance-health" in line]
    if marks:
        (call,) = health
        assert ("--instance-id i-0123456789abcdef0 --health-status Unhealthy --no-should-respect-grace-period"
                in call)
        assert call.startswith("aws autoscaling set-instance-health")
    else:
        assert health == []


def test_bootstrap_refuses_tampered_artifacts(sandbox):
    root, env, tmp = sandbox
    art = tmp / "s3" / "artifacts" / "ocr-fleet" / "worker" / "v1"
    (art / "bin" / "gpu-worker").write_text("#!/bin/sh\necho evil\n")
    r = run_bootstrap(env)
    assert r.returncode != 0
    assert (tmp / "signals").read_text().split() == ["FAILURE"]
    assert not (root / "etc" / "ocr-fleet" / "worker.env").exists()


def test_artifacts_are_reproducible(tmp_path):
    models = tmp_path / "m" / "set"
    models.mkdir(parents=True)
    (models / "manifest.json").write_text("{}")
    ort = tmp_path / "ort"
    ort.mkdir()
    (ort / "libonnxruntime.so.1").write_bytes(b"x")
    binary = tmp_path / "bin"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    versions = []
    for out in ("a", "b"):
        r = subprocess.run([str(ROOT / "scripts/deploy.sh"), "stage-artifacts", "--worker-binary", str(binary),
                            "--onnxruntime-dir", str(ort), "--models-dir", str(tmp_path / "m"), "--model-set", "set",
                            "--out", str(tmp_path / out)], check=True, capture_output=True, text=True)
        versions.append(r.stdout.strip())
    assert versions[0] == versions[1] and re.fullmatch(r"[0-9a-f]{16}", versions[0])
    sums = (tmp_path / "a" / "SHA256SUMS").read_text()
    for f in ("bin/gpu-worker", "bin/ocr-fleet-unhealthy", "bin/ocr-fleet-dlq", "lib/libonnxruntime.so.1", "models.tar.gz",
              "systemd/ocr-fleet-worker.service", "systemd/ocr-fleet-unhealthy.service",
              "bootstrap.sh", "amazon-cloudwatch-agent.json", "logrotate.conf"):
        assert f"  {f}\n" in sums, f


def test_cloudwatch_agent_config():
    cfg = json.loads((ROOT / "infra/worker/amazon-cloudwatch-agent.json").read_text())
    files = cfg["logs"]["logs_collected"]["files"]["collect_list"]
    assert {f["file_path"] for f in files} == {"/var/log/ocr-fleet/worker.log", "/var/log/ocr-fleet/bootstrap.log"}
    assert all(f["log_group_name"] == "@LOG_GROUP@" for f in files)
    assert "append:/var/log/ocr-fleet/worker.log" in unit_settings()["StandardOutput"]


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_scripts_pass_shellcheck():
    files = [ROOT / "infra/worker/bootstrap.sh", UNHEALTHY, ROOT / "infra/worker/ocr-fleet-dlq.sh",
             ROOT / "scripts/deploy.sh", ROOT / "infra/setup.sh",
             ROOT / "infra/sam-build.sh", ROOT / "infra/check.sh"]
    subprocess.run(["shellcheck", "-x", *map(str, files)], check=True, cwd=ROOT)
