#!/usr/bin/env bash
# Ship ocr-fleet to AWS: one stack, everything in it (template.yaml).
#   0. preflight, before anything is built: the stack's state (a failed first create in
#      ROLLBACK_COMPLETE is deleted so it can be retried; a first create runs without database
#      deletion protection and turns it on once created), the worker AMI pinned on a first
#      create, MaxWorkers > MinWorkers, the account's G/VT vCPU quotas (on-demand L-DB2E81BA, spot
#      L-3819A6DF) for MaxWorkers as the group splits them, and Lambda's unreserved concurrency
#      after ApiReservedConcurrency; exits non-zero saying what is short
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
#      WorkerVersion, WorkerModelSet, CudaLibsVersion, DatabaseDeletionProtection (+ --param ones);
#      a new version rolls the workers one by one
#
# Rollback: scripts/deploy.sh --rollback [--stage S] [--function api|on-upload] points the
# functions' `live` alias at their previous published version (both functions unless --function).
#
# Usage:
#   scripts/deploy.sh [--stage prod] [--config-env default] [--region R] [--artifact-bucket B]
#                     [--artifact-prefix ocr-fleet] [--model-set ppocrv6-small]
#                     [--param Key=Value]... [--capacity "--images-per-sec 6 ..."]
#                     [--no-bundle-cuda] [--skip-build] [--bump-ami] [--dry-run] [-- extra sam deploy args]
#   scripts/deploy.sh --rollback [--stage prod] [--region R] [--function api|on-upload]... [--dry-run]
#   scripts/deploy.sh stage-artifacts --worker-binary F --onnxruntime-dir D --models-dir D
#                     --model-set M --out DIR        (step 2's layout only; tests use it)
#   scripts/deploy.sh stage-cuda WHEELS_DIR OUT     (the CUDA bundle from downloaded wheels)
# First deploy of a stage: --param JwtIssuer=https://... --param JwtAudience=... (or `-- --guided`).
# --capacity passes scripts/capacity's thresholds (MinWorkers, MaxWorkers, ScaleOut...) as params.
# --bump-ami moves the workers to the AMI the DLAMI's `latest` parameter names today (a rolling
# update); without it the stack keeps the AMI pinned at its first create (or --param WorkerAmiId=).
# --dry-run prints every command instead of running it (no AWS, no build), the preflight's
# arithmetic included, as for a first create.
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
    # PDFium renders PDF pages; the worker finds it at $OCR_MODEL_DIR/pdfium/libpdfium.so.
    [[ -f "$models_dir/pdfium/libpdfium.so" ]] && sets+=(pdfium)
    # Reproducible tarball: the same models give the same hash, so the same WorkerVersion.
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$models_dir" -cf - "${sets[@]}" |
        gzip -n >"$out/models.tar.gz"
    install -m 0644 infra/worker/ocr-fleet-worker.service infra/worker/ocr-fleet-unhealthy.service "$out/systemd/"
    install -m 0755 infra/worker/ocr-fleet-unhealthy.sh "$out/bin/ocr-fleet-unhealthy"
    install -m 0755 infra/worker/ocr-fleet-dlq.sh "$out/bin/ocr-fleet-dlq"
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

# ------------------------------------------------------------------ before deploying
# What the functions below read; the argument parsing at the end sets them (tests source this
# file, which stops before the parsing, and set them themselves).
STAGE=prod STACK=ocr-fleet-prod DRY_RUN=0
REGION_ARGS=()
# KEY=VALUE template parameters given by --capacity and --param (a later one wins).
USER_OVERRIDES=()
# The stack's current parameters (KEY -> value) when it exists; empty for a first create.
declare -A STACK_PARAMS=() STACK_RESOLVED=() TEMPLATE_DEFAULTS=() VCPUS=()
PREFLIGHT_FAILED=()
# AWS's public parameter of its Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023):
# read once, on a first create or with --bump-ami, never followed by a deploy on its own.
DLAMI_PARAMETER=/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id
# Service Quotas codes (vCPUs, per region): "Running On-Demand G and VT instances" and "All G and
# VT Spot Instance Requests".
QUOTA_ON_DEMAND_G=L-DB2E81BA
QUOTA_SPOT_G=L-3819A6DF
# AWS refuses a reservation that leaves fewer unreserved concurrent executions than this.
LAMBDA_UNRESERVED_FLOOR=100
# The functions' alias (template.yaml AutoPublishAlias): what API Gateway and the SQS mapping call.
LAMBDA_ALIAS=live

# A dry run prints on fd 3, this script's stdout, also from inside $(...) where stdout is captured.
exec 3>&1

# run CMD...: run it, or print it with --dry-run (with what a shell function does, from DOING).
DOING=""
run() {
    if ((DRY_RUN)); then
        [[ -n "$DOING" ]] && printf '# %s\n' "$DOING" >&3
        DOING=
        { printf '+'; printf ' %q' "$@"; printf '\n'; } >&3
    else
        "$@"
    fi
}

# note TEXT: a step's reasoning: logged, or with --dry-run printed among the commands.
note() {
    if ((DRY_RUN)); then printf '# %s\n' "$*" >&3; else log "$*"; fi
}

# ask ARGS...: a read-only `aws ARGS` whose answer a check needs. With --dry-run it prints the
# command and fails (no answer), so callers fall back to showing the arithmetic alone.
ask() {
    if ((DRY_RUN)); then
        { printf '+ aws'; printf ' %q' "${REGION_ARGS[@]}" "$@"; printf '\n'; } >&3
        return 1
    fi
    aws "${REGION_ARGS[@]}" "$@"
}

# stack_status: the stack's status, NONE when it does not exist (a dry run assumes that).
stack_status() {
    local out
    if ((DRY_RUN)); then
        ask cloudformation describe-stacks --stack-name "$STACK" --query 'Stacks[0].StackStatus' --output text || true
        printf 'NONE\n'
        return 0
    fi
    if out=$(aws "${REGION_ARGS[@]}" cloudformation describe-stacks --stack-name "$STACK" \
        --query 'Stacks[0].StackStatus' --output text 2>&1); then
        printf '%s\n' "$out"
    elif [[ "$out" == *"does not exist"* ]]; then
        printf 'NONE\n'
    else
        die "cannot read stack $STACK: $out"
    fi
}

# load_stack_params: STACK_PARAMS (and STACK_RESOLVED, for SSM-typed ones) from the stack.
load_stack_params() {
    local k v r
    while IFS=$'\t' read -r k v r; do
        [[ -n "$k" ]] || continue
        STACK_PARAMS[$k]=$v
        if [[ -n "$r" && "$r" != None ]]; then STACK_RESOLVED[$k]=$r; fi
    done < <(ask cloudformation describe-stacks --stack-name "$STACK" \
        --query 'Stacks[0].Parameters[].[ParameterKey,ParameterValue,ResolvedValue]' --output text || true)
}

# load_template_defaults: TEMPLATE_DEFAULTS from template.yaml's Parameters section.
load_template_defaults() {
    local k v
    while IFS=$'\t' read -r k v; do TEMPLATE_DEFAULTS[$k]=$v; done < <(python3 - "$ROOT/template.yaml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
section = re.search(r"^Parameters:\n(.*?)^\S", text, re.M | re.S).group(1)
for name, body in re.findall(r"^  (\w+):\n((?:    .*\n|\s*\n)*)", section, re.M):
    m = re.search(r"^    Default: *(.*?) *$", body, re.M)
    if m:
        print(f"{name}\t{m.group(1).strip(chr(34))}")
PY
    )
}

# param NAME: the value the deploy will give NAME: --param/--capacity, else the stack's current
# value (sam deploy keeps it), else the template's default.
param() {
    local kv v="" found=0
    for kv in ${USER_OVERRIDES[@]+"${USER_OVERRIDES[@]}"}; do
        if [[ "${kv%%=*}" == "$1" ]]; then v=${kv#*=}; found=1; fi
    done
    if ((!found)) && [[ -n "${STACK_PARAMS[$1]+set}" ]]; then v=${STACK_PARAMS[$1]}; found=1; fi
    if ((found)); then printf '%s\n' "$v"; else template_default "$1"; fi
}

# template_default NAME: NAME's default in template.yaml.
template_default() {
    ((${#TEMPLATE_DEFAULTS[@]})) || load_template_defaults
    [[ -n "${TEMPLATE_DEFAULTS[$1]+set}" ]] || die "template parameter $1 has no default and no value"
    printf '%s\n' "${TEMPLATE_DEFAULTS[$1]}"
}

# given NAME: true when --param or --capacity names NAME.
given() {
    local kv
    for kv in ${USER_OVERRIDES[@]+"${USER_OVERRIDES[@]}"}; do [[ "${kv%%=*}" == "$1" ]] && return 0; done
    return 1
}

# load_vcpus TYPE...: VCPUS[type] from EC2; a dry run reads the size name (xlarge = 4, 2xlarge = 8).
load_vcpus() {
    local t n out
    if out=$(ask ec2 describe-instance-types --instance-types "$@" \
        --query 'InstanceTypes[].[InstanceType,VCpuInfo.DefaultVCpus]' --output text); then
        while IFS=$'\t' read -r t n; do if [[ -n "$t" ]]; then VCPUS[$t]=$n; fi; done <<<"$out"
    else
        ((DRY_RUN)) || die "cannot describe instance types $*"
        for t in "$@"; do
            case ${t#*.} in
                xlarge) VCPUS[$t]=4 ;;
                large) VCPUS[$t]=2 ;;
                *xlarge) n=${t#*.}; n=${n%xlarge}; if [[ "$n" =~ ^[0-9]+$ ]]; then VCPUS[$t]=$((4 * n)); fi ;;
            esac
        done
        note "  (dry run: vCPUs from the size names)"
    fi
    for t in "$@"; do [[ -n "${VCPUS[$t]:-}" ]] || die "no vCPU count for instance type $t"; done
}

# quota CODE: an EC2 quota's value (vCPUs), whole; fails when it cannot be read.
quota() {
    local v
    v=$(ask service-quotas get-service-quota --service-code ec2 --quota-code "$1" --query Quota.Value --output text) ||
        return 1
    [[ "$v" =~ ^[0-9]+(\.[0-9]+)?$ ]] || return 1
    printf '%s\n' "${v%%.*}"
}

# check_worker_bounds: MaxWorkers above MinWorkers (the rolling update's room; the template's
# rule refuses only equality, since Rules cannot compare numbers).
check_worker_bounds() {
    local min max
    min=$(param MinWorkers) max=$(param MaxWorkers)
    note "workers: MinWorkers $min < MaxWorkers $max (the rolling update keeps MinWorkers in service and adds one)"
    ((max > min)) || PREFLIGHT_FAILED+=("MaxWorkers ($max) must be above MinWorkers ($min): the rolling update keeps MinWorkers in service and needs room for one more worker (scripts/capacity prints such a pair)")
}

# check_gpu_quotas: the account's G/VT vCPU quotas cover MaxWorkers, split as the Auto Scaling
# group splits them: the first OnDemandBaseWorkers on-demand, then (100 - SpotSharePercent)% of
# the rest (rounded up, as Auto Scaling rounds in favour of on-demand); on-demand launches
# GpuInstanceType first, spot may get either type, so spot counts the larger.
check_gpu_quotas() {
    local max base spot_pct main alt od spot v_od v_spot need_od need_spot have
    max=$(param MaxWorkers) base=$(param OnDemandBaseWorkers) spot_pct=$(param SpotSharePercent)
    main=$(param GpuInstanceType) alt=$(param SpotAlternativeInstanceType)
    ((base > max)) && base=$max
    od=$((base + ((max - base) * (100 - spot_pct) + 99) / 100))
    spot=$((max - od))
    note "GPU quotas (vCPUs): MaxWorkers $max = $od on-demand (OnDemandBaseWorkers $base, then $((100 - spot_pct))% of the rest) + $spot spot (SpotSharePercent $spot_pct)"
    load_vcpus "$main" ${alt:+"$alt"}
    v_od=${VCPUS[$main]} v_spot=${VCPUS[$main]}
    [[ -n "$alt" ]] && ((VCPUS[$alt] > v_spot)) && v_spot=${VCPUS[$alt]}
    need_od=$((od * v_od)) need_spot=$((spot * v_spot))
    note "  on-demand needs $od x $v_od ($main) = $need_od vCPUs of quota $QUOTA_ON_DEMAND_G (Running On-Demand G and VT instances)"
    check_quota "$QUOTA_ON_DEMAND_G" on-demand "$need_od" "$od on-demand $main workers need $need_od" \
        "lower MaxWorkers / OnDemandBaseWorkers / raise SpotSharePercent. Other G/VT instances in the region share this quota."
    ((spot > 0)) || return 0
    note "  spot needs $spot x $v_spot (the larger of $main${alt:+ and $alt}) = $need_spot vCPUs of quota $QUOTA_SPOT_G (All G and VT Spot Instance Requests)"
    check_quota "$QUOTA_SPOT_G" spot "$need_spot" "$spot spot workers need up to $need_spot" \
        "lower MaxWorkers / SpotSharePercent."
}

# check_quota CODE KIND NEED SHORT REMEDY: the G/VT quota CODE (KIND: on-demand or spot) covers
# NEED vCPUs; otherwise a preflight failure saying SHORT, how to ask for more, or REMEDY.
check_quota() {
    local code=$1 kind=$2 need=$3 short=$4 remedy=$5 have
    if have=$(quota "$code"); then
        log "  $kind G/VT quota: $have vCPUs, need $need"
        ((need <= have)) || PREFLIGHT_FAILED+=("$kind G/VT quota $code is $have vCPUs; $short. Ask for more (aws service-quotas request-service-quota-increase --service-code ec2 --quota-code $code --desired-value $need) or $remedy")
    elif ((!DRY_RUN)); then
        warn "could not read quota $code (servicequotas:GetServiceQuota): $kind capacity not checked"
    fi
}

# check_lambda_concurrency: the API function's reservation leaves the account at least 100
# unreserved concurrent executions (AWS refuses less), and enough for on-upload's caps. A
# redeploy gives back what the function reserves now.
check_lambda_concurrency() {
    local api express bulk upload fn settings limit unreserved held=0 left floor
    api=$(param ApiReservedConcurrency) fn="ocr-$STAGE-api"
    express=$(param OnUploadExpressMaxConcurrency) bulk=$(param OnUploadBulkMaxConcurrency)
    upload=$((express + bulk))
    floor=$LAMBDA_UNRESERVED_FLOOR
    ((upload > floor)) && floor=$upload
    note "Lambda concurrency: unreserved + what $fn holds now - ApiReservedConcurrency $api must stay >= $floor (AWS keeps $LAMBDA_UNRESERVED_FLOOR unreserved; on-upload draws up to OnUploadExpressMaxConcurrency $express + OnUploadBulkMaxConcurrency $bulk = $upload from them)"
    settings=$(ask lambda get-account-settings \
        --query 'AccountLimit.[ConcurrentExecutions,UnreservedConcurrentExecutions]' --output text) || settings=""
    if ((${#STACK_PARAMS[@]} || DRY_RUN)); then
        note "  (a redeploy gives back what $fn reserves now:)"
        held=$(ask lambda get-function-concurrency --function-name "$fn" \
            --query ReservedConcurrentExecutions --output text) || held=0
        [[ "$held" =~ ^[0-9]+$ ]] || held=0
    fi
    if [[ -z "$settings" ]]; then
        ((DRY_RUN)) || warn "could not read the Lambda account settings: concurrency not checked"
        return 0
    fi
    read -r limit unreserved <<<"$settings"
    left=$((unreserved + held - api))
    log "  account limit $limit, unreserved $unreserved + $held held by $fn - $api = $left left, need >= $floor"
    ((left >= floor)) || PREFLIGHT_FAILED+=("Lambda concurrency: the account allows $limit concurrent executions, $unreserved unreserved; reserving $api for $fn leaves $left, below $floor. Ask for a higher \"Concurrent executions\" quota (Service Quotas, AWS Lambda, L-B99A9384) or lower ApiReservedConcurrency.")
}

# preflight: every check above; dies listing what is short (a dry run only shows them).
preflight() {
    PREFLIGHT_FAILED=()
    # Here, not in param's $(...) subshells, which would read the template again each time.
    ((${#TEMPLATE_DEFAULTS[@]})) || load_template_defaults
    check_worker_bounds
    check_gpu_quotas
    check_lambda_concurrency
    if ((${#PREFLIGHT_FAILED[@]})); then
        local f
        for f in "${PREFLIGHT_FAILED[@]}"; do printf '[%s] SHORT: %s\n' "$(date -u +%H:%M:%S)" "$f" >&2; done
        die "stack $STACK not deployed: ${#PREFLIGHT_FAILED[@]} preflight check(s) failed (above)"
    fi
    note "preflight checks passed"
}

# ------------------------------------------------------------------ first create, AMI, protection
# Deletion protection on the database makes a failed first create unrecoverable: the rollback
# cannot delete the protected instance, the stack ends in ROLLBACK_FAILED and must be taken apart
# by hand. So a first create runs with DatabaseDeletionProtection=false and, once the stack is
# CREATE_COMPLETE, protect_database turns it on (the only change of that update); every later
# deploy passes DatabaseDeletionProtection itself (--param, else true), so sam deploy's "previous
# value" never leaves it off by accident. A stack in ROLLBACK_COMPLETE (a failed first create
# holds no resources) is deleted so the create can be retried.
FIRST_CREATE=0 WANT_PROTECTION=true BUMP_AMI=0
CREATE_OVERRIDES=()

# prepare_stack: reads the stack's state; sets FIRST_CREATE, STACK_PARAMS, CREATE_OVERRIDES.
prepare_stack() {
    local status
    ((${#TEMPLATE_DEFAULTS[@]})) || load_template_defaults
    status=$(stack_status)
    ((DRY_RUN)) && note "dry run: assuming stack $STACK does not exist yet (a first create)"
    case $status in
        NONE | REVIEW_IN_PROGRESS) FIRST_CREATE=1 ;;
        ROLLBACK_COMPLETE)
            log "stack $STACK is ROLLBACK_COMPLETE (a failed first create; it holds no resources): deleting it to create it again"
            run aws "${REGION_ARGS[@]}" cloudformation delete-stack --stack-name "$STACK"
            run aws "${REGION_ARGS[@]}" cloudformation wait stack-delete-complete --stack-name "$STACK"
            FIRST_CREATE=1 ;;
        ROLLBACK_FAILED | DELETE_FAILED)
            die "stack $STACK is $status: some resources could not be deleted (aws cloudformation describe-stack-events --stack-name $STACK). Delete the stack (aws cloudformation delete-stack, with --retain-resources for those), remove what it kept, then run this again" ;;
        UPDATE_ROLLBACK_FAILED)
            die "stack $STACK is UPDATE_ROLLBACK_FAILED: aws cloudformation continue-update-rollback --stack-name $STACK, then run this again" ;;
        *_IN_PROGRESS) die "stack $STACK is $status: wait until it finishes" ;;
        *) load_stack_params ;;
    esac
    # Never the stack's previous value: that may be the first create's temporary "false".
    if given DatabaseDeletionProtection; then
        WANT_PROTECTION=$(param DatabaseDeletionProtection)
    else
        WANT_PROTECTION=$(template_default DatabaseDeletionProtection)
    fi
    CREATE_OVERRIDES=()
    if ((FIRST_CREATE)); then
        note "first create of $STACK: DatabaseDeletionProtection=false until it is CREATE_COMPLETE (a failed create then rolls back cleanly), then $WANT_PROTECTION"
        CREATE_OVERRIDES+=("DatabaseDeletionProtection=false")
    else
        CREATE_OVERRIDES+=("DatabaseDeletionProtection=$WANT_PROTECTION")
    fi
    pin_ami
}

# pin_ami: WorkerAmiId is a concrete AMI id the stack keeps (a new AMI means a new NVIDIA driver,
# so it changes only on purpose): resolved from DLAMI_PARAMETER on a first create or with
# --bump-ami; a stack from before the pin keeps the AMI its parameter resolves to today.
pin_ami() {
    local ami
    given WorkerAmiId && return 0
    if ((FIRST_CREATE || BUMP_AMI)); then
        note "WorkerAmiId: the AMI $DLAMI_PARAMETER names today, pinned in the stack from now on"
        ami=$(ask ssm get-parameter --name "$DLAMI_PARAMETER" --query Parameter.Value --output text) ||
            ami="<ami-id of $DLAMI_PARAMETER>"
        ((DRY_RUN)) || [[ "$ami" =~ ^ami-[0-9a-f]+$ ]] || die "no AMI id in $DLAMI_PARAMETER: $ami"
        if ((BUMP_AMI)) && [[ "${STACK_PARAMS[WorkerAmiId]:-}" == "$ami" ]]; then
            log "WorkerAmiId is already $ami"
        elif ((BUMP_AMI)); then
            log "WorkerAmiId ${STACK_PARAMS[WorkerAmiId]:-?} -> $ami: the workers roll to the new AMI one by one"
        fi
        CREATE_OVERRIDES+=("WorkerAmiId=$ami")
    elif [[ "${STACK_PARAMS[WorkerAmiId]:-}" == /* ]]; then
        ami=${STACK_RESOLVED[WorkerAmiId]:-}
        [[ "$ami" =~ ^ami-[0-9a-f]+$ ]] || die "stack $STACK follows ${STACK_PARAMS[WorkerAmiId]} but no AMI id was resolved from it; pass --param WorkerAmiId=ami-..."
        log "WorkerAmiId: pinning $ami, the AMI the workers run now (the stack followed ${STACK_PARAMS[WorkerAmiId]})"
        CREATE_OVERRIDES+=("WorkerAmiId=$ami")
    fi
}

# protect_database: after a first create, turn on the deletion protection the create ran without,
# changing nothing else (the template and every other parameter as they are).
protect_database() {
    local status keys k params=()
    ((FIRST_CREATE)) && [[ "$WANT_PROTECTION" == true ]] || return 0
    if ((!DRY_RUN)); then
        status=$(stack_status)
        if [[ "$status" != CREATE_COMPLETE ]]; then
            warn "stack $STACK is $status, not CREATE_COMPLETE: database deletion protection left off; the next scripts/deploy.sh turns it on"
            return 0
        fi
        keys=$(ask cloudformation describe-stacks --stack-name "$STACK" --query 'Stacks[0].Parameters[].ParameterKey' --output text)
    else
        keys="<each-other-parameter>"
    fi
    for k in $keys; do
        [[ "$k" == DatabaseDeletionProtection ]] || params+=("ParameterKey=$k,UsePreviousValue=true")
    done
    note "the stack is created: turning on the database's deletion protection (DatabaseDeletionProtection=true, nothing else changes)"
    run aws "${REGION_ARGS[@]}" cloudformation update-stack --stack-name "$STACK" --use-previous-template \
        --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND \
        --parameters ParameterKey=DatabaseDeletionProtection,ParameterValue=true "${params[@]}"
    run aws "${REGION_ARGS[@]}" cloudformation wait stack-update-complete --stack-name "$STACK"
}

# ------------------------------------------------------------------ rollback
ROLLBACK_FUNCTIONS=()

# rollback_function NAME: points NAME's alias at the newest published version before the one it
# serves now (Lambda keeps every version SAM published).
rollback_function() {
    local fn="ocr-$STAGE-$1" current versions prev
    if ((DRY_RUN)); then
        ask lambda get-alias --function-name "$fn" --name "$LAMBDA_ALIAS" --query FunctionVersion --output text || true
        ask lambda list-versions-by-function --function-name "$fn" --query 'Versions[].Version' --output text || true
        note "the newest numbered version below the alias's becomes $LAMBDA_ALIAS:"
        run aws "${REGION_ARGS[@]}" lambda update-alias --function-name "$fn" --name "$LAMBDA_ALIAS" --function-version "<previous>"
        return 0
    fi
    current=$(ask lambda get-alias --function-name "$fn" --name "$LAMBDA_ALIAS" --query FunctionVersion --output text)
    versions=$(ask lambda list-versions-by-function --function-name "$fn" --query 'Versions[].Version' --output text)
    prev=$(tr -s '[:space:]' '\n' <<<"$versions" | grep -E '^[0-9]+$' | sort -n |
        awk -v c="$current" '$1 < c + 0' | tail -n 1 || true)
    [[ -n "$prev" ]] || die "$fn: no version before $current to roll back to"
    ask lambda update-alias --function-name "$fn" --name "$LAMBDA_ALIAS" --function-version "$prev" \
        --query FunctionVersion --output text >/dev/null
    log "$fn: $LAMBDA_ALIAS $current -> $prev"
}

rollback() {
    local f
    ((${#ROLLBACK_FUNCTIONS[@]})) || ROLLBACK_FUNCTIONS=(api on-upload)
    for f in "${ROLLBACK_FUNCTIONS[@]}"; do rollback_function "$f"; done
    log "rolled back. The next scripts/deploy.sh points $LAMBDA_ALIAS at the version it publishes (a new one only when the code or configuration changed); the database schema and the workers stay as they are"
}

# Sourced (infra/tests): the functions only.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

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

CONFIG_ENV="" REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}" ARTIFACT_BUCKET="" ARTIFACT_PREFIX=ocr-fleet
MODEL_SET=ppocrv6-small SKIP_BUILD=0 CAPACITY="" BUNDLE_CUDA=1 ROLLBACK=0
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
        --bump-ami) BUMP_AMI=1; shift ;;
        --rollback) ROLLBACK=1; shift ;;
        --function)
            [[ "$2" == api || "$2" == on-upload ]] || die "--function is api or on-upload"
            ROLLBACK_FUNCTIONS+=("$2"); shift 2 ;;
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
REGION_ARGS=()
[[ -n "$REGION" ]] && REGION_ARGS=(--region "$REGION")

if ((ROLLBACK)); then
    ((DRY_RUN)) || command -v aws >/dev/null 2>&1 || die "aws not found"
    log "rolling back stage $STAGE's functions to their previous versions$( ((DRY_RUN)) && echo ' [dry run]')"
    rollback
    exit 0
fi
((${#ROLLBACK_FUNCTIONS[@]} == 0)) || die "--function goes with --rollback"

if ((!DRY_RUN)); then
    for t in aws cargo python3 sha256sum tar gzip; do
        command -v "$t" >/dev/null 2>&1 || die "$t not found"
    done
fi
WORK="$RUN_DIR/deploy-$STAGE"
log "deploying stage $STAGE (stack $STACK, samconfig env $CONFIG_ENV)$( ((DRY_RUN)) && echo ' [dry run]')"

# ------------------------------------------------------------------ 0. preflight
# Before the long build: the parameters this deploy gives (--capacity, then --param), the stack's
# state (first create?), then what the account must allow for them.
if [[ -n "$CAPACITY" ]]; then
    # shellcheck disable=SC2206 # word splitting of the capacity arguments is intended
    cap_args=($CAPACITY)
    read -r -a cap_params <<<"$("$ROOT/scripts/capacity" "${cap_args[@]}" --format params)"
    USER_OVERRIDES+=("${cap_params[@]}")
fi
USER_OVERRIDES+=(${PARAMS[@]+"${PARAMS[@]}"})
prepare_stack
preflight

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
FETCH_ARGS=(--quiet)
case "$MODEL_SET" in *int8*) FETCH_ARGS+=(--with-int8) ;; esac # derived, not downloaded
run "$ROOT/scripts/fetch-models.sh" "${FETCH_ARGS[@]}"

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
DOING="lay out bin/gpu-worker, bin/ocr-fleet-unhealthy and bin/ocr-fleet-dlq, lib/, models.tar.gz ($MODEL_SET + orientation + pdfium), systemd/ (worker and its crash-loop handler), bootstrap.sh, agent and logrotate configs, SHA256SUMS"
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
# The user's --capacity/--param values win, except the first create's DatabaseDeletionProtection
# (see prepare_stack), which goes last.
OVERRIDES=("StageName=$STAGE" "ArtifactBucket=$ARTIFACT_BUCKET" "ArtifactPrefix=$ARTIFACT_PREFIX"
    "WorkerVersion=$VERSION" "WorkerModelSet=$MODEL_SET" "CudaLibsVersion=$CUDA_VERSION")
for kv in ${CREATE_OVERRIDES[@]+"${CREATE_OVERRIDES[@]}"}; do
    [[ "${kv%%=*}" == DatabaseDeletionProtection ]] || OVERRIDES+=("$kv")
done
for kv in ${USER_OVERRIDES[@]+"${USER_OVERRIDES[@]}"}; do
    [[ "${kv%%=*}" == DatabaseDeletionProtection ]] || OVERRIDES+=("$kv")
done
for kv in ${CREATE_OVERRIDES[@]+"${CREATE_OVERRIDES[@]}"}; do
    [[ "${kv%%=*}" != DatabaseDeletionProtection ]] || OVERRIDES+=("$kv")
done
run env PATH="$ROOT/.venv/infra/bin:$PATH" SAM_CLI_TELEMETRY=0 \
    sam deploy --config-env "$CONFIG_ENV" --stack-name "$STACK" "${REGION_ARGS[@]}" \
    --capabilities CAPABILITY_IAM --parameter-overrides "${OVERRIDES[@]}" ${SAM_ARGS[@]+"${SAM_ARGS[@]}"}
protect_database
log "done: see the stack outputs (ApiUrl, DashboardUrl, ...): aws cloudformation describe-stacks --stack-name $STACK"
