#!/usr/bin/env bash
# Set up everything tilespec needs in ./.venv (idempotent): the reference with
# its optional fast CRC32C, both adapters and their frameworks, test tools and
# matplotlib (the plot extra: pictures), Sphinx and MyST (the docs extra: scripts/docs.sh).
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
pip install -e ".[fast,test,plot,docs]" -e adapters_torch -e adapters_tf
# the check imports TensorFlow: keep its start-up lines (logging, oneDNN notice) quiet
TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=0 \
  .venv/bin/python -c "import tilespec, torch, tensorflow, pytest, hypothesis, matplotlib, sphinx, myst_parser" \
  || { echo "setup: an install step failed" >&2; exit 1; }
echo "$want" > "$stamp"
