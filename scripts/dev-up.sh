#!/usr/bin/env bash
# Runs the whole pipeline locally: PostgreSQL + Redis (started or installed if needed),
# migrations, slotq-ingress, slotq-workers and slotq-scheduler in the background, a small
# demo data set, and prints the URL. Logs and pids go to .run/; stop with scripts/dev-down.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/slotq}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export HTTP_ADDR="${HTTP_ADDR:-127.0.0.1:8080}"
export PAYMENT_WEBHOOK_SECRET="${PAYMENT_WEBHOOK_SECRET:-dev-payment-secret}"
# Local tokens are HS256 with this secret (production verifies against a JWKS: JWT_JWKS).
export JWT_HS256_SECRET="${JWT_HS256_SECRET:-dev-jwt-secret-change-me}"
mkdir -p .run

scripts/dev-down.sh >/dev/null 2>&1 || true

db="${DATABASE_URL##*/}"; db="${db%%\?*}"
server="${DATABASE_URL%/*}/postgres"
if ! psql "$server" -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
  psql "$server" -qc "CREATE DATABASE \"$db\""
fi

echo "building (debug)…" >&2
cargo build --workspace --bins -q
target/debug/slotq-ingress migrate

for svc in ingress workers scheduler; do
  nohup "target/debug/slotq-$svc" >".run/$svc.log" 2>&1 &
  echo $! >".run/$svc.pid"
done

url="http://$HTTP_ADDR"
for _ in $(seq 1 100); do curl -fsS "$url/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "$url/readyz" >/dev/null || { echo "ingress did not become ready; see .run/ingress.log" >&2; exit 1; }

SERVICE_TOKEN=$(target/debug/slotq-ingress token --role service --sub dev-up --ttl-secs 86400)
id() { sed -n 's/.*"id":"\([^"]*\)".*/\1/p'; }
post() { curl -fsS -X "$1" "$url$2" -H "authorization: Bearer $SERVICE_TOKEN" -H 'content-type: application/json' -d "$3"; }
clinic=$(post POST /v1/clinics '{"name":"Demo clinic","country_code":"FR","timezone":"Europe/Paris"}' | id)
pract=$(post POST "/v1/clinics/$clinic/practitioners" '{"name":"Dr Demo","specialty":"general_practice","slot_minutes":30}' | id)
week='[{"weekday":1,"start":"09:00","end":"17:00"},{"weekday":2,"start":"09:00","end":"17:00"},{"weekday":3,"start":"09:00","end":"17:00"},{"weekday":4,"start":"09:00","end":"17:00"},{"weekday":5,"start":"09:00","end":"17:00"},{"weekday":6,"start":"09:00","end":"12:00"}]'
post PUT "/v1/practitioners/$pract/hours" "{\"weekly\":$week}" >/dev/null
patient=$(post POST /v1/patients "{\"name\":\"Demo Patient\",\"email\":\"demo+$(date +%s%N)@example.test\",\"country_code\":\"FR\"}" | id)

PATIENT_TOKEN=$(target/debug/slotq-ingress token --role patient --sub demo-patient --patient-id "$patient" --ttl-secs 86400)
# The first free slot of next Monday, for the command printed below.
monday=$(date -u -d 'next monday' +%Y-%m-%d)
first_slot=$(curl -fsS "$url/v1/practitioners/$pract/availability?from=$monday&days=1" \
  -H "authorization: Bearer $SERVICE_TOKEN" | grep -o '"start":"[^"]*"' | head -1 | cut -d'"' -f4)
cat <<MSG
slotq is running at $url  (logs: .run/*.log, stop: scripts/dev-down.sh)
demo data: clinic=$clinic practitioner=$pract patient=$patient
metrics: ingress http://127.0.0.1:9099/metrics, workers http://127.0.0.1:9090/metrics, scheduler http://127.0.0.1:9091/metrics
tokens (24 h; more with: JWT_HS256_SECRET=$JWT_HS256_SECRET target/debug/slotq-ingress token --role <role> --sub <sub>):
  export SERVICE_TOKEN=$SERVICE_TOKEN
  export PATIENT_TOKEN=$PATIENT_TOKEN
try (books the first slot of next Monday):
  curl -s -X POST $url/v1/booking-requests -H "authorization: Bearer \$PATIENT_TOKEN" -H 'content-type: application/json' \\
    -d '{"patient_id":"$patient","practitioner_id":"$pract","slot_start":"$first_slot"}'
MSG
