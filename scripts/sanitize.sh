#!/usr/bin/env bash
# The test suite again, against a copy of the shim built with AddressSanitizer and UBSan.
# The copy lives in a temporary folder so the normal build is left alone; Python itself is not
# instrumented, so the ASan runtime is preloaded and its leak check (which would report the
# interpreter's own allocations) is off. Any sanitizer report aborts the run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
py="$root/.venv/bin/python"
work=$(mktemp -d /tmp/bitcoin_support-asan.XXXXXX)
trap 'rm -rf "$work"' EXIT
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work"
cd "$work"
BITCOIN_SUPPORT_SANITIZE=1 "$py" setup.py -q build_ext --inplace >/dev/null 2>build.log || {
    cat build.log
    exit 1
}
export BITCOIN_SUPPORT_SANITIZED=1
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$work"
# The slow packaging tests build and install the package anew: nothing of the shim under test.
"$py" -m pytest -p no:cacheprovider -m "not slow" "$@"
