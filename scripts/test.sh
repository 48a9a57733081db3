#!/usr/bin/env bash
# Runs every test of the workspace against real PostgreSQL and Redis (started if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
