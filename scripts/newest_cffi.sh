#!/usr/bin/env bash
# The test suite once more, against the package installed (not editable) with the newest cffi on
# PyPI: the package asks for cffi>=1.17, the main run uses the recommended 1.17.1. A venv of its
# own, kept between runs: cffi is brought to the newest each run (pip's cache makes that quick),
# and the package is rebuilt only when its sources or that cffi changed. The tests run from a
# copy of the tree without the package folder, so that they (and the programs they start) import
# the installed package; test paths given as arguments name the same files in the copy.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. scripts/venv_pass.sh
venv="$root/.venv-cffi-newest"
pass_begin cffi
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
    quiet "$venv/bin/python" -m pip install -q --upgrade pip
fi
quiet "$venv/bin/python" -m pip install -q --upgrade cffi
stamp=$(pass_stamp "$venv/bin/python" -c 'import cffi; print(cffi.__version__)')
if pass_stale "$venv" "$stamp"; then
    echo "== installing the package and its test tools into $venv (its sources changed)"
    # --upgrade rebuilds the package from the source tree; its dependencies come from the cache.
    quiet "$venv/bin/python" -m pip install -q --upgrade "$root[test]" cffi
    pass_built "$venv" "$stamp"
fi
rm -f "$log"
pass_copy_tree
pass_installed_only
args=()
for a in "$@"; do
    case $a in
        "$root"/*) args+=("$work/${a#"$root"/}") ;;
        *) args+=("$a") ;;
    esac
done
echo "== the same suite against cffi $("$venv/bin/python" -c 'import cffi; print(cffi.__version__)'), package installed"
cd "$work"
# The slow packaging tests build from the source tree, which this copy leaves out.
"$venv/bin/python" -m pytest -p no:cacheprovider --rootdir "$work" -m "not slow" "${args[@]}"
