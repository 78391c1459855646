#!/usr/bin/env bash
# The whole test suite, as the README gives it: set up (apt + .venv), lint, type-check, test,
# then the same tests again against a shim built with AddressSanitizer and UBSan, and once more
# against the package installed with the newest cffi, and under Python 3.13 (a cached Debian 13 root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --strict bitcoin_support
.venv/bin/python -m pytest "$@"
echo "== the same suite against the ASan+UBSan build of the shim"
bash scripts/sanitize.sh "$@"
bash scripts/newest_cffi.sh "$@"
bash scripts/py313.sh "$@"
