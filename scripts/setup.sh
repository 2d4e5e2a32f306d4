#!/usr/bin/env bash
# Set up everything tilespec needs in ./.venv (idempotent): the reference with
# its optional fast CRC32C, both adapters and their frameworks, test tools.
# torch is installed first, pinned to the CPU build on local disk: a looser
# requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.tilespec-setup
want="$(cat setup.cfg adapters_torch/setup.cfg adapters_tf/setup.cfg scripts/setup.sh | cksum)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
pip install torch==2.13.0
pip install tensorflow-cpu==2.21.0
pip install -e ".[fast,test]" -e adapters_torch -e adapters_tf
.venv/bin/python -c "import tilespec, torch, tensorflow, pytest, hypothesis" \
  || { echo "setup: an install step failed" >&2; exit 1; }
echo "$want" > "$stamp"
