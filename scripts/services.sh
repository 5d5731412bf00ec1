#!/usr/bin/env bash
# PostgreSQL (database `test`) and Redis on 127.0.0.1 for the tests: start them when they are
# not running, install them with apt-get when they are absent; and Debian's chromium for the
# dashboard's browser tests. Safe to run again and again.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_ready() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! command -v pg_ctlcluster >/dev/null || ! command -v redis-server >/dev/null; then
    echo "== installing PostgreSQL and Redis"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql redis-server >/dev/null
fi

if ! pg_ready; then
    echo "== starting PostgreSQL"
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 50); do pg_ready && break; sleep 0.2; done
    pg_ready || { echo "PostgreSQL did not start" >&2; exit 1; }
fi

psql_admin() {
    # Trust auth on 127.0.0.1 in CI; fall back to the postgres OS user on a fresh install.
    psql -h 127.0.0.1 -U postgres -d postgres -tAc "$1" 2>/dev/null \
        || as_root su postgres -c "psql -d postgres -tAc \"$1\""
}
if [ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname = 'test'")" != "1" ]; then
    echo "== creating database test"
    psql_admin "CREATE DATABASE test"
fi

if ! redis_ready; then
    echo "== starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 50); do redis_ready && break; sleep 0.1; done
    redis_ready || { echo "Redis did not start" >&2; exit 1; }
fi
echo "== PostgreSQL and Redis are up"

# Debian's Chromium for the dashboard's browser tests (Playwright drives /usr/bin/chromium;
# no browser is downloaded).
if [ ! -x /usr/bin/chromium ]; then
    echo "== installing chromium"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi
