#!/usr/bin/env bash
# Stops what scripts/dev-up.sh started (SIGTERM: each process drains first).
set -euo pipefail
cd "$(dirname "$0")/.."
for svc in ingress workers scheduler; do
  f=".run/$svc.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  kill -TERM "$pid" 2>/dev/null && echo "stopping slotq-$svc ($pid)"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "slotq-$svc ($pid) did not stop within 10 s; killing it (see .run/$svc.log)" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
