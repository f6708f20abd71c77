#!/usr/bin/env bash
# Set up a fresh Debian machine for the tests and the demo: Debian's Chromium (browser tests),
# the official JS SDK from npm (web/), and a Python venv with the project and its dev extras.
#   VENV=.venv (default)   where the venv goes
#   INSTALL=editable|plain  pip install -e (default) or a regular install (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
INSTALL=${INSTALL:-editable}
PY=${PYTHON:-python3}

if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing Debian's chromium (browser tests)"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

echo "setup: npm ci (the official JS SDK, for the browser tests and the demo page)"
npm ci --prefix web --no-audit --no-fund --loglevel=error

echo "setup: python venv $VENV ($INSTALL install)"
[ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1  # we drive Debian's /usr/bin/chromium, never a download
if [ "$INSTALL" = editable ]; then
  "$VENV/bin/python" -m pip install -q -e ".[dev,webrtc]"
else
  "$VENV/bin/python" -m pip install -q ".[dev,webrtc,fuzz]"
fi
echo "setup: done"
