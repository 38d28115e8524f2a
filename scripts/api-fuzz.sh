#!/usr/bin/env bash
# Schemathesis against the local API's own OpenAPI document (GET /v1/openapi.json): every
# generated request must get no 5xx and a response the document describes (status code,
# content type, headers, body schema), schema-invalid requests must be refused and valid ones
# accepted, a missing or unknown token must get 401, undocumented methods 405, and, in the
# stateful phase (links POST /v1/jobs -> GET/DELETE /v1/jobs/{id}), what was created must be
# readable and one caller's job must not be readable by another (two static tokens).
#
# Starts its own api-local on a free loopback port against LocalStack and MariaDB (each started
# only if none answers, and stopped at exit only if started here), with its own resource prefix
# (api-fuzz-<pid>) and database (ocr_api_fuzz_<pid>), and removes all of them at exit.
# Two behaviours OpenAPI cannot express are accepted by scripts/lib/api_fuzz_hooks.py, and only
# when the response is exactly the documented one.
#
# Usage: scripts/api-fuzz.sh [--max-examples N] [--seed N] [--time-limit SECS] [-- SCHEMATHESIS ARGS]
#   --max-examples  cases per operation and phase (default 100)
#   --seed          hypothesis seed (default: random; printed, and reruns with it reproduce)
#   --time-limit    hard limit for the schemathesis run (default 600 s): exits 124 past it
# Prints `name: value` lines (schemathesis version, command, operations, generated cases,
# failures, ...) on stdout; the full report goes to .run/api-fuzz/. Exits non-zero on any failure.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/mariadb.sh
source "$ROOT/scripts/lib/mariadb.sh"
# shellcheck source=scripts/lib/localstack.sh
source "$ROOT/scripts/lib/localstack.sh"
# shellcheck source=scripts/lib/python-env.sh
source "$ROOT/scripts/lib/python-env.sh"
cd "$ROOT"

SCHEMATHESIS_VERSION=4.32.5
max_examples=100 seed="" time_limit=600
extra=()
while (($#)); do
    case "$1" in
    --max-examples) max_examples=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --time-limit) time_limit=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option $1 (see the header of $0)" ;;
    esac
done
[[ -n "$seed" ]] || seed=$((RANDOM * 32768 + RANDOM))

NAME="api-fuzz-$$"
DB="ocr_api_fuzz_$$"
OUT="$RUN_DIR/api-fuzz"
PIDFILE="$RUN_DIR/$NAME.pid"
ENV_FILE="$RUN_DIR/$NAME.env"
AUTH_FILE="$RUN_DIR/$NAME-auth.json"
LOG="$OUT/api-local.log"
RESOURCES=0

cleanup() {
    local rc=$?
    set +e
    stop_group "$PIDFILE" api-local
    if [[ $RESOURCES == 1 ]]; then
        "$LOCALSTACK_VENV/bin/python" "$ROOT/localstack/init.py" --prefix "$NAME" --delete >/dev/null 2>&1 ||
            warn "could not delete the $NAME-* bucket and queues"
        "$(mariadb_client)" -h"$MARIADB_HOST" -P"$MARIADB_PORT" -uroot -e "DROP DATABASE IF EXISTS \`$DB\`" ||
            warn "could not drop database $DB"
    fi
    rm -f "$ENV_FILE" "$AUTH_FILE"
    [[ $LOCALSTACK_STARTED == 1 ]] && localstack_stop api-fuzz
    [[ $MARIADB_STARTED == 1 ]] && mariadb_stop api-fuzz
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_run_dir
rm -rf "$OUT" && mkdir -p "$OUT"
"$ROOT/scripts/setup.sh" >&2
PY=$(python_env api-fuzz "schemathesis==$SCHEMATHESIS_VERSION")
mariadb_ensure api-fuzz
localstack_start api-fuzz
export AWS_ENDPOINT_URL="$LOCALSTACK_URL" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN

RESOURCES=1
mariadb_create_db "$DB"
(umask 077 && "$LOCALSTACK_VENV/bin/python" "$ROOT/localstack/init.py" --prefix "$NAME" --env-file "$ENV_FILE" >/dev/null)

log "building (cargo build --workspace --bins)"
cargo build --workspace --bins >&2
BIN="$CARGO_TARGET_DIR/debug/api-local"

token() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }
ALICE=$(token) BOB=$(token)
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ADDR="127.0.0.1:$PORT"
(
    set -a
    # shellcheck source=/dev/null
    source "$ENV_FILE"
    set +a
    export DATABASE_URL="mysql://root@$MARIADB_HOST:$MARIADB_PORT/$DB" AUTH_MODE=static \
        API_TOKENS="$ALICE:alice,$BOB:Alice" BIND_ADDR="$ADDR" LOG_FORMAT=json RUST_LOG="${RUST_LOG:-info}" \
        WEBHOOK_SECRET="$(token)"
    exec setsid "$BIN"
) </dev/null >"$LOG" 2>&1 &
echo "$!" >"$PIDFILE"
for ((i = 0; i < 120; i++)); do http_ok "http://$ADDR/healthz" && break; sleep 0.25; done
http_ok "http://$ADDR/healthz" || { tail -n 20 "$LOG" >&2; die "api-local did not start (log: $LOG)"; }

# Web Fuzzing Commons auth file: the two callers, whose names differ only in case (read by
# scripts/lib/api-fuzz.toml): each must stay out of the other's jobs.
(umask 077 && cat >"$AUTH_FILE" <<JSON
{"auth": [
  {"name": "alice", "fixedHeaders": [{"name": "Authorization", "value": "Bearer $ALICE"}]},
  {"name": "Alice", "fixedHeaders": [{"name": "Authorization", "value": "Bearer $BOB"}]}
]}
JSON
)

# Every check schemathesis has; the hooks accept the two documented behaviours named above.
cmd=(schemathesis --config-file scripts/lib/api-fuzz.toml run "http://$ADDR/v1/openapi.json"
    --checks all --max-examples "$max_examples" --seed "$seed" --request-timeout 10
    --phases "examples,coverage,fuzzing,stateful" --continue-on-failure
    --report "junit,ndjson" --report-dir "$OUT" ${extra[@]+"${extra[@]}"})
log "running: ${cmd[*]}"
start=$(date +%s)
rc=0
API_FUZZ_HOOKS="$ROOT/scripts/lib/api_fuzz_hooks.py" API_FUZZ_AUTH="$AUTH_FILE" \
    API_FUZZ_DROPPED="$OUT/dropped.txt" API_FUZZ_CACHE="$RUN_DIR/api-fuzz-cache" \
    timeout "$time_limit" "$(dirname "$PY")/${cmd[0]}" --no-color "${cmd[@]:1}" >"$OUT/schemathesis.txt" 2>&1 || rc=$?
secs=$(($(date +%s) - start))
((rc == 0)) || sed -n '/= FAILURES =/,$p' "$OUT/schemathesis.txt" | cut -c1-400 | head -n 200 >&2

printf 'schemathesis: %s\n' "$SCHEMATHESIS_VERSION"
printf 'command: %s\n' "${cmd[*]}"
printf 'seed: %s\n' "$seed"
printf 'max_examples: %s\n' "$max_examples"
# Schemathesis's own summary, e.g. "651 generated, 2 found 2 unique failures, 7 skipped".
summary=$(grep -E '^ *[0-9]+ generated' "$OUT/schemathesis.txt" | tail -n 1 | sed 's/^ *//' || true)
generated=$(sed -nE 's/^([0-9]+) generated.*/\1/p' <<<"$summary")
unique=$(sed -nE 's/.* ([0-9]+) unique failures?.*/\1/p' <<<"$summary")
printf 'operations: %s\n' "$(sed -nE 's/^ *Tested: ([0-9]+).*/\1/p' "$OUT/schemathesis.txt" | tail -n 1)"
printf 'generated_cases: %s\n' "${generated:-0}"
printf 'failures: %s\n' "${unique:-0}"
printf 'accepted_by_hooks: %s\n' "$(wc -l <"$OUT/dropped.txt" 2>/dev/null || echo 0)"
printf 'cases_summary: %s\n' "$summary"
printf 'seconds: %s\n' "$secs"
printf 'exit_code: %s\n' "$rc"
printf 'report: %s\n' "${OUT#"$ROOT"/}/schemathesis.txt"
((rc == 0)) || exit "$rc"
