#!/bin/bash
# ocr-fleet worker bootstrap: first boot of a GPU worker (run as root by the launch template's
# user data, which first writes /etc/ocr-fleet/stack.env and downloads this file from the
# artifact version it names). It:
#   1. downloads the artifact version (scripts/deploy.sh uploads it): bin/gpu-worker,
#      lib/libonnxruntime*.so* (onnxruntime-gpu), models.tar.gz, the systemd unit, the
#      CloudWatch agent config, logrotate config, and the CUDA 13 + cuDNN 9 bundle when the stack
#      names one (CUDA_LIBS_URI); checks them against SHA256SUMS
#   2. builds the database settings (through RDS Proxy, TLS): the worker's own user, the master
#      user for migrations, and the component users the migrator sets up, each password as a
#      Secrets Manager reference ("<secret ARN>#password") the worker resolves at start: this
#      script reads no secret, and no password is written anywhere
#   3. writes /etc/ocr-fleet/worker.env (mode 600): every setting of
#      gpu-worker/worker/src/config.rs, by its env name
#   4. creates the GPU device nodes (nvidia-modprobe), installs the worker unit and its
#      crash-loop handler (ocr-fleet-unhealthy.service) and the operators' ocr-fleet-dlq, starts
#      the CloudWatch agent (worker and bootstrap logs), the SSM agent and the worker service
#   5. waits for the worker's /healthz (models loaded, migrations applied: DB_MIGRATE=true), then
#      completes the group's launching hook (CONTINUE: only now is the worker InService, counted
#      as capacity) and signals the creation/update policy; on any error ABANDON (Auto Scaling
#      replaces the instance) and FAILURE.
#
# Test hooks (infra/tests/test_worker.py runs this in a sandbox): OCR_BOOTSTRAP_ROOT prefixes
# every path (/usr/bin/nvidia-modprobe and /dev/nvidia* too); aws, curl, systemctl, useradd, dnf...
# are found on PATH, so stubs can stand in.
set -euo pipefail

R="${OCR_BOOTSTRAP_ROOT:-}"
ETC="$R/etc/ocr-fleet"
OPT="$R/opt/ocr-fleet"
LOGS="$R/var/log/ocr-fleet"
UNITS="$R/etc/systemd/system"
HEALTH_TIMEOUT_SECS="${OCR_HEALTH_TIMEOUT_SECS:-1200}"
# The worker's settings that the fleet fixes (the others come from stack.env).
SHUTDOWN_GRACE_SECS=60
METRICS_PORT=9100
# The unit's ExecStartPre runs the same one.
NVIDIA_MODPROBE=/usr/bin/nvidia-modprobe

mkdir -p "$LOGS"
exec > >(tee -a "$LOGS/bootstrap.log") 2>&1
log() { printf '%s bootstrap: %s\n' "$(date -u +%FT%TZ)" "$*"; }

# shellcheck disable=SC1091 # written by the user data
set -a && . "$ETC/stack.env" && set +a
for v in AWS_REGION STACK_NAME CFN_LOGICAL_ID STAGE ARTIFACT_URI EXPRESS_QUEUE_URL BULK_QUEUE_URL \
    EXPRESS_DLQ_URL BULK_DLQ_URL UPLOAD_BUCKET VISIBILITY_TIMEOUT_SECS MAX_ATTEMPTS DB_HOST DB_PORT DB_NAME DB_SECRET_ARN \
    DB_MASTER_USER DB_API_USER DB_API_SECRET_ARN DB_UPLOAD_USER DB_UPLOAD_SECRET_ARN DB_WORKER_USER DB_WORKER_SECRET_ARN \
    WEBHOOK_SECRET_ARN RETENTION_DAYS RESULT_URL_BASE AUTOSCALING_GROUP_NAME LIFECYCLE_HOOK_NAME LAUNCH_HOOK_NAME \
    OCR_MODEL_SET MAX_PAGES LOG_GROUP; do
    [[ -n "${!v:-}" ]] || { log "stack.env lacks $v"; exit 1; }
done
export AWS_DEFAULT_REGION="$AWS_REGION"

imds() {
    local token
    token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token)
    curl -sf -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}
INSTANCE_ID=$(imds instance-id)

signal() {
    log "signalling $1 to $STACK_NAME/$CFN_LOGICAL_ID"
    aws cloudformation signal-resource --stack-name "$STACK_NAME" --logical-resource-id "$CFN_LOGICAL_ID" \
        --unique-id "$INSTANCE_ID" --status "$1" || log "signal failed (a stack that is not updating ignores it)"
}
# launched CONTINUE|ABANDON: completes the launching hook (Pending:Wait -> InService, or replaced).
launched() {
    log "launching hook $LAUNCH_HOOK_NAME: $1"
    aws autoscaling complete-lifecycle-action --auto-scaling-group-name "$AUTOSCALING_GROUP_NAME" \
        --lifecycle-hook-name "$LAUNCH_HOOK_NAME" --instance-id "$INSTANCE_ID" --lifecycle-action-result "$1" ||
        log "completing the launching hook failed (its timeout abandons the instance)"
}
on_exit() {
    local rc=$?
    if ((rc != 0)); then
        log "failed (exit $rc)"
        signal FAILURE
        launched ABANDON
    fi
}
trap on_exit EXIT

# ------------------------------------------------------------------ 1. artifacts
log "instance $INSTANCE_ID, stage $STAGE, artifacts $ARTIFACT_URI"
id ocr-fleet >/dev/null 2>&1 || useradd --system --no-create-home --shell /sbin/nologin ocr-fleet
mkdir -p "$OPT" "$ETC" "$UNITS"
aws s3 cp --only-show-errors --recursive "$ARTIFACT_URI/" "$OPT/"
(cd "$OPT" && sha256sum --quiet -c SHA256SUMS)
chmod 0755 "$OPT/bin/gpu-worker"
mkdir -p "$OPT/models"
tar -xzf "$OPT/models.tar.gz" -C "$OPT/models"
[[ -f "$OPT/models/$OCR_MODEL_SET/manifest.json" ]] || { log "model set $OCR_MODEL_SET not in models.tar.gz"; exit 1; }
ORT_LIB=$(find "$OPT/lib" -maxdepth 1 -name 'libonnxruntime.so*' -type f | sort | head -n 1)
[[ -n "$ORT_LIB" ]] || { log "no libonnxruntime.so in $OPT/lib"; exit 1; }
# ONNX Runtime finds its CUDA provider next to itself. The provider of onnxruntime-gpu 1.31 needs
# the CUDA 13 runtime (libcublasLt.so.13, ...) and cuDNN 9: from the bundle deploy.sh uploads
# (CUDA_LIBS_URI, the default), else from the newest CUDA toolkit of the AMI that has them.
CUDA_NEEDS=libcublasLt.so.13
if [[ -n "${CUDA_LIBS_URI:-}" ]]; then
    mkdir -p "$OPT/cuda"
    aws s3 cp --only-show-errors --recursive "$CUDA_LIBS_URI/" "$OPT/cuda/"
    (cd "$OPT/cuda" && sha256sum --quiet -c SHA256SUMS)
    CUDA_LIBS=/opt/ocr-fleet/cuda
else
    CUDA_LIBS=""
    while IFS= read -r d; do
        if [[ -e "$d/lib64/$CUDA_NEEDS" ]]; then
            CUDA_LIBS="${d#"$R"}/lib64"
            break
        fi
    done < <(find "$R/usr/local" -maxdepth 1 -name 'cuda*' -type d 2>/dev/null | sort -rV)
    [[ -n "$CUDA_LIBS" ]] || { log "no CUDA toolkit with $CUDA_NEEDS on this AMI; deploy with the CUDA bundle"; exit 1; }
fi
log "CUDA libraries from $CUDA_LIBS"

# ------------------------------------------------------------------ 2. database users
# A URL without a password, and a reference to the field of the user's JSON secret that holds
# it. systemd's EnvironmentFile keeps a "#" inside a value (only a line starting with one is a
# comment), and ocr-fleet-dlq reads the lines as they are.
db_url() { printf 'mysql://%s@%s:%s/%s?require_ssl=true' "$1" "$DB_HOST" "$DB_PORT" "$DB_NAME"; }
password_ref() { printf '%s#password' "$1"; }
DATABASE_URL=$(db_url "$DB_WORKER_USER")
DATABASE_PASSWORD=$(password_ref "$DB_WORKER_SECRET_ARN")
MIGRATION_DATABASE_URL=$(db_url "$DB_MASTER_USER")
MIGRATION_DATABASE_PASSWORD=$(password_ref "$DB_SECRET_ARN")
# role=user:password, for every component's user (the migrator creates them, sets their
# passwords and grants).
DB_ROLE_USERS="api=$DB_API_USER:$(password_ref "$DB_API_SECRET_ARN")"
DB_ROLE_USERS+=",upload=$DB_UPLOAD_USER:$(password_ref "$DB_UPLOAD_SECRET_ARN")"
DB_ROLE_USERS+=",worker=$DB_WORKER_USER:$(password_ref "$DB_WORKER_SECRET_ARN")"

# ------------------------------------------------------------------ 3. worker.env
# One name per setting, as gpu-worker/worker/src/config.rs reads them. WEBHOOK_ALLOW_HOSTS and
# DATABASE_CA_FILE are for tests only and never set here (RDS Proxy's certificate is public).
umask 077
cat >"$ETC/worker.env.tmp" <<EOF
AWS_REGION=$AWS_REGION
EXPRESS_QUEUE_URL=$EXPRESS_QUEUE_URL
BULK_QUEUE_URL=$BULK_QUEUE_URL
EXPRESS_DLQ_URL=$EXPRESS_DLQ_URL
BULK_DLQ_URL=$BULK_DLQ_URL
DLQ_SWEEP_SECS=60
UPLOAD_BUCKET=$UPLOAD_BUCKET
DATABASE_URL=$DATABASE_URL
DATABASE_PASSWORD=$DATABASE_PASSWORD
DB_POOL_MAX=4
DB_TIMEOUT_MS=5000
DB_RETRY_SECS=60
DB_MIGRATE=true
MIGRATION_DATABASE_URL=$MIGRATION_DATABASE_URL
MIGRATION_DATABASE_PASSWORD=$MIGRATION_DATABASE_PASSWORD
DB_ROLE_USERS=$DB_ROLE_USERS
RETENTION_DAYS=$RETENTION_DAYS
PURGE_INTERVAL_SECS=300
BATCH_MAX=32
BATCH_WAIT_MS=250
BULK_SHARE=0.25
RECEIVE_WAIT_SECS=2
VISIBILITY_TIMEOUT_SECS=$VISIBILITY_TIMEOUT_SECS
MAX_ATTEMPTS=$MAX_ATTEMPTS
RETRY_BACKOFF_MS=2000
PREFETCH_CONCURRENCY=16
DECODE_CONCURRENCY=3
SHUTDOWN_GRACE_SECS=$SHUTDOWN_GRACE_SECS
METRICS_ADDR=0.0.0.0:$METRICS_PORT
CLOUDWATCH_NAMESPACE=OcrFleet
CLOUDWATCH_INTERVAL_SECS=60
FLEET_NAME=$STAGE
WEBHOOK_SECRET=$WEBHOOK_SECRET_ARN
WEBHOOK_MAX_ATTEMPTS=5
WEBHOOK_LEASE_SECS=300
WEBHOOK_RETRY_WINDOW_SECS=86400
WEBHOOK_PER_HOST=2
WEBHOOK_SWEEP_SECS=30
RESULT_URL_BASE=$RESULT_URL_BASE
EC2_LIFECYCLE=true
LIFECYCLE_HOOK_NAME=$LIFECYCLE_HOOK_NAME
AUTOSCALING_GROUP_NAME=$AUTOSCALING_GROUP_NAME
OCR_MODEL_DIR=/opt/ocr-fleet/models
OCR_MODEL_SET=$OCR_MODEL_SET
OCR_THREADS=0
ORT_DYLIB_PATH=/opt/ocr-fleet/lib/${ORT_LIB##*/}
OCR_PROVIDER=cuda
OCR_DEVICE_ID=0
OCR_CUDNN_CONV_ALGO=heuristic
OCR_ORIENTATION=true
OCR_LINE_ANGLE=false
OCR_MAX_PIXELS=50000000
MAX_PAGES=$MAX_PAGES
OCR_CPU_ARENA=true
LOG_FORMAT=json
LD_LIBRARY_PATH=/opt/ocr-fleet/lib:$CUDA_LIBS
RUST_LOG=info
EOF
mv "$ETC/worker.env.tmp" "$ETC/worker.env"
umask 022

# ------------------------------------------------------------------ 4. services
# The worker runs unprivileged, so the driver cannot create the GPU device nodes on its first CUDA
# call: create them now (and the unit's ExecStartPre at every start). No nodes: no usable GPU.
[[ -x "$R$NVIDIA_MODPROBE" ]] || { log "no $NVIDIA_MODPROBE: not an NVIDIA driver AMI"; exit 1; }
"$R$NVIDIA_MODPROBE" -u -c=0
for node in nvidia0 nvidiactl nvidia-uvm; do
    [[ -e "$R/dev/$node" ]] || { log "/dev/$node missing after nvidia-modprobe: no NVIDIA GPU or driver"; exit 1; }
done
chown ocr-fleet:ocr-fleet "$LOGS"
install -m 0644 "$OPT/systemd/ocr-fleet-worker.service" "$OPT/systemd/ocr-fleet-unhealthy.service" "$UNITS/"
chmod 0755 "$OPT/bin/ocr-fleet-unhealthy"
install -D -m 0755 "$OPT/bin/ocr-fleet-dlq" "$R/usr/local/bin/ocr-fleet-dlq"
install -D -m 0644 "$OPT/logrotate.conf" "$R/etc/logrotate.d/ocr-fleet"
if ! command -v amazon-cloudwatch-agent-ctl >/dev/null 2>&1; then
    dnf install -y -q amazon-cloudwatch-agent || log "could not install the CloudWatch agent; logs stay local"
fi
if command -v amazon-cloudwatch-agent-ctl >/dev/null 2>&1; then
    sed "s|@LOG_GROUP@|$LOG_GROUP|g" "$OPT/amazon-cloudwatch-agent.json" >"$ETC/amazon-cloudwatch-agent.json"
    amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c "file:$ETC/amazon-cloudwatch-agent.json" ||
        log "CloudWatch agent did not start; logs stay local"
fi
# Session Manager is how an operator reaches a worker (ocr-fleet-dlq): the AMI ships the agent.
if ! systemctl enable --now amazon-ssm-agent.service; then
    if ! { dnf install -y -q amazon-ssm-agent && systemctl enable --now amazon-ssm-agent.service; }; then
        log "no SSM agent: Session Manager cannot reach this worker"
    fi
fi
systemctl daemon-reload
systemctl enable --now ocr-fleet-worker.service

# ------------------------------------------------------------------ 5. ready?
log "waiting up to ${HEALTH_TIMEOUT_SECS}s for the worker's /healthz"
deadline=$((SECONDS + HEALTH_TIMEOUT_SECS))
until curl -sf -o /dev/null "http://127.0.0.1:$METRICS_PORT/healthz"; do
    if ((SECONDS >= deadline)); then
        log "worker not healthy in time; last log lines:"
        tail -n 30 "$LOGS/worker.log" || true
        exit 1
    fi
    sleep 5
done
log "worker healthy"
launched CONTINUE
signal SUCCESS
