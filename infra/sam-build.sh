#!/usr/bin/env bash
# `sam build` of the two functions (api, on-upload) with cargo-lambda for arm64, the way
# scripts/deploy.sh and scripts/test.sh run it: tools from .venv/infra (infra/setup.sh), its own
# cargo target dir outside the clone ($OCR_FLEET_CACHE/target-lambda, so every clone and CI reuse
# the aarch64 release build of the AWS SDK), offline-capable once crates are fetched.
# Usage: infra/sam-build.sh [sam build args...]
# Env: OCR_SAM_NICE=1 runs the build at nice 19 (scripts/test.sh sets it).
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
cd "$ROOT"

"$ROOT/infra/setup.sh" >&2
export PATH="$ROOT/.venv/infra/bin:$PATH"
export CARGO_TARGET_DIR="$OCR_FLEET_CACHE/target-lambda"
export SAM_CLI_TELEMETRY=0 SAM_CLI_CONTEXT_BROWSER=false
# sam needs a region to read the template's parameters; no AWS call is made.
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-$AWS_REGION}"

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    log "adding rust target aarch64-unknown-linux-gnu"
    rustup target add aarch64-unknown-linux-gnu >&2
fi

# sam's cache keys on each function's CodeUri (functions/api) alone: a change in the crates it
# builds against (functions/core, functions/aws) or in Cargo.lock would reuse a stale binary. A
# fingerprint of those sources drops the cache when they changed (cargo's own target dir still
# makes the rebuild incremental).
sources=$(find Cargo.toml Cargo.lock functions -type f -not -path '*/target/*' -print0 | sort -z |
    xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
stamp=.aws-sam/ocr-sources.sha256
if [[ -d .aws-sam/cache && "$(cat "$stamp" 2>/dev/null)" != "$sources" ]]; then
    log "the functions' sources changed since sam's cached build: dropping its cache"
    rm -rf .aws-sam/cache
fi
cmd=(sam build --beta-features --cached --parallel "$@")
if [[ "${OCR_SAM_NICE:-0}" == 1 ]]; then cmd=(nice -n 19 "${cmd[@]}"); fi
log "CARGO_TARGET_DIR=$CARGO_TARGET_DIR ${cmd[*]}"
start=$(date +%s)
"${cmd[@]}"
for f in api on-upload; do
    fn=$([[ $f == api ]] && echo ApiFunction || echo OnUploadFunction)
    bin=".aws-sam/build/$fn/bootstrap"
    [[ -x "$bin" ]] || die "sam build left no $bin"
    file_info=$(file -b "$bin" 2>/dev/null || true)
    if [[ -n "$file_info" && "$file_info" != *aarch64* ]]; then die "$bin is not arm64: $file_info"; fi
done
echo "$sources" >"$stamp"
log "sam build done in $(($(date +%s) - start)) s"
