#!/usr/bin/env bash
# Ship ocr-fleet to AWS: one stack, everything in it (template.yaml).
#   1. sam build: the api and on-upload functions (cargo-lambda, arm64; infra/sam-build.sh)
#   2. the worker artifacts: gpu-worker (release, x86_64 for g4dn, against glibc 2.34 with
#      cargo-zigbuild, CUDA provider on), libonnxruntime + CUDA provider from the onnxruntime-gpu
#      wheel ($ORT_GPU_VERSION, default 1.31.1), the model set (scripts/fetch-models.sh), the
#      systemd unit, bootstrap and agent configs from infra/worker/, and SHA256SUMS; the
#      version is the hash of SHA256SUMS. Unless --no-bundle-cuda: the CUDA 13 runtime, cuBLAS,
#      cuFFT, cuRAND, NVRTC and cuDNN 9 from NVIDIA's wheels, a bundle of its own
#      (content-addressed, uploaded once) that the workers use instead of the AMI's CUDA
#   3. uploads them to s3://<artifact bucket>/<prefix>/worker/<version>/ (creating the private,
#      encrypted artifact bucket ocr-fleet-artifacts-<account>-<region> when none is given)
#   4. sam deploy --stack-name ocr-fleet-<stage> with StageName, ArtifactBucket, ArtifactPrefix,
#      WorkerVersion, WorkerModelSet, CudaLibsVersion (+ --param ones); a new version rolls the workers one by one.
#
# Usage:
#   scripts/deploy.sh [--stage prod] [--config-env default] [--region R] [--artifact-bucket B]
#                     [--artifact-prefix ocr-fleet] [--model-set ppocrv6-small]
#                     [--param Key=Value]... [--capacity "--images-per-sec 6 ..."]
#                     [--no-bundle-cuda] [--skip-build] [--dry-run] [-- extra sam deploy args]
#   scripts/deploy.sh stage-artifacts --worker-binary F --onnxruntime-dir D --models-dir D
#                     --model-set M --out DIR        (step 2's layout only; tests use it)
#   scripts/deploy.sh stage-cuda WHEELS_DIR OUT     (the CUDA bundle from downloaded wheels)
# First deploy of a stage: --param JwtIssuer=https://... --param JwtAudience=... (or `-- --guided`).
# --capacity passes scripts/capacity's thresholds (MinWorkers, MaxWorkers, ScaleOut...) as params.
# --dry-run prints every command instead of running it (no AWS, no build).
# Needs: AWS credentials, the aws CLI, cargo, python3 with pip; .venv/infra comes from infra/setup.sh.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$ROOT"

# onnxruntime-gpu trails the CPU wheel scripts/fetch-models.sh uses (1.32.0 has no GPU build on
# PyPI yet); the engine's ort crate (feature api-31) needs ONNX Runtime 1.31 or newer.
ORT_GPU_VERSION="${ORT_GPU_VERSION:-1.31.1}"
WORKER_TARGET=x86_64-unknown-linux-gnu
# Amazon Linux 2023 (the DLAMI's base) has glibc 2.34.
WORKER_GLIBC=2.34
# pip download --platform takes exact tags: name every manylinux tag an x86_64 wheel may carry.
PIP_PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# stage_artifacts BINARY ORT_DIR MODELS_DIR MODEL_SET OUT: the artifact layout bootstrap.sh expects.
stage_artifacts() {
    local binary=$1 ort_dir=$2 models_dir=$3 model_set=$4 out=$5 f
    [[ -x "$binary" ]] || die "no worker binary at $binary"
    [[ -f "$models_dir/$model_set/manifest.json" ]] || die "model set $model_set not in $models_dir"
    compgen -G "$ort_dir/libonnxruntime.so*" >/dev/null || die "no libonnxruntime.so* in $ort_dir"
    rm -rf "$out"
    mkdir -p "$out/bin" "$out/lib" "$out/systemd"
    install -m 0755 "$binary" "$out/bin/gpu-worker"
    for f in "$ort_dir"/libonnxruntime*.so*; do cp -L "$f" "$out/lib/"; done
    local sets=("$model_set")
    [[ -d "$models_dir/orientation" ]] && sets+=(orientation)
    # Reproducible tarball: the same models give the same hash, so the same WorkerVersion.
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$models_dir" -cf - "${sets[@]}" |
        gzip -n >"$out/models.tar.gz"
    install -m 0644 infra/worker/ocr-fleet-worker.service "$out/systemd/"
    install -m 0755 infra/worker/bootstrap.sh "$out/bootstrap.sh"
    install -m 0644 infra/worker/amazon-cloudwatch-agent.json infra/worker/logrotate.conf "$out/"
    local files
    files=$(cd "$out" && find . -type f -printf '%P\n' | LC_ALL=C sort)
    (cd "$out" && xargs sha256sum <<<"$files" >SHA256SUMS)
}

# The CUDA libraries onnxruntime-gpu's CUDA provider loads (its `cuda` and `cudnn` extras, plus
# cuBLAS), from NVIDIA's PyPI wheels, so a worker does not depend on the AMI's CUDA version.
CUDA_WHEELS=("nvidia-cuda-runtime~=13.0" "nvidia-cuda-nvrtc~=13.0" "nvidia-cublas~=13.0"
    "nvidia-cufft~=12.0" "nvidia-curand~=10.0" "nvidia-cudnn-cu13~=9.0")

# stage_cuda WHEELS_DIR OUT: every shared library under nvidia/**/lib/ of the nvidia_*.whl in
# WHEELS_DIR, flat in OUT, with SHA256SUMS.
stage_cuda() {
    local wheels=$1 out=$2 files
    rm -rf "$out"
    mkdir -p "$out"
    python3 - "$wheels" "$out" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
n = 0
for whl in sorted(glob.glob(os.path.join(wheels, "nvidia_*.whl"))):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            parts = name.split("/")
            if parts[0] == "nvidia" and len(parts) >= 3 and parts[-2] == "lib" and ".so" in parts[-1]:
                with z.open(name) as src, open(os.path.join(out, parts[-1]), "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                n += 1
if not n:
    sys.exit(f"no NVIDIA libraries in {wheels}")
print(f"cuda: {n} libraries", file=sys.stderr)
PY
    files=$(cd "$out" && find . -type f -printf '%P\n' | LC_ALL=C sort)
    (cd "$out" && xargs sha256sum <<<"$files" >SHA256SUMS)
}

if [[ "${1:-}" == stage-cuda ]]; then
    [[ $# == 3 ]] || die "usage: scripts/deploy.sh stage-cuda WHEELS_DIR OUT"
    stage_cuda "$2" "$3"
    sha256sum "$3/SHA256SUMS" | cut -c1-16
    exit 0
fi

if [[ "${1:-}" == stage-artifacts ]]; then
    shift
    bin="" ort="" models="" set="" out=""
    while (($#)); do
        case $1 in
            --worker-binary) bin=$2; shift 2 ;;
            --onnxruntime-dir) ort=$2; shift 2 ;;
            --models-dir) models=$2; shift 2 ;;
            --model-set) set=$2; shift 2 ;;
            --out) out=$2; shift 2 ;;
            *) die "stage-artifacts: unknown argument $1" ;;
        esac
    done
    [[ -n "$bin" && -n "$ort" && -n "$models" && -n "$set" && -n "$out" ]] || die "stage-artifacts needs all of its options"
    stage_artifacts "$bin" "$ort" "$models" "$set" "$out"
    sha256sum "$out/SHA256SUMS" | cut -c1-16
    exit 0
fi

STAGE=prod CONFIG_ENV="" REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}" ARTIFACT_BUCKET="" ARTIFACT_PREFIX=ocr-fleet
MODEL_SET=ppocrv6-small DRY_RUN=0 SKIP_BUILD=0 CAPACITY="" BUNDLE_CUDA=1
PARAMS=() SAM_ARGS=()
while (($#)); do
    case $1 in
        --stage) STAGE=$2; shift 2 ;;
        --config-env) CONFIG_ENV=$2; shift 2 ;;
        --region) REGION=$2; shift 2 ;;
        --artifact-bucket) ARTIFACT_BUCKET=$2; shift 2 ;;
        --artifact-prefix) ARTIFACT_PREFIX=${2%/}; shift 2 ;;
        --model-set) MODEL_SET=$2; shift 2 ;;
        --param) PARAMS+=("$2"); shift 2 ;;
        --capacity) CAPACITY=$2; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --no-bundle-cuda) BUNDLE_CUDA=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; SAM_ARGS=("$@"); break ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ "$STAGE" =~ ^[a-z][a-z0-9-]{0,19}$ ]] || die "bad stage name $STAGE"
if [[ -z "$CONFIG_ENV" ]]; then
    if grep -q "^\[$STAGE\.deploy\.parameters\]" samconfig.toml; then CONFIG_ENV=$STAGE; else CONFIG_ENV=default; fi
fi
STACK="ocr-fleet-$STAGE"

# run CMD...: run it, or print it with --dry-run (with what a shell function does, from DOING).
DOING=""
run() {
    if ((DRY_RUN)); then
        [[ -n "$DOING" ]] && printf '# %s\n' "$DOING"
        DOING=
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

if ((!DRY_RUN)); then
    for t in aws cargo python3 sha256sum tar gzip; do
        command -v "$t" >/dev/null 2>&1 || die "$t not found"
    done
fi
REGION_ARGS=()
[[ -n "$REGION" ]] && REGION_ARGS=(--region "$REGION")
WORK="$RUN_DIR/deploy-$STAGE"
log "deploying stage $STAGE (stack $STACK, samconfig env $CONFIG_ENV)$( ((DRY_RUN)) && echo ' [dry run]')"

# ------------------------------------------------------------------ 1. functions
if ((!SKIP_BUILD)); then
    run "$ROOT/infra/sam-build.sh" --config-env "$CONFIG_ENV"
fi

# ------------------------------------------------------------------ 2. worker artifacts
WORKER_BIN_DIR="$OCR_FLEET_CACHE/target-worker/$WORKER_TARGET/release"
if ((!SKIP_BUILD)); then
    run "$ROOT/infra/setup.sh"
    if ((DRY_RUN)) || [[ -x "$ROOT/.venv/infra/bin/cargo-zigbuild" ]]; then
        run env PATH="$ROOT/.venv/infra/bin:$PATH" CARGO_TARGET_DIR="$OCR_FLEET_CACHE/target-worker" \
            cargo zigbuild --release -p gpu-worker --bin gpu-worker --features cuda \
            --target "$WORKER_TARGET.$WORKER_GLIBC"
    else
        warn "cargo-zigbuild missing: building against this machine's glibc (must be <= $WORKER_GLIBC)"
        run env CARGO_TARGET_DIR="$OCR_FLEET_CACHE/target-worker" \
            cargo build --release -p gpu-worker --bin gpu-worker --features cuda --target "$WORKER_TARGET"
    fi
fi
run "$ROOT/scripts/fetch-models.sh" --quiet

ORT_DIR="$WORK/onnxruntime-gpu"
ort_gpu() {
    local wheels="$OCR_FLEET_CACHE/wheels" whl
    mkdir -p "$wheels" "$ORT_DIR"
    whl=$(compgen -G "$wheels/onnxruntime_gpu-$ORT_GPU_VERSION-*.whl" | head -n 1 || true)
    if [[ -z "$whl" ]]; then
        python3 -m pip download -q --no-deps --only-binary=:all: "${PIP_PLATFORMS[@]}" \
            --python-version 3.12 -d "$wheels" "onnxruntime-gpu==$ORT_GPU_VERSION"
        whl=$(compgen -G "$wheels/onnxruntime_gpu-$ORT_GPU_VERSION-*.whl" | head -n 1)
    fi
    # libonnxruntime.so.<v> plus the CUDA/shared providers it loads from its own folder.
    python3 - "$whl" "$ORT_DIR" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/lib") and ".so" in n
             and ("libonnxruntime.so" in n or "providers_cuda" in n or "providers_shared" in n)]
    if not any("libonnxruntime.so" in n for n in names):
        sys.exit(f"{whl} has no libonnxruntime.so")
    for n in names:
        with z.open(n) as src, open(os.path.join(out, os.path.basename(n)), "wb") as dst:
            dst.write(src.read())
        print("ort-gpu:", os.path.basename(n), file=sys.stderr)
PY
}
DOING="pip download onnxruntime-gpu==$ORT_GPU_VERSION (manylinux_2_28_x86_64); extract libonnxruntime.so*, libonnxruntime_providers_{cuda,shared}.so into $ORT_DIR"
run ort_gpu

ARTIFACT_DIR="$WORK/artifact"
DOING="lay out bin/gpu-worker, lib/, models.tar.gz ($MODEL_SET + orientation), systemd/, bootstrap.sh, agent and logrotate configs, SHA256SUMS"
run stage_artifacts "$WORKER_BIN_DIR/gpu-worker" "$ORT_DIR" "${OCR_MODEL_DIR:-$ROOT/models}" "$MODEL_SET" "$ARTIFACT_DIR"
if ((DRY_RUN)); then
    VERSION="<sha256(SHA256SUMS):16>"
else
    VERSION=$(sha256sum "$ARTIFACT_DIR/SHA256SUMS" | cut -c1-16)
fi
log "worker artifact version $VERSION"

CUDA_VERSION=""
if ((BUNDLE_CUDA)); then
    CUDA_WHEEL_DIR="$OCR_FLEET_CACHE/wheels/cuda13"
    run mkdir -p "$CUDA_WHEEL_DIR"
    run python3 -m pip download -q --no-deps --only-binary=:all: "${PIP_PLATFORMS[@]}" \
        --python-version 3.12 -d "$CUDA_WHEEL_DIR" "${CUDA_WHEELS[@]}"
    DOING="extract the NVIDIA libraries (nvidia/**/lib/*.so*) into $WORK/cuda, write SHA256SUMS"
    run stage_cuda "$CUDA_WHEEL_DIR" "$WORK/cuda"
    if ((DRY_RUN)); then
        CUDA_VERSION="<sha256(cuda/SHA256SUMS):16>"
    else
        CUDA_VERSION=$(sha256sum "$WORK/cuda/SHA256SUMS" | cut -c1-16)
    fi
    log "CUDA bundle version $CUDA_VERSION"
fi

# ------------------------------------------------------------------ 3. upload
ensure_artifact_bucket() {
    local b=$1
    if aws "${REGION_ARGS[@]}" s3api head-bucket --bucket "$b" 2>/dev/null; then return 0; fi
    log "creating artifact bucket $b"
    local region=${REGION:-$(aws configure get region)}
    if [[ "$region" == us-east-1 ]]; then
        aws s3api create-bucket --region us-east-1 --bucket "$b"
    else
        aws s3api create-bucket --region "$region" --bucket "$b" --create-bucket-configuration "LocationConstraint=$region"
    fi
    aws "${REGION_ARGS[@]}" s3api put-public-access-block --bucket "$b" --public-access-block-configuration \
        BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
    aws "${REGION_ARGS[@]}" s3api put-bucket-encryption --bucket "$b" --server-side-encryption-configuration \
        '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"}}]}'
}
if [[ -z "$ARTIFACT_BUCKET" ]]; then
    if ((DRY_RUN)); then
        ARTIFACT_BUCKET="ocr-fleet-artifacts-<account>-${REGION:-<region>}"
    else
        account=$(aws "${REGION_ARGS[@]}" sts get-caller-identity --query Account --output text)
        ARTIFACT_BUCKET="ocr-fleet-artifacts-$account-${REGION:-$(aws configure get region)}"
    fi
fi
DOING="create the artifact bucket if missing: private (public access block), SSE-S3"
run ensure_artifact_bucket "$ARTIFACT_BUCKET"
run aws "${REGION_ARGS[@]}" s3 sync --only-show-errors --delete "$ARTIFACT_DIR/" \
    "s3://$ARTIFACT_BUCKET/$ARTIFACT_PREFIX/worker/$VERSION/"
upload_cuda() { # content-addressed: uploaded once per CUDA bundle, not per worker version
    local dest="s3://$ARTIFACT_BUCKET/$ARTIFACT_PREFIX/worker/cuda/$CUDA_VERSION"
    if aws "${REGION_ARGS[@]}" s3 ls "$dest/SHA256SUMS" >/dev/null 2>&1; then
        log "CUDA bundle $CUDA_VERSION already uploaded"
    else
        aws "${REGION_ARGS[@]}" s3 sync --only-show-errors "$WORK/cuda/" "$dest/"
    fi
}
if [[ -n "$CUDA_VERSION" ]]; then
    DOING="upload $WORK/cuda to worker/cuda/$CUDA_VERSION/ unless already there"
    run upload_cuda
fi

# ------------------------------------------------------------------ 4. deploy
OVERRIDES=("StageName=$STAGE" "ArtifactBucket=$ARTIFACT_BUCKET" "ArtifactPrefix=$ARTIFACT_PREFIX"
    "WorkerVersion=$VERSION" "WorkerModelSet=$MODEL_SET" "CudaLibsVersion=$CUDA_VERSION")
if [[ -n "$CAPACITY" ]]; then
    # shellcheck disable=SC2206 # word splitting of the capacity arguments is intended
    cap_args=($CAPACITY)
    read -r -a cap_params <<<"$("$ROOT/scripts/capacity" "${cap_args[@]}" --format params)"
    OVERRIDES+=("${cap_params[@]}")
fi
OVERRIDES+=(${PARAMS[@]+"${PARAMS[@]}"})
run env PATH="$ROOT/.venv/infra/bin:$PATH" SAM_CLI_TELEMETRY=0 \
    sam deploy --config-env "$CONFIG_ENV" --stack-name "$STACK" "${REGION_ARGS[@]}" \
    --capabilities CAPABILITY_IAM --parameter-overrides "${OVERRIDES[@]}" ${SAM_ARGS[@]+"${SAM_ARGS[@]}"}
log "done: see the stack outputs (ApiUrl, DashboardUrl, ...): aws cloudformation describe-stacks --stack-name $STACK"
