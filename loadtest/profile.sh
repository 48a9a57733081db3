#!/usr/bin/env bash
# Instructions per booking request in slotq-ingress (per accepted submission) or in
# slotq-workers (per decision), counted by callgrind: repeatable whatever else the shared
# machine does (the wall-clock figures of bench.sh are not).
#
#   loadtest/profile-ingress.sh            # ingress: prints Ir per submission
#   loadtest/profile-ingress.sh workers    # workers: prints Ir per decision
#   callgrind_annotate .run/profile/callgrind.out.*.1 | head -60
#
# Starts its own stack on ports 28080-28082 (database slotq_profile, Redis namespace
# slotqprofile) with the chosen process under valgrind, runs `slotq-loadtest throughput` at 8
# clients, and counts only while the throughput round runs (after its warm-up), divided by
# what the process did meanwhile (its own counter). Note: under valgrind SHA-256 runs in
# software (no SHA extensions), so hashing weighs more than on the real CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-ingress}"
case "$which" in
  ingress | workers) ;;
  *) echo "usage: $0 [ingress|workers]" >&2; exit 2 ;;
esac
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
grind=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.out.%p")
if [ "$which" = ingress ]; then ingress_cmd=("${grind[@]}"); workers_cmd=(); else ingress_cmd=(); workers_cmd=("${grind[@]}"); fi
ADMIN_ADDR=127.0.0.1:$((port + 2)) "${ingress_cmd[@]}" target/release/slotq-ingress >"$out/ingress.log" 2>&1 &
ingress=$!
ADMIN_ADDR=127.0.0.1:$((port + 1)) "${workers_cmd[@]}" target/release/slotq-workers >"$out/workers.log" 2>&1 &
workers=$!
if [ "$which" = ingress ]; then profiled=$ingress; else profiled=$workers; fi
cleanup() {
  kill -TERM "$ingress" "$workers" 2>/dev/null || true
  sleep 3
  kill -KILL "$ingress" "$workers" 2>/dev/null || true
  psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rcli --scan --pattern "$ns:*" | xargs -r -n 500 redis-cli -h "${redis_host_port%:*}" -p "${redis_host_port##*:}" DEL >/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 120); do curl -sf "$SLOTQ_URL/readyz" >/dev/null && break; sleep 1; done
# What the profiled process did: submissions ingress accepted, or decisions the workers made.
done_so_far() {
  if [ "$which" = ingress ]; then
    curl -s "http://127.0.0.1:$((port + 2))/metrics" \
      | awk '/^slotq_booking_submissions_total\{result="accepted"\}/ {print $2}'
  else
    curl -s "http://127.0.0.1:$((port + 1))/metrics" \
      | awk '/^slotq_booking_decisions_total/ {n += $2} END {print n + 0}'
  fi
}
target/release/slotq-loadtest throughput --no-full-baseline --duration 15 --concurrency 8 \
  --practitioners 50 >"$out/loadtest.txt" 2>&1 &
loadtest=$!
until grep -q "throughput (round 1)" "$out/loadtest.txt"; do sleep 0.5; done
sleep 3
before=$(done_so_far)
callgrind_control -i on "$profiled" >/dev/null
sleep 8
callgrind_control -i off "$profiled" >/dev/null
after=$(done_so_far)
callgrind_control -d "$profiled" >/dev/null
wait "$loadtest" || true
sleep 1
file=$(ls "$out"/callgrind.out.*.1)
total=$(awk '/^totals:/ {print $2}' "$file")
what=$([ "$which" = ingress ] && echo "submissions accepted" || echo "decisions made")
echo "slotq-$which: $((after - before)) $what while counting, $total instructions: $((total / (after - before))) per request ($file)"
