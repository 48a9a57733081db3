#!/usr/bin/env bash
# Runs schemathesis against the OpenAPI document of a freshly started slotq-ingress (its own
# database and Redis namespace, a service token, rate limits off): a bounded run that fails on
# any 5xx, any status, content type or body that does not match the document, and any invalid
# input that is accepted. Installs schemathesis in target/schemathesis-venv when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh

SCHEMATHESIS_VERSION=4.32.5
VENV=target/schemathesis-venv
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "[schemathesis] installing schemathesis $SCHEMATHESIS_VERSION in $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build -q -p slotq-ingress --bin slotq-ingress
db=slotq_schemathesis
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null 2>&1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" REDIS_NAMESPACE="schemathesis-$$" \
  JWT_HS256_SECRET="schemathesis-$$" RATE_LIMIT_ENABLED=0 HTTP_ADDR="127.0.0.1:$port" \
  ADMIN_ADDR="127.0.0.1:$admin" PAYMENT_WEBHOOK_SECRET="schemathesis" AUTO_MIGRATE=1 RUST_LOG=warn
log=target/schemathesis-ingress.log
target/debug/slotq-ingress >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
token=$(target/debug/slotq-ingress token --role service --sub schemathesis)

"$VENV/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
  --phases examples,coverage,fuzzing --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-25}" \
  --seed 1 --no-color
