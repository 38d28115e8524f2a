# shellcheck shell=bash
# MariaDB on 127.0.0.1:3306 (root, no password). Source after common.sh.

MARIADB_HOST=127.0.0.1
MARIADB_PORT=3306
MARIADB_PIDFILE="$RUN_DIR/mariadb.pid"

mariadb_client() {
    if command -v mariadb >/dev/null 2>&1; then echo mariadb; elif command -v mysql >/dev/null 2>&1; then echo mysql; else return 1; fi
}

# mariadb_answers: true when a server answers on 127.0.0.1:3306 as root without password.
mariadb_answers() {
    local c
    c=$(mariadb_client) || return 1
    "$c" -h"$MARIADB_HOST" -P"$MARIADB_PORT" -uroot --connect-timeout=2 -e 'select 1' >/dev/null 2>&1
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

# mariadb_ensure: make a server answer on 127.0.0.1:3306. Starts one (and records it in
# .run/mariadb.pid so it can be stopped by mariadb_stop) only when none answers.
# Sets MARIADB_STARTED=1 when this call started it.
MARIADB_STARTED=0
mariadb_ensure() {
    if mariadb_answers; then
        log "MariaDB answers on $MARIADB_HOST:$MARIADB_PORT (reusing it)"
        return 0
    fi
    mariadb_install
    ensure_run_dir
    log "starting MariaDB (mariadbd)"
    # Debian's packaged server wants its socket directory; the data dir exists after apt install.
    install -d -o mysql -g mysql /run/mysqld 2>/dev/null || mkdir -p /run/mysqld
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising the data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$MARIADB_PIDFILE" \
        --exec /usr/sbin/mariadbd -- --user=mysql --bind-address="$MARIADB_HOST" --port="$MARIADB_PORT"
    local i
    for ((i = 0; i < 300; i++)); do
        if mariadb_answers; then
            MARIADB_STARTED=1
            log "MariaDB is up (pid $(<"$MARIADB_PIDFILE"))"
            return 0
        fi
        sleep 0.2
    done
    die "MariaDB did not answer on $MARIADB_HOST:$MARIADB_PORT within 60 s"
}

# mariadb_stop: stop a server only if one of our scripts started it (.run/mariadb.pid).
mariadb_stop() {
    local pid i
    pid=$(read_pidfile "$MARIADB_PIDFILE") || {
        rm -f "$MARIADB_PIDFILE"
        return 0
    }
    log "stopping MariaDB (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null
    rm -f "$MARIADB_PIDFILE"
}

# mariadb_create_db NAME
mariadb_create_db() {
    local c
    c=$(mariadb_client) || die "no mariadb client"
    "$c" -h"$MARIADB_HOST" -P"$MARIADB_PORT" -uroot -e "CREATE DATABASE IF NOT EXISTS \`$1\`"
}
