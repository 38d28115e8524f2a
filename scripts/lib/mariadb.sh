# shellcheck shell=bash
# MariaDB on 127.0.0.1:3306 (root, no password). Source after common.sh.

MARIADB_HOST=127.0.0.1
MARIADB_PORT="${OCR_MARIADB_PORT:-3306}"
# Data directory used when a server has to be started: Debian's by default. A second server
# (another port) needs its own, e.g. OCR_MARIADB_PORT=3307 OCR_MARIADB_DATADIR=/tmp/mdb.
MARIADB_DATADIR="${OCR_MARIADB_DATADIR:-/var/lib/mysql}"
MARIADB_PIDFILE="$RUN_DIR/mariadb.pid"
MARIADB_OWNERFILE="$RUN_DIR/mariadb.owner"

mariadb_client() {
    if command -v mariadb >/dev/null 2>&1; then echo mariadb; elif command -v mysql >/dev/null 2>&1; then echo mysql; else return 1; fi
}

# mariadb_answers: true when a server answers on 127.0.0.1:3306 as root without password.
mariadb_answers() {
    local c
    c=$(mariadb_client) || return 1
    "$c" -h"$MARIADB_HOST" -P"$MARIADB_PORT" -uroot --connect-timeout=2 -e 'select 1' >/dev/null 2>&1
}

# A fresh Debian mariadb-server lets root in through the unix socket only. When that is the
# case, allow root without a password over TCP from 127.0.0.1 too (what the tests expect).
# Local development machines only: the server listens on 127.0.0.1.
_mariadb_fix_root_tcp() {
    local c
    c=$(mariadb_client) || return 1
    "$c" -uroot --connect-timeout=2 -e 'select 1' >/dev/null 2>&1 || return 1
    log "MariaDB: allowing root without password over TCP from 127.0.0.1 (socket login worked)"
    "$c" -uroot -e "ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
        CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY '';
        GRANT ALL PRIVILEGES ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;
        FLUSH PRIVILEGES;" && mariadb_answers
}

# _mariadb_init_datadir DIR USER [--no-defaults]: a data directory owned by USER (the user the
# server runs as), initialised once, root without a password. --no-defaults: ignore the system's
# my.cnf (whose user=mysql would win over USER), for a server started with --no-defaults too.
_mariadb_init_datadir() {
    local dir=$1 user=$2
    [[ -d "$dir/mysql" ]] && return 0
    log "initialising the data directory $dir"
    install -d -o "$user" -g "$(id -gn "$user")" "$dir"
    mariadb-install-db "${@:3}" --user="$user" --datadir="$dir" --auth-root-authentication-method=normal >/dev/null
}

# mariadb_install: install client (and server when none answers). Idempotent; no start.
mariadb_install() {
    if mariadb_answers; then
        return 0
    fi
    if mariadb_client >/dev/null && [[ -x /usr/sbin/mariadbd ]]; then
        return 0
    fi
    apt_install mariadb-server mariadb-client
}

# mariadb_ensure [OWNER]: make a server answer on 127.0.0.1:3306. Starts one (and records it
# in .run/mariadb.pid and .run/mariadb.owner so it can be stopped by mariadb_stop) only when
# none answers. Sets MARIADB_STARTED=1 when this call started it.
MARIADB_STARTED=0
mariadb_ensure() {
    local owner=${1:-manual}
    if mariadb_answers; then
        log "MariaDB answers on $MARIADB_HOST:$MARIADB_PORT (reusing it)"
        return 0
    fi
    if [[ "$MARIADB_PORT" == 3306 ]] && _mariadb_fix_root_tcp; then
        return 0
    fi
    mariadb_install
    # apt's postinst may have started the server.
    if mariadb_answers || { [[ "$MARIADB_PORT" == 3306 ]] && _mariadb_fix_root_tcp; }; then
        log "MariaDB answers on $MARIADB_HOST:$MARIADB_PORT"
        return 0
    fi
    ensure_run_dir
    log "starting MariaDB (mariadbd) on $MARIADB_HOST:$MARIADB_PORT, data in $MARIADB_DATADIR"
    local extra=()
    if [[ "$MARIADB_DATADIR" == /var/lib/mysql ]]; then
        # Debian's packaged server wants its socket directory.
        install -d -o mysql -g mysql /run/mysqld 2>/dev/null || mkdir -p /run/mysqld
    else
        # A private server: its own socket, pid file and error log (in its data dir, which the
        # mysql user owns), so it can sit beside Debian's.
        extra=(--socket="$MARIADB_DATADIR/mariadb.sock" --pid-file="$MARIADB_DATADIR/mariadbd.pid"
            --log-error="$MARIADB_DATADIR/error.log")
    fi
    _mariadb_init_datadir "$MARIADB_DATADIR" mysql
    # --pidfile makes start-stop-daemon look only for OUR server (not any mariadbd running).
    start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$MARIADB_PIDFILE" \
        --exec /usr/sbin/mariadbd -- --user=mysql --datadir="$MARIADB_DATADIR" \
        --bind-address="$MARIADB_HOST" --port="$MARIADB_PORT" "${extra[@]}"
    local i
    for ((i = 0; i < 300; i++)); do
        if mariadb_answers || { [[ "$MARIADB_PORT" == 3306 ]] && _mariadb_fix_root_tcp; }; then
            # shellcheck disable=SC2034 # read by the sourcing script
            MARIADB_STARTED=1
            echo "$owner" >"$MARIADB_OWNERFILE"
            log "MariaDB is up (pid $(<"$MARIADB_PIDFILE"))"
            return 0
        fi
        sleep 0.2
    done
    [[ -f "$MARIADB_DATADIR/error.log" ]] && tail -n 20 "$MARIADB_DATADIR/error.log" >&2
    die "MariaDB did not answer on $MARIADB_HOST:$MARIADB_PORT within 60 s"
}

# mariadb_stop [OWNER]: stop a server only if one of our scripts started it (.run/mariadb.pid),
# and, when OWNER is given, only if OWNER did.
mariadb_stop() {
    local owner=${1:-}
    if [[ -n "$owner" && -f "$MARIADB_OWNERFILE" && "$(<"$MARIADB_OWNERFILE")" != "$owner" ]]; then
        log "MariaDB was started by '$(<"$MARIADB_OWNERFILE")', leaving it running"
        return 0
    fi
    read_pidfile "$MARIADB_PIDFILE" >/dev/null || {
        rm -f "$MARIADB_PIDFILE"
        return 0
    }
    stop_group "$MARIADB_PIDFILE" MariaDB 30
    rm -f "$MARIADB_OWNERFILE"
}

# mariadb_create_db NAME
mariadb_create_db() {
    local c
    c=$(mariadb_client) || die "no mariadb client"
    "$c" -h"$MARIADB_HOST" -P"$MARIADB_PORT" -uroot -e "CREATE DATABASE IF NOT EXISTS \`$1\`"
}
