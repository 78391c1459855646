#!/usr/bin/env bash
# Set up (apt + .venv, only on a first run or when a build input changed; set-up notices go to
# stderr) and start the HTTP echo server; extra arguments go to the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m bitcoin_support.echo "$@"
