#!/usr/bin/env bash
# Set up a fresh Debian machine for this project: libevent headers, pkg-config, compilers, wrk
# and valgrind from apt (as root, only what is missing; with Debian's own Python also its venv
# module and C headers), then .venv with the package installed in editable mode.
# Quick when nothing changed: the install is redone only when a file the build reads changed
# since the last set-up (a stamp in .venv), so serve.sh and test.sh start at once.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
# Notices go to stderr: serve.sh's first line on stdout is the server's own.
say() { echo "setup: $*" >&2; }

# What the editable install is built from: the venv's Python, the build scripts, the C shim and
# the recommended cffi. Python sources are not in it (the editable install reads them in place).
build_stamp() {
    {
        if [ -x .venv/bin/python ]; then .venv/bin/python --version; fi
        cat pyproject.toml setup.py build_ffi.py build_embed.py build_flags.py \
            scripts/cffi-recommended.txt
        find cdefs bitcoin_support/include -type f -print0 | sort -z | xargs -0 cat
    } | sha256sum
}

current=false
if [ -x .venv/bin/python ] && [ "$(cat .venv/.setup-stamp 2>/dev/null)" = "$(build_stamp)" ] &&
    .venv/bin/python -c 'import bitcoin_support._native' 2>/dev/null; then
    current=true
fi

pkgs=(libevent-dev pkg-config gcc g++ binutils util-linux wrk valgrind)
# Debian's own Python keeps `venv` and the headers the build needs (Python.h) in packages of
# their own: python3-venv and python3-dev (versioned names for a Python other than the default).
if ! $current; then
    py=$PYTHON
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
    real=$("$py" -c 'import os, sys; print(os.path.realpath(sys.executable))')
    if dpkg -S "$real" >/dev/null 2>&1; then
        ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        default=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' || true)
        if [ "$ver" = "$default" ]; then
            pkgs+=(python3-venv python3-dev)
        else
            pkgs+=("python$ver-venv" "python$ver-dev")
        fi
    fi
fi
installed=$(dpkg-query -W -f='${db:Status-Status} ${Package}\n' "${pkgs[@]}" 2>/dev/null || true)
need=()
for pkg in "${pkgs[@]}"; do
    grep -qx "installed $pkg" <<<"$installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing from apt: ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if $current; then
    exit 0
fi

if [ -x .venv/bin/python ]; then
    say "the package's build inputs changed since the last set-up: rebuilding it in .venv (about a minute)"
else
    say "first set-up: creating .venv with the package and its test tools (a few minutes)"
fi
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
build_stamp >.venv/.setup-stamp
say "done: .venv is ready"
