#!/usr/bin/env bash
# Instructions per accepted submission in slotq-ingress, counted by callgrind: repeatable
# whatever else the shared machine does (the wall-clock figures of bench.sh are not).
#
#   loadtest/profile-ingress.sh            # prints Ir per submission; profile in .run/profile/
#   callgrind_annotate .run/profile/callgrind.out.*.1 | head -60
#
# Starts its own stack on ports 28080-28082 (database slotq_profile, Redis namespace
# slotqprofile) with slotq-ingress under valgrind, runs `slotq-loadtest throughput` at 8
# clients, and counts only while the throughput round runs (after its warm-up), divided by the
# submissions ingress accepted meanwhile (its own counter). Note: under valgrind SHA-256 runs
# in software (no SHA extensions), so hashing weighs more than on the real CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
server="${PROFILE_SERVER_URL:-postgres://postgres@127.0.0.1:5432}"
db=slotq_profile ns=slotqprofile port=28080 out=.run/profile
mkdir -p "$out" && rm -f "$out"/callgrind.out.*
export DATABASE_URL="$server/$db" REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}" REDIS_NAMESPACE=$ns
export HTTP_ADDR=127.0.0.1:$port JWT_HS256_SECRET=profile-jwt-secret PAYMENT_WEBHOOK_SECRET=profile-secret
export RATE_LIMIT_ENABLED=0 HOLD_TTL_SECS=30 RUST_LOG=warn SLOTQ_URL=http://127.0.0.1:$port
cargo build --release -q -p slotq-ingress -p slotq-workers -p slotq-loadtest
psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
redis_host_port="${REDIS_URL#redis://}"
rcli() { redis-cli -h "${redis_host_port%:*}" -p "${redis_host_port##*:}" "$@"; }
rcli --scan --pattern "$ns:*" | xargs -r -n 500 redis-cli -h "${redis_host_port%:*}" -p "${redis_host_port##*:}" DEL >/dev/null
target/release/slotq-ingress migrate 2>>"$out/migrate.log"
ADMIN_ADDR=127.0.0.1:$((port + 2)) valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$out/callgrind.out.%p" target/release/slotq-ingress >"$out/ingress.log" 2>&1 &
ingress=$!
ADMIN_ADDR=127.0.0.1:$((port + 1)) target/release/slotq-workers >"$out/workers.log" 2>&1 &
workers=$!
cleanup() {
  kill -TERM "$ingress" "$workers" 2>/dev/null || true
  sleep 3
  kill -KILL "$ingress" "$workers" 2>/dev/null || true
  psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rcli --scan --pattern "$ns:*" | xargs -r -n 500 redis-cli -h "${redis_host_port%:*}" -p "${redis_host_port##*:}" DEL >/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 120); do curl -sf "$SLOTQ_URL/readyz" >/dev/null && break; sleep 1; done
accepted() {
  curl -s "http://127.0.0.1:$((port + 2))/metrics" \
    | awk '/^slotq_booking_submissions_total\{result="accepted"\}/ {print $2}'
}
target/release/slotq-loadtest throughput --no-full-baseline --duration 15 --concurrency 8 \
  --practitioners 50 >"$out/loadtest.txt" 2>&1 &
loadtest=$!
until grep -q "throughput (round 1)" "$out/loadtest.txt"; do sleep 0.5; done
sleep 3
before=$(accepted)
callgrind_control -i on "$ingress" >/dev/null
sleep 8
callgrind_control -i off "$ingress" >/dev/null
after=$(accepted)
callgrind_control -d "$ingress" >/dev/null
wait "$loadtest" || true
sleep 1
file=$(ls "$out"/callgrind.out.*.1)
total=$(awk '/^totals:/ {print $2}' "$file")
echo "slotq-ingress: $((after - before)) submissions accepted while counting, $total instructions: $((total / (after - before))) per submission ($file)"
