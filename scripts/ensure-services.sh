#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432, user postgres, trust auth) and Redis (127.0.0.1:6379)
# answer. Starts them when installed but stopped; installs them with apt when missing (Debian).
# Sourced or run by scripts/dev-up.sh and scripts/test.sh.
set -euo pipefail

PGHOST_ADDR=127.0.0.1
PGPORT_NUM=5432
REDIS_PORT_NUM=6379

say() { echo "[ensure-services] $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    say "need root to run: $*"; return 1; fi
}

apt_install() {
  say "installing $* with apt"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" "$2" && return 0; sleep 0.5; done
  say "nothing answers on $1:$2"; return 1
}

ensure_postgres() {
  port_open "$PGHOST_ADDR" "$PGPORT_NUM" && return 0
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    apt_install postgresql
    fresh=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ "${fresh:-0}" = 1 ]; then
    # A development database: trust local TCP connections, as the defaults expect.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  fi
  say "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port "$PGHOST_ADDR" "$PGPORT_NUM"
}

ensure_redis() {
  port_open "$PGHOST_ADDR" "$REDIS_PORT_NUM" && return 0
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting Redis"
  mkdir -p /tmp/slotq-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT_NUM" --save "" --appendonly no \
    --dir /tmp/slotq-redis --logfile /tmp/slotq-redis/redis.log
  wait_port "$PGHOST_ADDR" "$REDIS_PORT_NUM"
}

ensure_postgres
ensure_redis
say "PostgreSQL and Redis are up"
