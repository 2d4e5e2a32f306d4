#!/usr/bin/env bash
# One command: set up (scripts/setup.sh) and run the whole test suite,
# adapters included. Extra arguments go to pytest. HYPOTHESIS_PROFILE=thorough
# runs the longer property tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
