#!/usr/bin/env bash
# The C host and pool tests again under Debian's own /usr/bin/python3, when there is one. Its
# extensions are linked with -Wl,-Bsymbolic-functions, so each shared object binds its own
# functions: the run proves that a C host and Python share one locked pool by design, not by
# symbol interposition. A venv of its own (.venv-debian, kept between runs; only the package is
# reinstalled), the package built from a copy of the tree (the tree's build/ folder belongs to
# the main interpreter) and installed (not editable), the tests run from a copy of the tree
# without the package folder, so that they (and the hosts they start) import the installed one.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
DEBIAN_PYTHON=/usr/bin/python3
if [ ! -x "$DEBIAN_PYTHON" ]; then
    echo "== no $DEBIAN_PYTHON: the Debian Python run is skipped"
    exit 0
fi
if ! "$DEBIAN_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "== $DEBIAN_PYTHON is older than Python 3.11: the Debian Python run is skipped"
    exit 0
fi
venv="$root/.venv-debian"
work=$(mktemp -d /tmp/bitcoin_support-debian.XXXXXX)
trap 'rm -rf "$work"' EXIT
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work"
log=$(mktemp)
export PIP_CONSTRAINT="$root/scripts/cffi-recommended.txt"
if ! { { [ -x "$venv/bin/python" ] || "$DEBIAN_PYTHON" -m venv "$venv"; } &&
       { [ -f "$venv/.deps-ready" ] ||
         { "$venv/bin/python" -m pip install -q --upgrade pip "setuptools>=77" wheel cffi \
               pytest pytest-timeout trio outcome && touch "$venv/.deps-ready"; }; } &&
       "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation --force-reinstall \
           --no-cache-dir "$work"; } >"$log" 2>&1; then
    cat "$log"
    rm -f "$log"
    exit 1
fi
rm -f "$log"
find "$work/bitcoin_support" -mindepth 1 -maxdepth 1 ! -name include -exec rm -rf {} +
rm -rf "$work/build"
echo "== the C host and pool tests under $DEBIAN_PYTHON ($("$DEBIAN_PYTHON" --version))"
cd "$work/tests"
"$venv/bin/python" -m pytest -p no:cacheprovider --rootdir "$work" \
    test_c_host.py test_pool_c.py "$@"
