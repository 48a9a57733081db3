#!/usr/bin/env bash
# Makes sure the tools of the operations tests are there, installing what is missing (Debian):
#   promtool          from the Debian package `prometheus` (alert rule unit tests);
#   helm-python-sdk   from PyPI, in a virtualenv at target/ops-venv (Helm 4's engine, to lint
#                     and render the chart; no helm binary needed).
# Idempotent and quiet when everything is present. Run by scripts/test-ops.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_PYTHON_SDK_VERSION=0.2.2
VENV=target/ops-venv

say() { echo "[ensure-tools] $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    say "need root to run: $*"; return 1; fi
}

apt_updated=0
apt_install() {
  say "installing $* with apt"
  if [ "$apt_updated" = 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_promtool() {
  command -v promtool >/dev/null && return 0
  # Only promtool is wanted: keep the package's Prometheus server from starting (it would
  # take port 9090, the workers' admin port) by denying service starts while installing.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    created=1
  fi
  apt_install prometheus || { [ "$created" = 1 ] && as_root rm -f "$policy"; return 1; }
  [ "$created" = 1 ] && as_root rm -f "$policy"
  command -v promtool >/dev/null || { say "promtool still missing"; return 1; }
}

ensure_helm_python() {
  if [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c "import helm_python, sys; sys.exit(helm_python.__version__ != '$HELM_PYTHON_SDK_VERSION')" 2>/dev/null; then
    return 0
  fi
  command -v python3 >/dev/null || apt_install python3
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3-venv
  fi
  say "installing helm-python-sdk $HELM_PYTHON_SDK_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "helm-python-sdk==$HELM_PYTHON_SDK_VERSION"
}

ensure_promtool
ensure_helm_python
