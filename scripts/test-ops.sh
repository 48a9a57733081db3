#!/usr/bin/env bash
# Operations tests (a few seconds): alert rules with promtool, the Helm chart linted and
# rendered with Helm's own engine, the container files checked. Installs missing tools first
# (scripts/ensure-tools.sh). Run by scripts/test.sh after the cargo tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tools.sh
PY=target/ops-venv/bin/python

echo "== promtool: alert rules" >&2
promtool check rules helm/slotq/files/alerts.yaml
promtool test rules helm/tests/alerts_test.yaml

echo "== helm chart and container files" >&2
"$PY" -m unittest discover -s helm/tests -p 'test_*.py'
"$PY" -m unittest discover -s scripts/tests -p 'test_*.py'
