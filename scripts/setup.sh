#!/usr/bin/env bash
# Set up a fresh Debian machine for this project: libevent headers, pkg-config, compilers, wrk
# and valgrind from apt (as root, only what is missing), then .venv with the package installed
# in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in libevent-dev pkg-config gcc g++ binutils util-linux wrk valgrind; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# Quiet unless it fails: the build backend's notices are not for a newcomer's screen.
log=$(mktemp)
# The recommended cffi, for the build (pip passes PIP_CONSTRAINT on to its build environment)
# and for the run; the package itself asks only for cffi>=1.17.
export PIP_CONSTRAINT="$PWD/scripts/cffi-recommended.txt"
if ! { .venv/bin/python -m pip install -q --upgrade pip "setuptools>=77" wheel &&
       .venv/bin/python -m pip install -q -e ".[test]"; } >"$log" 2>&1; then
    cat "$log"
    rm -f "$log"
    exit 1
fi
rm -f "$log"
