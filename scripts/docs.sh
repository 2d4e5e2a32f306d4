#!/usr/bin/env bash
# One command: build the documentation site (Sphinx + MyST, docs/conf.py) from spec/,
# README.md, the docstrings and pictures drawn at build time, into docs/_build/html.
# Warnings are errors. The docs tools (the `docs` extra) are installed into ./.venv by
# scripts/setup.sh. Extra arguments go to sphinx-build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=0 \
  .venv/bin/python -m sphinx -b html -W --keep-going -q docs docs/_build/html "$@"
echo "docs: $(pwd)/docs/_build/html/index.html"
