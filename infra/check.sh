#!/usr/bin/env bash
# The infrastructure checks that need no AWS account (scripts/test.sh runs them):
#   cfn-lint template.yaml (.venv/infra's, newer than .venv/localstack's), sam validate --lint,
#   checkov (security findings; deliberate ones are skipped in the template with a reason),
#   promtool check config infra/prometheus/prometheus.yml,
#   ShellCheck of the deploy and worker scripts, scripts/deploy.sh --dry-run, and the pytest
#   suite infra/tests/ (scaling arithmetic, capacity vs template defaults, IAM and encryption,
#   worker bootstrap in a sandbox against config.rs, dashboards vs the worker's metrics).
# LocalStack's part is localstack/check_template.py; `sam build` is infra/sam-build.sh.
# Usage: infra/check.sh [pytest args...]
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
cd "$ROOT"

"$ROOT/infra/setup.sh"
ensure_run_dir # deploy.sh --dry-run's output goes there; a fresh clone has no .run/
VENV="$ROOT/.venv/infra"
export SAM_CLI_TELEMETRY=0 SAM_CLI_CONTEXT_BROWSER=false
# sam validate needs a region and some credentials to start; it calls no AWS API with --lint.
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-$AWS_REGION}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
failed=()

log "cfn-lint template.yaml ($("$VENV/bin/cfn-lint" --version))"
"$VENV/bin/cfn-lint" template.yaml || failed+=("cfn-lint")
log "sam validate --lint"
"$VENV/bin/sam" validate --lint --template template.yaml || failed+=("sam validate --lint")
if command -v shellcheck >/dev/null 2>&1; then
    log "shellcheck"
    shellcheck -x scripts/deploy.sh infra/*.sh infra/worker/*.sh || failed+=("shellcheck")
else
    apt_install shellcheck && shellcheck -x scripts/deploy.sh infra/*.sh infra/worker/*.sh || failed+=("shellcheck")
fi
log "scripts/deploy.sh --dry-run"
"$ROOT/scripts/deploy.sh" --dry-run --param JwtIssuer=https://issuer.example.com --param JwtAudience=ocr \
    --capacity "--images-per-sec 6" >"$RUN_DIR/deploy-dry-run.txt" || failed+=("deploy.sh --dry-run")
# The dry run shows the preflight (quotas, Lambda concurrency, first create) and the deploy.
for want in "sam deploy --config-env default --stack-name ocr-fleet-prod" "--quota-code L-DB2E81BA" \
    "--quota-code L-3819A6DF" "lambda get-account-settings" "DatabaseDeletionProtection=false" \
    "ParameterKey=DatabaseDeletionProtection\\,ParameterValue=true"; do
    grep -qF -- "$want" "$RUN_DIR/deploy-dry-run.txt" || failed+=("deploy.sh --dry-run output lacks $want")
done
log "checkov (template.yaml; deliberate findings carry Metadata checkov skip comments)"
"$ROOT/.venv/checkov/bin/checkov" -f template.yaml --framework cloudformation --compact --quiet --skip-download ||
    failed+=("checkov")
# promtool from Debian's prometheus package, unpacked (not installed) into the cache.
promtool_bin() {
    local dir="$OCR_FLEET_CACHE/promtool" tmp
    if command -v promtool >/dev/null 2>&1; then command -v promtool; return 0; fi
    if [[ ! -x "$dir/usr/bin/promtool" ]]; then
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) || { rm -rf "$tmp"; return 1; }
        dpkg-deb -x "$tmp"/prometheus_*.deb "$dir" && rm -rf "$tmp"
    fi
    printf '%s\n' "$dir/usr/bin/promtool"
}
if promtool=$(promtool_bin); then
    log "promtool check config infra/prometheus/prometheus.yml"
    "$promtool" check config infra/prometheus/prometheus.yml >&2 || failed+=("promtool")
else
    warn "promtool unavailable (apt-get download prometheus failed): prometheus.yml only parsed by pytest"
fi
log "pytest infra/tests"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider infra/tests "$@" || failed+=("pytest infra/tests")

if ((${#failed[@]})); then
    printf 'infra checks FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
log "infra checks passed"
