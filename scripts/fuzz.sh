#!/usr/bin/env bash
# Fuzzes the code that reads untrusted input, with cargo-fuzz (libFuzzer + AddressSanitizer), for
# a bounded time per target, one target after another; prints executions and crashes per target.
# On demand only: scripts/test.sh does not run or build it.
#
# Usage: scripts/fuzz.sh [--seconds N] [--build-only] [TARGET...]
#   TARGET        decode          image bytes -> decode_image (50 MP limit) -> detector and
#                                 page-orientation pre-processing
#                 engine          image bytes -> the whole engine with fake models (no ORT)
#                 create_json     POST /v1/jobs JSON body -> ocr_core::request::parse_create_request
#                 create_request  content-type, Idempotency-Key, query, body -> parse_create
#                 (default: all four)
#   --seconds N   fuzzing time per target (default 60)
#   --build-only  build the targets and stop
#
# Installs cargo-fuzz from crates.io (--locked) when missing. Works on a stable toolchain:
# RUSTC_BOOTSTRAP=1 lets it pass the -Z flags cargo-fuzz needs (sanitizer, coverage).
# Builds go to $OCR_FLEET_CACHE/fuzz-target (outside the clone, apart from the main target dir).
# Corpus: fuzz/corpus/<target> (grows, ignored by git), seeded from fuzz/seeds/ (in git; image
# seeds come from `OCR_FUZZ_SEEDS=fuzz/seeds/images cargo test -p ocr-engine --test
# hostile_images -- --ignored write_fuzz_seeds`). Crashes, timeouts (> 10 s per input) and
# out-of-memory inputs (> 4 GB RSS) land in fuzz/artifacts/<target>/ (ignored); replay one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz <target> fuzz/artifacts/<target>/<file>
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ALL_TARGETS=(decode engine create_json create_request pdf_facts text_layer)
seconds=60 build_only=0 targets=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
        --build-only) build_only=1; shift ;;
        -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) targets+=("$1"); shift ;;
    esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || die "unknown target $t (one of: ${ALL_TARGETS[*]})"
done
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || die "--seconds wants a positive whole number"

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz from crates.io"
    # Its own temporary target dir: the shared one may be locked by a workspace build.
    env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
FUZZ_TARGET_DIR="$OCR_FLEET_CACHE/fuzz-target"
cd "$ROOT"
log "building fuzz targets: ${targets[*]}"
for t in "${targets[@]}"; do
    cargo fuzz build --fuzz-dir fuzz --target-dir "$FUZZ_TARGET_DIR" "$t"
done
[[ "$build_only" == 1 ]] && exit 0

# Seeds and libFuzzer options per target.
seeds_of() {
    case "$1" in
        decode | engine) echo fuzz/seeds/images ;;
        text_layer) echo fuzz/seeds/pdf_facts ;;
        *) echo "fuzz/seeds/$1" ;;
    esac
}
opts_of() {
    case "$1" in
        decode | engine) echo "-max_len=65536" ;;
        create_json) echo "-max_len=8192 -dict=fuzz/dicts/json.dict" ;;
        create_request) echo "-max_len=8192" ;;
        pdf_facts | text_layer) echo "-max_len=65536" ;;
    esac
}

summary=()
status=0
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t" artifacts="fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts" "$RUN_DIR"
    logf="$RUN_DIR/fuzz-$t.log"
    before=$(find "$artifacts" -type f | wc -l)
    log "fuzzing $t for ${seconds}s (log: $logf)"
    started=$SECONDS
    set +e
    # shellcheck disable=SC2046 # options are split on purpose
    cargo fuzz run --fuzz-dir fuzz --target-dir "$FUZZ_TARGET_DIR" "$t" "$corpus" "$(seeds_of "$t")" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" $(opts_of "$t") >"$logf" 2>&1
    rc=$?
    set -e
    ran=$((SECONDS - started))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logf" | tail -n1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$logf" | tail -n1)
    found=$(($(find "$artifacts" -type f | wc -l) - before))
    # libFuzzer exits 0 when time runs out; anything else is a finding (or a broken build).
    if [[ $rc -ne 0 && $found -eq 0 ]]; then found=1; fi
    [[ $found -eq 0 ]] || status=1
    line=$(printf '%-15s %4ss  executions %-10s peak RSS %5s MB  crashes %s' \
        "$t" "$ran" "${execs:-?}" "${rss:-?}" "$found")
    summary+=("$line")
    if [[ $found -ne 0 ]]; then
        grep -E '^(==[0-9]+==ERROR|SUMMARY|thread .* panicked|artifact_prefix|Test unit written)' "$logf" | head -n 8 >&2 || true
    fi
done
printf '%s\n' "${summary[@]}"
exit "$status"
