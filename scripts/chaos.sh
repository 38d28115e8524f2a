#!/usr/bin/env bash
# Load with faults, nothing lost: the real API + upload poller and two workers against their own
# LocalStack (port 4599, so SIGSTOP never freezes anyone else's) and MariaDB (own database and
# user, reached through a TCP proxy the driver can cut), with N small rendered images: express
# and bulk, presigned and direct uploads, 2 % corrupt, 1 % duplicated S3 events, 5 % idempotent
# resubmissions. While they flow: SIGKILL a worker three times, cut the database 5 s, pause
# LocalStack 5 s. Then every job is checked against the ledger (scripts/lib/chaos.py) and one
# `name: value` line is printed per fact; exit 0 only when nothing was lost or overwritten.
#
# Usage: scripts/chaos.sh [--jobs N] [--workers N] [--rate PER_S] [--profile release|dev]
#                         [--timeout SECS] [--seed N]
#                         [--db-outage SECS] [--db-hang SECS] [--db-kill]
#                         [--flood N [--caller-max-queued N] [--no-quota]]
#   Longer database faults, each once, after the short ones (the run is sized down: upload
#   events back off 1-2 s and their DLQ is swept every 3 s, a batch waits 3 s for the database):
#   --db-outage SECS: the database cut for SECS (every service: uploads' events reach their DLQ
#     and are swept back; workers requeue their batches). --db-hang SECS: the database stops
#     answering for SECS, connections left open. --db-kill: the run's MariaDB is a private one
#     (scripts/lib/chaos-mariadb.sh, port 3317), killed with SIGKILL mid-run and started again.
#   --jobs 1000 (default)   --profile release (default; the test suite uses dev, already built)
#   --flood N: instead of the faults, two callers (scripts/lib/fairshare.py): bob floods N bulk
#     jobs as fast as the API lets him while alice submits --jobs at --rate; per caller it
#     reports 429s and p50/p99 submit→result. --caller-max-queued (default 40) is the run's
#     CALLER_MAX_QUEUED; --no-quota turns the per-caller limits off, for comparison.
# Bounded in time (--timeout, default 1200 s), loopback only; stops everything it started.
# Logs: .run/chaos/ (api.log, worker-N.log, localstack log in .run/localstack-4599.log).
set -euo pipefail
export OCR_LOCALSTACK_PORT="${OCR_CHAOS_LOCALSTACK_PORT:-4599}"
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/mariadb.sh
source "$ROOT/scripts/lib/mariadb.sh"
# shellcheck source=scripts/lib/localstack.sh
source "$ROOT/scripts/lib/localstack.sh"
# shellcheck source=scripts/lib/python-env.sh
source "$ROOT/scripts/lib/python-env.sh"
cd "$ROOT"
exec </dev/null

jobs=1000 workers=2 rate=25 profile=release timeout=1200 seed=7 flood=0 max_queued=40 no_quota=()
db_faults=() db_kill=0
while (($#)); do
    case "$1" in
    --db-outage) db_faults+=(--db-outage "$2"); shift 2 ;;
    --db-hang) db_faults+=(--db-hang "$2"); shift 2 ;;
    --db-kill) db_kill=1; db_faults+=(--db-kill); shift ;;
    --flood) flood=$2; shift 2 ;;
    --caller-max-queued) max_queued=$2; shift 2 ;;
    --no-quota) no_quota=(--no-quota); shift ;;
    --jobs) jobs=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    -h | --help) sed -n '2,28p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
case "$profile" in
release) bin_dir="$CARGO_TARGET_DIR/release" ;;
dev) bin_dir="$CARGO_TARGET_DIR/debug" ;;
*) die "--profile is release or dev" ;;
esac

suffix="$$"
DB="ocr_chaos_$suffix"
DB_USER="ocr_chaos_$suffix"
DB_PASSWORD=$(od -An -tx1 -N18 /dev/urandom | tr -d ' \n')
PREFIX="chaos$suffix"
LOG_DIR="$RUN_DIR/chaos"
ENV_FILE="$RUN_DIR/chaos-$suffix.env"

cleanup() {
    local rc=$?
    set +e
    # The driver stops its processes; anything left of them (it was killed) goes here. Each
    # was started in its own session, so pid == process group.
    local pid
    if [[ -f "$LOG_DIR/pids" ]]; then
        while read -r pid; do kill -KILL -- "-$pid" 2>/dev/null; done <"$LOG_DIR/pids"
    fi
    if [[ $LOCALSTACK_STARTED == 1 ]]; then
        kill -CONT -- "-$(cat "$LOCALSTACK_PIDFILE" 2>/dev/null)" 2>/dev/null
        localstack_stop chaos
    fi
    mariadb -h"$MARIADB_HOST" -P"$MARIADB_PORT" -uroot \
        -e "DROP DATABASE IF EXISTS \`$DB\`; DROP USER IF EXISTS '$DB_USER'@'127.0.0.1'" 2>/dev/null
    rm -f "$ENV_FILE"
    [[ $db_kill == 1 ]] && "$ROOT/scripts/lib/chaos-mariadb.sh" stop
    [[ $MARIADB_STARTED == 1 ]] && mariadb_stop chaos
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$ROOT/scripts/setup.sh" >&2
ensure_run_dir
rm -rf "$LOG_DIR"
mkdir -p "$LOG_DIR"
mariadb_ensure chaos
if [[ $db_kill == 1 ]]; then
    # The run's database on a private server it may kill; the shared one is left alone.
    "$ROOT/scripts/lib/chaos-mariadb.sh" start
    MARIADB_PORT=$("$ROOT/scripts/lib/chaos-mariadb.sh" port)
    db_faults+=(--db-port "$MARIADB_PORT" --db-pidfile "$RUN_DIR/chaos-mariadb/mariadbd.pid"
        --db-start "$ROOT/scripts/lib/chaos-mariadb.sh start")
fi
# Its own database and a user with a password, so the log check has a real secret to look for.
mariadb -h"$MARIADB_HOST" -P"$MARIADB_PORT" -uroot -e "
    CREATE DATABASE \`$DB\`;
    CREATE USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
    GRANT ALL PRIVILEGES ON \`$DB\`.* TO '$DB_USER'@'127.0.0.1';"
if localstack_answers; then
    die "something already answers on $LOCALSTACK_URL; chaos.sh pauses its LocalStack, so it needs its own (OCR_CHAOS_LOCALSTACK_PORT)"
fi
localstack_start chaos
export AWS_ENDPOINT_URL="$LOCALSTACK_URL" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
    AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
"$LOCALSTACK_VENV/bin/python" "$ROOT/localstack/init.py" --prefix "$PREFIX" --env-file "$ENV_FILE" >/dev/null
eval "$("$ROOT/scripts/fetch-models.sh" --print-env)"
export ORT_DYLIB_PATH OCR_MODEL_DIR PDFIUM_DYLIB_PATH

if [[ $profile == release ]]; then
    log "building release binaries (cargo build --release --workspace --bins)"
    cargo build --release --workspace --bins
else
    # The same build set as scripts/test.sh, so nothing is rebuilt there.
    cargo build --workspace --bins
fi
py=$(python_env chaos "pillow==13.0.0" "boto3==1.42.72" "botocore==1.42.72")

if ((flood > 0)); then
    log "chaos (two callers): bob floods $flood jobs, alice submits $jobs at $rate/s, $workers workers"
    "$py" "$ROOT/scripts/lib/fairshare.py" --jobs "$jobs" --flood "$flood" --workers "$workers" --rate "$rate" \
        --caller-max-queued "$max_queued" "${no_quota[@]}" --seed "$seed" --timeout "$timeout" \
        --bin-dir "$bin_dir" --env-file "$ENV_FILE" --db "$DB" --db-user "$DB_USER" --db-password "$DB_PASSWORD" \
        --log-dir "$LOG_DIR"
    exit
fi
log "chaos: $jobs jobs, $workers workers, $rate submissions/s, profile $profile"
"$py" "$ROOT/scripts/lib/chaos.py" --jobs "$jobs" --workers "$workers" --rate "$rate" --seed "$seed" \
    --timeout "$timeout" --bin-dir "$bin_dir" --env-file "$ENV_FILE" --db "$DB" --db-user "$DB_USER" \
    --db-password "$DB_PASSWORD" --localstack-pid "$(cat "$LOCALSTACK_PIDFILE")" --log-dir "$LOG_DIR" \
    "${db_faults[@]}"
