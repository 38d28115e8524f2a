#!/bin/bash
# ocr-fleet-dlq: the operators' dead-letter tool, `gpu-worker dlq list|redrive [--reset-jobs]`, on
# a worker, where the database is reachable, with the worker's own settings (DATABASE_URL and
# DATABASE_PASSWORD: the worker's database user; the region) and this stage's queue names
# (ocr-<stage>-<queue>-dlq). Installed by the bootstrap as /usr/local/bin/ocr-fleet-dlq. From a
# laptop, through Session Manager:
#   aws ssm start-session --target <instance id of a worker>
#   sudo ocr-fleet-dlq list
#   sudo ocr-fleet-dlq redrive --queue express --reset-jobs
# sudo, because the worker's settings (/etc/ocr-fleet/worker.env) are root's; the tool itself
# runs as the worker's user.
# Test hooks (infra/tests/test_worker.py): OCR_BOOTSTRAP_ROOT prefixes every path; runuser is
# found on PATH.
set -euo pipefail

R="${OCR_BOOTSTRAP_ROOT:-}"
ETC="$R/etc/ocr-fleet"
[[ -r "$ETC/worker.env" ]] || { echo "ocr-fleet-dlq: cannot read $ETC/worker.env: run it with sudo" >&2; exit 1; }
# KEY=value lines (systemd's EnvironmentFile format), taken as they are, not as shell.
while IFS= read -r line; do
    if [[ "$line" == [A-Z]*=* ]]; then export "${line?}"; fi
done < <(cat "$ETC/stack.env" "$ETC/worker.env")
# The stage names the queues (the tool reads STAGE); its own log lines as text for a person.
export STAGE LOG_FORMAT=text
exec runuser -u ocr-fleet -- "$R/opt/ocr-fleet/bin/gpu-worker" dlq "$@"
