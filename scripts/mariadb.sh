#!/usr/bin/env bash
# MariaDB for local development and tests, on 127.0.0.1:3306 as root without a password.
# Usage: scripts/mariadb.sh ensure|stop|status
#   ensure  reuse a server that answers; otherwise install (apt mariadb-server) and start one
#           (recorded in .run/mariadb.pid). Then create database ocr_fleet if missing (the dev
#           system's; tests make their own random databases).
#   stop    stop the server only if these scripts started it
#   status  exit 0 when a server answers
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/mariadb.sh
source "$ROOT/scripts/lib/mariadb.sh"

case "${1:-}" in
ensure)
    mariadb_ensure manual
    mariadb_create_db "${OCR_DB_NAME:-ocr_fleet}"
    log "database ${OCR_DB_NAME:-ocr_fleet} ready: mysql://root@$MARIADB_HOST:$MARIADB_PORT/${OCR_DB_NAME:-ocr_fleet}"
    ;;
stop) mariadb_stop "" ;;
status)
    if mariadb_answers; then
        echo "MariaDB answers on $MARIADB_HOST:$MARIADB_PORT"
    else
        echo "MariaDB not answering on $MARIADB_HOST:$MARIADB_PORT"
        exit 3
    fi
    ;;
*)
    echo "usage: $0 ensure|stop|status" >&2
    exit 2
    ;;
esac
