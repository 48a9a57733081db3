#!/usr/bin/env bash
# The whole benchmark against a local release stack, in one command:
#
#   loadtest/bench.sh                       # every scenario, table on stdout, JSON in .run/bench/
#   loadtest/bench.sh throughput --repeat 3 # any slotq-loadtest arguments
#
# Builds the release binaries, recreates a database of its own (BENCH_DATABASE, default
# slotq_bench) and clears a Redis namespace of its own (BENCH_NAMESPACE, default slotqbench),
# starts slotq-ingress, slotq-workers and slotq-scheduler on ports that do not collide with
# scripts/dev-up.sh, runs slotq-loadtest, and stops the three services (SIGTERM) on exit.
# Service settings come from the environment (README: Configuration), e.g.
#   BATCH_MAX=256 WORKER_CONCURRENCY=1024 loadtest/bench.sh throughput
# Exit status: slotq-loadtest's (1 = an invariant failed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh

server="${BENCH_SERVER_URL:-postgres://postgres@127.0.0.1:5432}"
db="${BENCH_DATABASE:-slotq_bench}"
ns="${BENCH_NAMESPACE:-slotqbench}"
port="${BENCH_PORT:-18080}"
run_dir=".run/bench"
mkdir -p "$run_dir"

export DATABASE_URL="$server/$db"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export REDIS_NAMESPACE="$ns"
export HTTP_ADDR="127.0.0.1:$port"
export JWT_HS256_SECRET="${JWT_HS256_SECRET:-bench-jwt-secret}"
export PAYMENT_WEBHOOK_SECRET="${PAYMENT_WEBHOOK_SECRET:-bench-payment-secret}"
# One client IP sends everything; the service token is exempt anyway.
export RATE_LIMIT_ENABLED=0
# Short holds so the mixed scenario sees its unpaid holds expire, yet long enough that a
# throughput round (10 s and its drain) is measured before the scheduler starts expiring it.
export HOLD_TTL_SECS="${HOLD_TTL_SECS:-30}"
export EXPIRY_INTERVAL_MS="${EXPIRY_INTERVAL_MS:-500}"
export RUST_LOG="${RUST_LOG:-warn}"
export SLOTQ_URL="http://$HTTP_ADDR"

# BENCH_BIN_DIR: run binaries built elsewhere (e.g. an older commit's, to compare two builds
# in one session) instead of building this tree's.
bin="${BENCH_BIN_DIR:-target/release}"
if [ -z "${BENCH_BIN_DIR:-}" ]; then
  echo "[bench] building release binaries…" >&2
  cargo build --release -q -p slotq-ingress -p slotq-workers -p slotq-scheduler -p slotq-loadtest
fi

echo "[bench] fresh database $db and Redis namespace $ns" >&2
psql "$server/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\""
redis_host_port="${REDIS_URL#redis://}"
redis-cli -h "${redis_host_port%:*}" -p "${redis_host_port##*:}" --scan --pattern "$ns:*" \
  | xargs -r -n 500 redis-cli -h "${redis_host_port%:*}" -p "${redis_host_port##*:}" DEL >/dev/null
"$bin"/slotq-ingress migrate 2>>"$run_dir/migrate.log"

pids=()
stop() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap stop EXIT

ADMIN_ADDR="127.0.0.1:$((port + 2))" "$bin"/slotq-ingress >"$run_dir/ingress.log" 2>&1 &
pids+=($!)
ADMIN_ADDR="127.0.0.1:$((port + 1))" "$bin"/slotq-workers >"$run_dir/workers.log" 2>&1 &
pids+=($!)
ADMIN_ADDR="127.0.0.1:$((port + 3))" "$bin"/slotq-scheduler >"$run_dir/scheduler.log" 2>&1 &
pids+=($!)
echo "[bench] stack on $SLOTQ_URL (pids ${pids[*]}; logs in $run_dir/)" >&2

if [ $# -eq 0 ]; then set -- all --json "$run_dir/report.json"; fi
status=0
"$bin"/slotq-loadtest "$@" || status=$?
exit "$status"
