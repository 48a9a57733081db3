#!/usr/bin/env bash
# Sends a signed payment webhook, as the payment provider would:
#   scripts/pay.sh <booking_id> [payment.succeeded|payment.failed] [event_id]
# Uses PAYMENT_WEBHOOK_SECRET (default dev-payment-secret) and HTTP_ADDR (default 127.0.0.1:8080).
set -euo pipefail
booking="$1"; type="${2:-payment.succeeded}"; event="${3:-evt_$(date +%s%N)}"
secret="${PAYMENT_WEBHOOK_SECRET:-dev-payment-secret}"
body="{\"id\":\"$event\",\"type\":\"$type\",\"booking_id\":\"$booking\",\"amount\":4500,\"currency\":\"EUR\"}"
t=$(date +%s)
sig=$(printf '%s.%s' "$t" "$body" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)
curl -sS -X POST "http://${HTTP_ADDR:-127.0.0.1:8080}/v1/payments/webhook" \
  -H 'content-type: application/json' -H "Payment-Signature: t=$t,v1=$sig" -d "$body"
echo
