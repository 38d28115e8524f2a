#!/usr/bin/env bash
# The producer's own cost, measured side by side on this machine (scripts/bench.sh api).
#   1. wrk against the release api-local: GET /healthz, then POST /v1/jobs (JSON → job row in
#      MariaDB + presigned URL), same connections and duration, one after the other; prints
#      requests/s and p50/p99 for each and their ratio (the handler's own cost).
#   2. Release binary sizes of the two Lambda functions and their start-to-ready time (spawn to
#      the first "next event" request against a stand-in Runtime API), as a proxy for init.
# Options: --duration SECS (default 15), --connections N (default 32), --runs N (init, default 20)
# Env: BENCH_DB_POOL_MAX (default 8: one local process serves many requests at once; a Lambda
#      instance serves one, hence DB_POOL_MAX=1 there)
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/mariadb.sh
source "$ROOT/scripts/lib/mariadb.sh"
# shellcheck source=scripts/lib/localstack.sh
source "$ROOT/scripts/lib/localstack.sh"
cd "$ROOT"

duration=15 connections=32 runs=20
while (($#)); do
    case "$1" in
    --duration) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    *) die "unknown option $1" ;;
    esac
done

PIDFILE="$RUN_DIR/bench-api.pid"
cleanup() {
    set +e
    stop_group "$PIDFILE" api-local
    [[ $LOCALSTACK_STARTED == 1 ]] && localstack_stop bench
    [[ $MARIADB_STARTED == 1 ]] && mariadb_stop bench
}
trap cleanup EXIT

"$ROOT/scripts/setup.sh"
ensure_run_dir
apt_install wrk
mariadb_ensure bench
mariadb_create_db ocr_bench
localstack_start bench
export AWS_ENDPOINT_URL="$LOCALSTACK_URL" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
"$LOCALSTACK_VENV/bin/python" "$ROOT/localstack/init.py" --prefix bench-api --env-file "$RUN_DIR/bench-api.env" >/dev/null

log "building release binaries (cargo build --release -p ocr-api --bins)"
cargo build --release -p ocr-api --bins
BIN="$CARGO_TARGET_DIR/release"
TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
ADDR=127.0.0.1:18080
(
    set -a
    # shellcheck source=/dev/null
    source "$RUN_DIR/bench-api.env"
    set +a
    # One caller makes every request: its limits are set out of reach (not off), so every
    # create still takes the shipped path through the per-caller quota's transaction.
    export DATABASE_URL="mysql://root@$MARIADB_HOST:$MARIADB_PORT/ocr_bench" AUTH_MODE=static \
        API_TOKENS="$TOKEN:bench" BIND_ADDR=$ADDR DB_POOL_MAX="${BENCH_DB_POOL_MAX:-8}" QUEUE_DEPTH_LIMIT=100000000 \
        CALLER_MAX_QUEUED=100000000 CALLER_MAX_RATE=100000000 CALLER_BURST=100000000 LOG_FORMAT=json RUST_LOG=warn
    exec setsid "$BIN/api-local"
) </dev/null >"$RUN_DIR/bench-api.log" 2>&1 &
echo "$!" >"$PIDFILE"
for ((i = 0; i < 120; i++)); do http_ok "http://$ADDR/healthz" && break; sleep 0.25; done
http_ok "http://$ADDR/healthz" || die "api-local did not start (see $RUN_DIR/bench-api.log)"

lua="$RUN_DIR/bench-post.lua"
cat >"$lua" <<LUA
wrk.method = "POST"
wrk.body = '{"content_type":"image/jpeg","content_length":123456,"priority":"bulk"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA

# wrk's summary: "Requests/sec:" and the --latency percentiles.
summarise() {
    local name=$1 file=$2 rps p50 p99 non2xx
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$file")
    p50=$(awk '$1 == "50%" {print $2}' "$file")
    p99=$(awk '$1 == "99%" {print $2}' "$file")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$file")
    printf '%-16s %10s req/s   p50 %8s   p99 %8s   non-2xx %s\n' "$name" "$rps" "$p50" "$p99" "${non2xx:-0}"
    printf '%s\n' "$rps" >"$file.rps"
}

log "wrk: $connections connections, ${duration}s each, 2 threads"
wrk -t2 -c"$connections" -d"${duration}s" --latency "http://$ADDR/healthz" >"$RUN_DIR/wrk-healthz.txt"
wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$lua" "http://$ADDR/v1/jobs" >"$RUN_DIR/wrk-post.txt"
echo
echo "== API throughput (release api-local, loopback, this machine) =="
summarise "GET /healthz" "$RUN_DIR/wrk-healthz.txt"
summarise "POST /v1/jobs" "$RUN_DIR/wrk-post.txt"
awk -v a="$(<"$RUN_DIR/wrk-post.txt.rps")" -v b="$(<"$RUN_DIR/wrk-healthz.txt.rps")" \
    'BEGIN { printf "POST /v1/jobs runs at %.3f of /healthz throughput\n", a / b }'

echo
echo "== Lambda binaries (x86_64 release, stripped) =="
for b in api on-upload; do
    printf '%-10s %6.1f MB\n' "$b" "$(awk -v s="$(stat -c %s "$BIN/$b")" 'BEGIN { print s / 1e6 }')"
done
(
    set -a
    # shellcheck source=/dev/null
    source "$RUN_DIR/bench-api.env"
    set +a
    export DATABASE_URL="mysql://root@$MARIADB_HOST:$MARIADB_PORT/ocr_bench" AUTH_MODE=jwt RUST_LOG=warn
    for b in api on-upload; do python3 "$ROOT/scripts/lib/lambda_init.py" "$BIN/$b" "$runs"; done
)
