#!/usr/bin/env bash
# Set up a fresh Debian machine.
#   bash scripts/setup.sh         the tests: Debian's Chromium (browser tests) and GStreamer RTSP
#                                 server (media tests), the official JS SDK from npm (web/), a
#                                 venv with the project + dev/webrtc extras
#   bash scripts/setup.sh demo    the demo only: npm + the JS SDK, a venv with the webrtc extra
#   VENV=.venv (default)   where the venv goes
#   INSTALL=editable|plain  pip install -e (default) or a regular install (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-test}
VENV=${VENV:-.venv}
INSTALL=${INSTALL:-editable}
PY=${PYTHON:-python3}
case "$PROFILE" in test|demo) ;; *) echo "usage: $0 [test|demo]" >&2; exit 2 ;; esac

# Debian packages: install only what is missing, in one apt-get call.
APT=()
need_apt() {  # need_apt PACKAGE...: queue the packages dpkg does not have
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || APT+=("$pkg")
  done
}
command -v npm >/dev/null 2>&1 || need_apt nodejs npm
$PY -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt python3-venv
if [ "$PROFILE" = test ]; then
  command -v chromium >/dev/null 2>&1 || need_apt chromium
  # GStreamer's RTSP server, its Python bindings and the elements of the test stream: the
  # from_rtsp tests serve a tone and a test pattern on 127.0.0.1 under /usr/bin/python3.
  need_apt python3-gi gir1.2-gst-rtsp-server-1.0 \
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
fi
if [ ${#APT[@]} -gt 0 ]; then
  echo "setup: apt-get install ${APT[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT[@]}" >/dev/null
fi

echo "setup: npm ci (the official JS SDK, for the demo page and the browser tests)"
npm ci --prefix web --no-audit --no-fund --loglevel=error

echo "setup: python venv $VENV ($INSTALL install, $PROFILE)"
[ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1  # we drive Debian's /usr/bin/chromium, never a download
if [ "$PROFILE" = demo ]; then
  EXTRAS="webrtc"
elif [ "$INSTALL" = editable ]; then
  EXTRAS="dev,webrtc"
else
  EXTRAS="dev,webrtc,fuzz"
fi
if [ "$INSTALL" = editable ]; then
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
else
  "$VENV/bin/python" -m pip install -q ".[$EXTRAS]"
fi
echo "setup: done"
