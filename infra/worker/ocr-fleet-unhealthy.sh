#!/bin/bash
# ocr-fleet-unhealthy: tells Auto Scaling this worker is broken, so it is replaced. Run (as
# /opt/ocr-fleet/bin/ocr-fleet-unhealthy) by ocr-fleet-unhealthy.service, the worker unit's
# OnFailure=, i.e. when systemd gave up restarting the worker: StartLimitBurst starts within
# StartLimitIntervalSec, a crash loop. systemd 254 and later also run OnFailure= between automatic
# restarts, so it acts only on the unit's Result=start-limit-hit (a single crash is systemd's to
# restart). --no-should-respect-grace-period: the group's health-check grace period is for a
# booting worker, and this one has given up.
# Usage: ocr-fleet-unhealthy [UNIT]   (default ocr-fleet-worker.service)
# Test hooks (infra/tests/test_worker.py): OCR_BOOTSTRAP_ROOT prefixes /etc; systemctl, curl and
# aws are found on PATH.
set -euo pipefail

R="${OCR_BOOTSTRAP_ROOT:-}"
unit=${1:-ocr-fleet-worker.service}
log() { printf '%s ocr-fleet-unhealthy: %s\n' "$(date -u +%FT%TZ)" "$*"; }

result=$(systemctl show --property=Result --value "$unit")
if [[ "$result" != start-limit-hit ]]; then
    log "$unit ended with $result, not a crash loop (systemd restarts it): nothing to do"
    exit 0
fi
# shellcheck disable=SC1091 # written by the user data
set -a && . "$R/etc/ocr-fleet/stack.env" && set +a
export AWS_DEFAULT_REGION="$AWS_REGION"
token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
id=$(curl -sf -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id)
log "$unit hit its start limit: marking $id Unhealthy in $AUTOSCALING_GROUP_NAME, which replaces it"
for attempt in 1 2 3 4 5; do
    if aws autoscaling set-instance-health --instance-id "$id" \
        --health-status Unhealthy --no-should-respect-grace-period; then
        exit 0
    fi
    log "set-instance-health failed (attempt $attempt)"
    sleep 10
done
exit 1
