#!/usr/bin/env bash
# Set up a fresh Debian machine for this project: libevent headers, pkg-config, compilers, wrk
# and valgrind from apt (and python3-venv, python3-dev for Debian's own python3), as root, only
# what is missing; then .venv with the package installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
pkgs=(libevent-dev pkg-config gcc g++ binutils util-linux wrk valgrind)
# Debian's own python3, when there is one, gets a run of its own (scripts/debian_python.sh): it
# needs venv and the headers to build the package.
[ -x /usr/bin/python3 ] && pkgs+=(python3-venv python3-dev)
for pkg in "${pkgs[@]}"; do
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
