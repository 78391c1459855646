#!/usr/bin/env bash
# The C host and pool tests again under Debian's own /usr/bin/python3, when there is one. Its
# extensions are linked with -Wl,-Bsymbolic-functions, so each shared object binds its own
# functions: the run proves that a C host and Python share one locked pool by design, not by
# symbol interposition. A venv of its own (.venv-debian), kept between runs; the package is
# built from a copy of the tree (the tree's build/ folder belongs to the main interpreter) and
# installed (not editable), again only when its sources changed. The tests run from a copy of
# the tree without the package folder, so that they (and the hosts they start) import the
# installed one. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. scripts/venv_pass.sh
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
pass_begin debian
export PIP_CONSTRAINT="$root/scripts/cffi-recommended.txt"
if [ ! -x "$venv/bin/python" ]; then
    "$DEBIAN_PYTHON" -m venv "$venv"
    quiet "$venv/bin/python" -m pip install -q --upgrade pip "setuptools>=77" wheel cffi \
        pytest pytest-timeout trio outcome
fi
pass_copy_tree
stamp=$(pass_stamp "$venv/bin/python" --version)
if pass_stale "$venv" "$stamp"; then
    echo "== building the package with $DEBIAN_PYTHON into $venv (its sources changed)"
    quiet "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation --force-reinstall \
        --no-cache-dir "$work"
    pass_built "$venv" "$stamp"
fi
rm -f "$log"
pass_installed_only
rm -rf "$work/build"
echo "== the C host and pool tests under $DEBIAN_PYTHON ($("$DEBIAN_PYTHON" --version))"
cd "$work/tests"
"$venv/bin/python" -m pytest -p no:cacheprovider --rootdir "$work" \
    test_c_host.py test_pool_c.py "$@"
