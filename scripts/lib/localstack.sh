# shellcheck shell=bash
# LocalStack in host mode (no Docker), from .venv/localstack. Source after common.sh.
#
# .run/localstack.pid    pid (== process group) of a LocalStack that one of our scripts started
# .run/localstack.owner  who started it (dev, test, manual); a LocalStack that was already
#                        answering on :4566 is reused and never recorded, so never stopped.
# .run/localstack.log    its log

# Another port (OCR_LOCALSTACK_PORT) gets its own files: localstack-4599.pid, ...
_ls_suffix=""
[[ $LOCALSTACK_PORT == 4566 ]] || _ls_suffix="-$LOCALSTACK_PORT"
LOCALSTACK_PIDFILE="$RUN_DIR/localstack$_ls_suffix.pid"
LOCALSTACK_OWNERFILE="$RUN_DIR/localstack$_ls_suffix.owner"
LOCALSTACK_LOG="$RUN_DIR/localstack$_ls_suffix.log"
LOCALSTACK_VOLUME="$RUN_DIR/localstack-volume$_ls_suffix"
LOCALSTACK_HEALTH="$LOCALSTACK_URL/_localstack/health"

localstack_answers() { http_ok "$LOCALSTACK_HEALTH"; }

# localstack_start OWNER: start LocalStack unless one answers already.
# Sets LOCALSTACK_STARTED=1 when this call started it.
LOCALSTACK_STARTED=0
localstack_start() {
    local owner=${1:-manual} timeout=${LOCALSTACK_START_TIMEOUT:-120} pid i start
    if localstack_answers; then
        log "LocalStack answers on $LOCALSTACK_URL (reusing it)"
        return 0
    fi
    [[ -x "$LOCALSTACK_VENV/bin/python" ]] || die "no .venv/localstack: run scripts/setup.sh first"
    if pid=$(read_pidfile "$LOCALSTACK_PIDFILE"); then
        die "LocalStack pid $pid is running but $LOCALSTACK_HEALTH does not answer; run scripts/localstack.sh stop"
    fi
    ensure_run_dir
    mkdir -p "$LOCALSTACK_VOLUME"
    log "starting LocalStack (host mode) on $LOCALSTACK_URL; log: ${LOCALSTACK_LOG#"$ROOT"/}"
    start=$(date +%s)
    : >"$LOCALSTACK_LOG"
    # setsid: LocalStack gets its own process group (pid == pgid), so stop can kill all of it.
    (
        cd "$ROOT" || exit 1
        exec env \
            OVERRIDE_IN_DOCKER=0 \
            GATEWAY_LISTEN="127.0.0.1:$LOCALSTACK_PORT" \
            GATEWAY_SERVER=hypercorn \
            DNS_ADDRESS=0 \
            SKIP_SSL_CERT_DOWNLOAD=1 \
            DISABLE_EVENTS=1 \
            PERSISTENCE=0 \
            LOCALSTACK_HOST="127.0.0.1:$LOCALSTACK_PORT" \
            SQS_ENDPOINT_STRATEGY=path \
            S3_SKIP_SIGNATURE_VALIDATION=0 \
            SQS_CLOUDWATCH_METRICS_REPORT_INTERVAL=5 \
            EAGER_SERVICE_LOADING=1 \
            SERVICES=s3,sqs,cloudwatch,sts,secretsmanager,cloudformation,iam,ssm \
            LOCALSTACK_VOLUME_DIR="$LOCALSTACK_VOLUME" \
            setsid "$LOCALSTACK_VENV/bin/python" "$ROOT/localstack/run_host.py"
    ) </dev/null >>"$LOCALSTACK_LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$LOCALSTACK_PIDFILE"
    echo "$owner" >"$LOCALSTACK_OWNERFILE"
    for ((i = 0; i < timeout * 4; i++)); do
        if ! pid_alive "$pid"; then
            tail -n 40 "$LOCALSTACK_LOG" >&2
            rm -f "$LOCALSTACK_PIDFILE" "$LOCALSTACK_OWNERFILE"
            die "LocalStack exited during start (log above, full log in $LOCALSTACK_LOG)"
        fi
        if grep -q 'Ready' "$LOCALSTACK_LOG" && localstack_answers; then
            # shellcheck disable=SC2034 # read by the sourcing script
            LOCALSTACK_STARTED=1
            log "LocalStack ready in $(($(date +%s) - start)) s (pid $pid)"
            return 0
        fi
        sleep 0.25
    done
    tail -n 40 "$LOCALSTACK_LOG" >&2
    stop_group "$LOCALSTACK_PIDFILE" LocalStack
    rm -f "$LOCALSTACK_OWNERFILE"
    die "LocalStack not ready after ${timeout} s (log tail above, full log in $LOCALSTACK_LOG)"
}

# localstack_stop [OWNER]: stop the LocalStack our scripts started (only if started by OWNER,
# when given). One that was already running is left alone.
localstack_stop() {
    local owner=${1:-}
    [[ -f "$LOCALSTACK_PIDFILE" ]] || return 0
    if [[ -n "$owner" && -f "$LOCALSTACK_OWNERFILE" && "$(<"$LOCALSTACK_OWNERFILE")" != "$owner" ]]; then
        log "LocalStack was started by '$(<"$LOCALSTACK_OWNERFILE")', leaving it running"
        return 0
    fi
    # Its shutdown sometimes hangs in "Stopping all services"; nothing is persisted
    # (PERSISTENCE=0), so after 10 s the group is killed.
    stop_group "$LOCALSTACK_PIDFILE" LocalStack 10
    rm -f "$LOCALSTACK_OWNERFILE"
}

localstack_status() {
    local pid
    if localstack_answers; then
        if pid=$(read_pidfile "$LOCALSTACK_PIDFILE"); then
            echo "LocalStack running on $LOCALSTACK_URL (pid $pid, started by $(cat "$LOCALSTACK_OWNERFILE" 2>/dev/null || echo '?'))"
        else
            echo "LocalStack running on $LOCALSTACK_URL (not started by these scripts)"
        fi
        return 0
    fi
    echo "LocalStack not running"
    return 3
}
