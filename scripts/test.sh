#!/usr/bin/env bash
# Checks formatting and lints (cargo fmt --check, clippy -D warnings), runs every test of the
# workspace against real PostgreSQL and Redis (started if needed), then
# the operations tests (alert rules, Helm chart, container files: scripts/test-ops.sh) and a
# bounded schemathesis run against the OpenAPI document (scripts/schemathesis.sh).
# Fails when either part fails.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
status=0
cargo fmt --all -- --check || status=$?
cargo clippy --workspace --all-targets -- -D warnings || status=$?
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast || status=$?
else
  cargo test --workspace --no-fail-fast || status=$?
fi
scripts/test-ops.sh || status=$?
scripts/schemathesis.sh || status=$?
exit "$status"
