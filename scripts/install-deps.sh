#!/usr/bin/env bash
# Installs every Debian and PyPI package dsr1 needs. Idempotent: does nothing
# when everything is present. Usage: scripts/install-deps.sh [--quiet]
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${DSR1_VENV:-$ROOT/build/venv}
DEB_PKGS="build-essential pkg-config libjansson-dev libxxhash-dev xxhash libarchive-dev \
libssl-dev libmicrohttpd-dev libpcre2-dev zstd iproute2 time clang libclang-rt-14-dev libomp-14-dev skopeo python3-venv"
PY_PKGS="safetensors numpy ml_dtypes"

say() { echo "install-deps: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

missing=""
for p in $DEB_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# python3-venv is optional when the interpreter already ships venv (pyenv builds do).
if [ -n "$missing" ] && python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing=$(echo "$missing" | sed 's/ python3-venv//')
fi
if [ -n "$(echo $missing)" ]; then
  say "installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y -q $missing >/tmp/dsr1-apt.log 2>&1; then
    $SUDO apt-get update -q >>/tmp/dsr1-apt.log 2>&1 || true
    $SUDO apt-get install -y -q $missing >>/tmp/dsr1-apt.log 2>&1 ||
      die "apt-get install failed for:$missing (log: /tmp/dsr1-apt.log). Install them by hand and rerun."
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating Python virtual environment in $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed; install python3-venv"
fi
if ! "$VENV/bin/python" -c 'import safetensors, numpy, ml_dtypes' 2>/dev/null; then
  say "installing PyPI packages: $PY_PKGS"
  "$VENV/bin/pip" install -q $PY_PKGS >/tmp/dsr1-pip.log 2>&1 ||
    die "pip install $PY_PKGS failed (log: /tmp/dsr1-pip.log); check network access to PyPI"
fi
exit 0
