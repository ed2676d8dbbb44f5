#!/usr/bin/env bash
# Local services for the test suite: PostgreSQL on 127.0.0.1:5432 (trust auth, user
# postgres, database "test") and Redis on 127.0.0.1:6379.
#   scripts/services.sh up      start whatever is not answering (idempotent), create db "test"
#   scripts/services.sh status  report, exit 1 if something is down
# A service is left alone when its SQLA_CACHE_TEST_*_URL variable points elsewhere.
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres PG_DB=test
REDIS_PORT=6379

pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 1; }
redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

wait_for() {  # wait_for NAME CHECK: poll CHECK for up to 30 s
    local name=$1 check=$2 i
    for i in $(seq 60); do "$check" && return 0; sleep 0.5; done
    echo "services.sh: $name did not become ready within 30 s" >&2
    return 1
}

postgres_up() {
    if ! pg_ready; then
        local version
        version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
        if [ -z "$version" ]; then
            echo "services.sh: PostgreSQL is not answering and no cluster is in /etc/postgresql" >&2
            return 1
        fi
        echo "starting PostgreSQL $version"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        wait_for PostgreSQL pg_ready
    fi
    local psql=(psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -XAtq)
    if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
        echo "creating database $PG_DB"
        "${psql[@]}" -c "CREATE DATABASE $PG_DB"
    fi
}

redis_up() {
    if ! redis_ready; then
        echo "starting Redis"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
            --save "" --appendonly no
        wait_for Redis redis_ready
    fi
}

case "${1:-}" in
    up)
        if [ -n "${SQLA_CACHE_TEST_DATABASE_URL:-}" ]; then
            echo "PostgreSQL: using SQLA_CACHE_TEST_DATABASE_URL"
        else postgres_up; fi
        if [ -n "${SQLA_CACHE_TEST_REDIS_URL:-}" ]; then
            echo "Redis: using SQLA_CACHE_TEST_REDIS_URL"
        else redis_up; fi
        echo "services up"
        ;;
    status)
        rc=0
        if pg_ready; then echo "PostgreSQL: up"; else echo "PostgreSQL: down"; rc=1; fi
        if redis_ready; then echo "Redis: up"; else echo "Redis: down"; rc=1; fi
        exit "$rc"
        ;;
    *)
        echo "usage: $0 up|status" >&2
        exit 2
        ;;
esac
