#!/usr/bin/env bash
# One command: set up (scripts/setup.sh) and run the demo on the built-in
# synthetic dataset (written to ./demo-data unless a folder is given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tilespec demo "$@"
