#!/usr/bin/env bash
# Set up (apt + .venv) and start the HTTP echo server; extra arguments go to the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m bitcoin_support.echo "$@"
