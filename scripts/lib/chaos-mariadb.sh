#!/usr/bin/env bash
# A private MariaDB for `scripts/chaos.sh --db-kill`, which kills it with SIGKILL mid-run and
# starts it again: its own data directory (.run/chaos-mariadb), port (OCR_CHAOS_MARIADB_PORT,
# default 3317) and pid file, so the shared server on 3306 is never touched.
#
# Usage: scripts/lib/chaos-mariadb.sh start|stop|pid|port
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=scripts/lib/mariadb.sh
source "$ROOT/scripts/lib/mariadb.sh"

port="${OCR_CHAOS_MARIADB_PORT:-3317}"
dir="$RUN_DIR/chaos-mariadb"
data="$dir/data"
pidfile="$dir/mariadbd.pid"

answers() {
    "$(mariadb_client)" -h127.0.0.1 -P"$port" -uroot --connect-timeout=2 -e 'select 1' >/dev/null 2>&1
}

case "${1:-}" in
start)
    ensure_run_dir
    install -d "$dir"
    if answers; then
        exit 0
    fi
    mariadb_install
    user=$(id -un)
    _mariadb_init_datadir "$data" "$user" --no-defaults
    start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$pidfile" \
        --exec /usr/sbin/mariadbd -- --no-defaults --user="$user" --datadir="$data" \
        --bind-address=127.0.0.1 --port="$port" --socket="$data/mariadb.sock" \
        --pid-file="$data/mariadbd.pid" --log-error="$data/error.log"
    for ((i = 0; i < 300; i++)); do
        answers && exit 0
        sleep 0.2
    done
    tail -n 20 "$data/error.log" >&2 || true
    die "the chaos MariaDB did not answer on 127.0.0.1:$port within 60 s"
    ;;
stop)
    if pid=$(read_pidfile "$pidfile"); then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
    fi
    rm -f "$pidfile"
    ;;
pid) read_pidfile "$pidfile" ;;
port) echo "$port" ;;
*) die "usage: $0 start|stop|pid|port" ;;
esac
