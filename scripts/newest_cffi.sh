#!/usr/bin/env bash
# The test suite once more, against the package installed (not editable) with the newest cffi on
# PyPI: the package asks for cffi>=1.17, the main run uses the recommended 1.17.1. A venv of its
# own; the tests run from a copy of the tree without the package folder, so that they
# (and the programs they start) import the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/.venv-cffi-newest"
work=$(mktemp -d /tmp/bitcoin_support-cffi.XXXXXX)
trap 'rm -rf "$work"' EXIT
log=$(mktemp)
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
if ! { "$venv/bin/python" -m pip install -q --upgrade pip &&
       "$venv/bin/python" -m pip install -q --upgrade --force-reinstall --no-cache-dir \
           "$root[test]" cffi; } >"$log" 2>&1; then
    cat "$log"
    rm -f "$log"
    exit 1
fi
rm -f "$log"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work"
# Whatever runs in the copy imports the installed package: only the C header stays (without
# __init__.py the folder cannot shadow the installed package).
find "$work/bitcoin_support" -mindepth 1 -maxdepth 1 ! -name include -exec rm -rf {} +
echo "== the same suite against cffi $("$venv/bin/python" -c 'import cffi; print(cffi.__version__)'), package installed"
cd "$work/tests"
# The slow packaging tests build from the source tree, which this copy leaves out.
"$venv/bin/python" -m pytest -p no:cacheprovider --rootdir "$work" -m "not slow" "$@"
