#!/usr/bin/env bash
# The whole test suite, as the README gives it: set up (apt + .venv), lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --strict bitcoin_support
.venv/bin/python -m pytest "$@"
