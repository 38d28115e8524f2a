# shellcheck shell=bash
# A private MariaDB that requires TLS, with its own certificate authority, for the tests that
# prove the binaries reach the database the way production does (RDS Proxy, `require_ssl=true`).
# Source after common.sh and mariadb.sh. Data, certificates and logs in .run/mariadb-tls/; the
# server runs as the user running the tests (root included), so it needs no chown and no access
# to the clone for the mysql user.
#
#   mariadb_tls_start   start it (generating the CA and a server certificate for 127.0.0.1 and
#                       localhost when missing) unless it answers; exports
#                       TEST_TLS_DATABASE_URL (mysql://root@127.0.0.1:PORT?require_ssl=true, a
#                       server URL: tests add their own database) and TEST_DATABASE_CA_FILE
#   mariadb_tls_stop    stop it if mariadb_tls_start started it

MARIADB_TLS_PORT="${OCR_TLS_MARIADB_PORT:-3307}"
MARIADB_TLS_DIR="$RUN_DIR/mariadb-tls"
MARIADB_TLS_PIDFILE="$MARIADB_TLS_DIR/mariadbd.pid"
MARIADB_TLS_STARTED=0

_mariadb_tls_client() {
    local c
    c=$(mariadb_client) || return 1
    "$c" -h127.0.0.1 -P"$MARIADB_TLS_PORT" -uroot --connect-timeout=2 --ssl --ssl-ca="$MARIADB_TLS_DIR/ca.pem" \
        --ssl-verify-server-cert "$@"
}

# The CA and a server certificate (SAN 127.0.0.1 and localhost: the client checks the name).
_mariadb_tls_certs() {
    local d="$MARIADB_TLS_DIR"
    [[ -s "$d/ca.pem" && -s "$d/server-cert.pem" && -s "$d/server-key.pem" ]] && return 0
    log "MariaDB TLS: generating a private CA and a server certificate in $d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=ocr-fleet test CA" \
        -keyout "$d/ca-key.pem" -out "$d/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$d/server-key.pem" \
        -out "$d/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca-key.pem" -CAcreateserial \
        -days 3650 -extfile "$d/server.ext" -out "$d/server-cert.pem" 2>/dev/null
    chmod 600 "$d/server-key.pem" "$d/ca-key.pem"
}

mariadb_tls_start() {
    export TEST_TLS_DATABASE_URL="mysql://root@127.0.0.1:$MARIADB_TLS_PORT?require_ssl=true"
    export TEST_DATABASE_CA_FILE="$MARIADB_TLS_DIR/ca.pem"
    install -d "$MARIADB_TLS_DIR"
    if [[ -s "$MARIADB_TLS_DIR/ca.pem" ]] && _mariadb_tls_client -e 'select 1' >/dev/null 2>&1; then
        log "MariaDB with TLS answers on 127.0.0.1:$MARIADB_TLS_PORT (reusing it)"
        return 0
    fi
    mariadb_install
    _mariadb_tls_certs
    local data="$MARIADB_TLS_DIR/data" user
    user=$(id -un)
    _mariadb_init_datadir "$data" "$user" --no-defaults
    log "starting MariaDB with TLS required on 127.0.0.1:$MARIADB_TLS_PORT (CA $MARIADB_TLS_DIR/ca.pem)"
    start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$MARIADB_TLS_PIDFILE" \
        --exec /usr/sbin/mariadbd -- --no-defaults --user="$user" --datadir="$data" \
        --bind-address=127.0.0.1 --port="$MARIADB_TLS_PORT" --socket="$data/mariadb.sock" \
        --pid-file="$data/mariadbd.pid" --log-error="$data/error.log" \
        --ssl-ca="$MARIADB_TLS_DIR/ca.pem" --ssl-cert="$MARIADB_TLS_DIR/server-cert.pem" \
        --ssl-key="$MARIADB_TLS_DIR/server-key.pem" --require-secure-transport=ON
    local i
    for ((i = 0; i < 300; i++)); do
        if _mariadb_tls_client -e 'select 1' >/dev/null 2>&1; then
            MARIADB_TLS_STARTED=1
            log "MariaDB with TLS is up (pid $(<"$MARIADB_TLS_PIDFILE"))"
            return 0
        fi
        sleep 0.2
    done
    [[ -f "$data/error.log" ]] && tail -n 20 "$data/error.log" >&2
    die "MariaDB with TLS did not answer on 127.0.0.1:$MARIADB_TLS_PORT within 60 s"
}

mariadb_tls_stop() {
    ((MARIADB_TLS_STARTED)) || return 0
    stop_group "$MARIADB_TLS_PIDFILE" "MariaDB with TLS" 30
}
