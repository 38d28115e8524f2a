#!/usr/bin/env bash
# LocalStack in host mode (no Docker) on 127.0.0.1:4566.
# Usage: scripts/localstack.sh start|stop|status|logs
#   start   start it unless one already answers (then it is reused and never stopped by us)
#   stop    stop the one these scripts started (whole process group); leaves others alone
#   status  exit 0 when one answers, 3 when not
#   logs    tail -f .run/localstack.log
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/localstack.sh
source "$ROOT/scripts/lib/localstack.sh"

case "${1:-}" in
start) localstack_start manual ;;
stop) localstack_stop "" ;;
status) localstack_status ;;
logs) exec tail -n 100 -f "$LOCALSTACK_LOG" ;;
*)
    echo "usage: $0 start|stop|status|logs" >&2
    exit 2
    ;;
esac
