#!/usr/bin/env bash
# The one test command (CI runs it through .ci/run). From a fresh Debian 12 machine it:
#   1. installs what is missing (scripts/setup.sh: Debian packages, .venv/localstack)
#   2. ensures MariaDB on 127.0.0.1:3306 and LocalStack on 127.0.0.1:4566 (starting each only if
#      none answers, and stopping at exit only what it started), and starts a private MariaDB
#      that requires TLS on 127.0.0.1:3307 (scripts/lib/mariadb-tls.sh)
#   3. fetches the OCR models when scripts/fetch-models.sh exists (exports ORT_DYLIB_PATH,
#      OCR_MODEL_DIR and OCR_REQUIRE_MODELS=1), and the output-format checkers (hocr-check,
#      xmllint with the ALTO v4 schema, pdftotext: scripts/lib/checkers.sh)
#   4. runs cargo fmt --check, cargo clippy -D warnings, a check that the fuzz targets compile,
#      cfn-lint template.yaml, scripts/openapi-clients.sh (openapi-python-client and
#      openapi-typescript on the API's OpenAPI document: a schema they drop fails, and the code
#      they generate must compile and type-check), a smoke run of
#      localstack/init.py, localstack/check_template.py (the template's non-compute core deployed
#      to LocalStack: names vs init.py, redrive, visibility, alarm thresholds), infra/check.sh
#      (sam validate --lint, shellcheck, deploy.sh --dry-run, pytest infra/tests), the workspace
#      tests (cargo nextest, else cargo test), scripts/api-fuzz.sh (schemathesis against the
#      API's OpenAPI document, 50 examples, fixed seed), scripts/browser-check.sh (the browser
#      page in headless Chromium against the local pipeline), scripts/chaos.sh --jobs 100 (load with
#      faults, long database faults included) and --flood 200 (two callers, one flooding), then `sam build` (infra/sam-build.sh; skipped
#      only with OCR_SKIP_SAM_BUILD=1)
#   5. prints a timing summary; exits non-zero if any step failed.
#
# Usage: scripts/test.sh [ARGS...]   ARGS go to `cargo nextest run` / `cargo test` (e.g. a filter).
# Env:   CARGO_TARGET_DIR (default ${OCR_FLEET_CACHE:-~/.cache/ocr-fleet}/target, shared by all
#        scripts and clones), CI=true (no stdin needed; it never is), OCR_SKIP_SAM_BUILD=1.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/mariadb.sh
source "$ROOT/scripts/lib/mariadb.sh"
# shellcheck source=scripts/lib/mariadb-tls.sh
source "$ROOT/scripts/lib/mariadb-tls.sh"
# shellcheck source=scripts/lib/localstack.sh
source "$ROOT/scripts/lib/localstack.sh"
cd "$ROOT"
exec </dev/null # nothing here may wait for input

T0=$(date +%s)
FAILED=()
TEST_SUMMARY="$RUN_DIR/test-summary.txt"

cleanup() {
    local rc=$?
    set +e
    if [[ $LOCALSTACK_STARTED == 1 ]]; then localstack_stop test; fi
    if [[ $MARIADB_STARTED == 1 ]]; then mariadb_stop test; fi
    mariadb_tls_stop
    print_timings
    printf '%-34s %8s\n' "total" "$(($(date +%s) - T0))" >&2
    if ((${#FAILED[@]})); then
        printf '\nFAILED: %s\n' "${FAILED[*]}" >&2
        rc=1
    fi
    # The test runner's own closing line, last, for whoever reads the end of the log.
    [[ -s "$TEST_SUMMARY" ]] && cat "$TEST_SUMMARY"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# check NAME CMD...: run a check step; remember a failure but go on with the other checks.
check() {
    step "$@" || FAILED+=("$1")
}

ensure_run_dir
rm -f "$TEST_SUMMARY"

step "setup" "$ROOT/scripts/setup.sh"
step "mariadb" mariadb_ensure test
# A second, private MariaDB that requires TLS with its own CA (the production connection shape):
# exports TEST_TLS_DATABASE_URL and TEST_DATABASE_CA_FILE for tests/integration/tls.rs.
step "mariadb (TLS)" mariadb_tls_start
step "localstack start" localstack_start test

export AWS_ENDPOINT_URL="$LOCALSTACK_URL"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN
# Tests create (and drop) their own randomly named databases on this server.
export TEST_DATABASE_URL="mysql://root@$MARIADB_HOST:$MARIADB_PORT"
# For tests that want to make a resource set with the project's script.
export LOCALSTACK_PYTHON="$LOCALSTACK_VENV/bin/python" LOCALSTACK_INIT="$ROOT/localstack/init.py"

fetch_models() {
    local out line
    out=$("$ROOT/scripts/fetch-models.sh" --print-env) || return
    eval "$out"
    # Export whatever it set, whether or not it printed `export`.
    while IFS= read -r line; do
        if [[ $line =~ ^(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)= ]]; then
            export "${BASH_REMATCH[2]?}"
        fi
    done <<<"$out"
    export OCR_REQUIRE_MODELS=1
    log "models: ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-} OCR_MODEL_DIR=${OCR_MODEL_DIR:-}"
}
if [[ -f "$ROOT/scripts/fetch-models.sh" ]]; then
    step "fetch models" fetch_models
fi
# hocr-check, xmllint + the ALTO v4 schema, pdftotext: the format tests then must run them.
# shellcheck source=scripts/lib/checkers.sh
source "$ROOT/scripts/lib/checkers.sh"
format_checkers() {
    checkers_ensure
    export OCR_REQUIRE_CHECKERS=1
}
step "format checkers" format_checkers

init_smoke() {
    # Create a throw-away resource set twice (idempotence), then delete it.
    local prefix="ci-smoke-$$" out
    # The output is captured first: `grep -q` on a pipe would exit at the first match and the
    # writer's broken pipe would fail the step under pipefail.
    "$LOCALSTACK_PYTHON" "$LOCALSTACK_INIT" --prefix "$prefix" >/dev/null &&
        out=$("$LOCALSTACK_PYTHON" "$LOCALSTACK_INIT" --prefix "$prefix") &&
        grep -q "^UPLOAD_BUCKET=$prefix-uploads$" <<<"$out" &&
        "$LOCALSTACK_PYTHON" "$LOCALSTACK_INIT" --prefix "$prefix" --delete
}

run_tests() {
    local out="$RUN_DIR/test-output.log" rc=0
    # Worker tests start the real gpu-worker binary: build every binary first (one build set,
    # so the test build below reuses its dependencies).
    cargo build --workspace --bins || return
    if command -v cargo-nextest >/dev/null 2>&1; then
        cargo nextest run --workspace --no-fail-fast --no-tests=warn "$@" 2>&1 | tee "$out" || rc=$?
        grep -E '^ *Summary \[' "$out" | tail -n 1 | sed 's/^ *//' >"$TEST_SUMMARY" || true
        # nextest does not run doc tests.
        if ((rc == 0)) && (($# == 0)); then
            cargo test --workspace --doc 2>&1 | tee -a "$out" || rc=$?
        fi
    else
        cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$out" || rc=$?
        grep -E '^test result:' "$out" >"$TEST_SUMMARY" || true
    fi
    if (($# == 0)); then
        eval_regression "$out" || rc=$?
    fi
    return "$rc"
}

# eval_regression LOG: the engine's eval-regression tests (ignored by default: they read the
# shared evaluation sets, which a user's clone does not have) when OCR_EVAL_DIR (default
# ../shared/eval beside the clone) holds them; otherwise they are reported as not run, in the
# summary too, never as passed.
eval_regression() {
    local out=$1 dir="${OCR_EVAL_DIR:-$ROOT/../shared/eval}"
    if [[ -f "$dir/A/manifest.jsonl" && -f "$dir/B/manifest.jsonl" ]]; then
        local rc=0
        if command -v cargo-nextest >/dev/null 2>&1; then
            OCR_EVAL_DIR="$dir" cargo nextest run -p ocr-engine --test real_models --run-ignored only \
                -E 'test(/^eval_/)' 2>&1 | tee -a "$out" || rc=$?
        else
            OCR_EVAL_DIR="$dir" cargo test -p ocr-engine --test real_models -- --ignored eval_ 2>&1 |
                tee -a "$out" || rc=$?
        fi
        echo "eval regression (sets A, B at $dir): $( ((rc == 0)) && echo passed || echo FAILED)" >>"$TEST_SUMMARY"
        return "$rc"
    else
        log "eval regression NOT RUN: no evaluation sets at $dir (set OCR_EVAL_DIR)"
        echo "eval regression: NOT RUN (no evaluation sets at $dir; the 3 eval_* tests above count as skipped)" \
            >>"$TEST_SUMMARY"
    fi
}

check "cargo fmt --check" cargo fmt --all -- --check
check "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
# fuzz/ is its own workspace (cargo-fuzz builds it with sanitizers, scripts/fuzz.sh); checking
# it here keeps a change in ocr-core or ocr-engine from breaking the fuzz targets unnoticed.
check "fuzz targets compile" cargo check --manifest-path fuzz/Cargo.toml --bins --locked
check "cfn-lint template.yaml" "$LOCALSTACK_VENV/bin/cfn-lint" template.yaml
# Real client generators on functions/api/openapi.json (pinned; installed into $OCR_FLEET_CACHE).
check "openapi clients" "$ROOT/scripts/openapi-clients.sh"
check "localstack init smoke" init_smoke
check "template infra on LocalStack" "$LOCALSTACK_PYTHON" "$ROOT/localstack/check_template.py"
check "infra checks" "$ROOT/infra/check.sh"
check "cargo tests" run_tests "$@"
# Schemathesis against the served OpenAPI document (its own api-local, prefix and database; the
# binaries the tests just built): no 5xx, every response as documented, two callers kept apart.
# A fixed seed keeps CI reproducible; scripts/api-fuzz.sh without --seed explores new cases.
if (($# == 0)); then
    check "api fuzz (schemathesis)" "$ROOT/scripts/api-fuzz.sh" --max-examples 50 --seed 20261129 --time-limit 300
fi
# The browser page in headless Chromium (Debian's package) against the local pipeline: the
# presigned PUT's CORS preflight, a real upload from the page, the result drawn and screenshotted.
if (($# == 0)); then
    check "browser page (headless Chromium)" "$ROOT/scripts/browser-check.sh"
fi
# Load with faults (scripts/chaos.sh, small): its own LocalStack on :4599, the dev binaries the
# tests just built; fails when a job is lost or duplicated, a webhook missing, a secret logged.
# Besides the short faults: the database down 20 s (upload events reach their DLQ and are swept
# back), hung 10 s, and its private server SIGKILLed and restarted.
if (($# == 0)); then
    check "chaos (100 jobs)" "$ROOT/scripts/chaos.sh" --profile dev --jobs 100 --rate 3 --timeout 600 \
        --db-outage 20 --db-hang 10 --db-kill
    # Two callers, one flooding: nothing lost, the quiet one never refused, the flooder held.
    check "chaos (two callers)" "$ROOT/scripts/chaos.sh" --profile dev --flood 200 --jobs 30 --rate 1 --timeout 600
fi
# sam build of the functions (cargo-lambda, arm64; its own target dir under $OCR_FLEET_CACHE):
# skipped only with OCR_SKIP_SAM_BUILD=1.
if [[ "${OCR_SKIP_SAM_BUILD:-0}" == 1 ]]; then
    log "sam build skipped (OCR_SKIP_SAM_BUILD=1)"
else
    check "sam build" env OCR_SAM_NICE=1 "$ROOT/infra/sam-build.sh"
fi
