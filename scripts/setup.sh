#!/usr/bin/env bash
# Create .venv and install lofipipe with its dev extra; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# The pin comes first: it resolves to the CPU build on these machines, while an unpinned
# torch (as another package's requirement) would pull several GB of CUDA wheels.
# TORCH_INDEX_URL picks a wheel index (docker/Dockerfile sets PyTorch's CPU or CUDA one).
.venv/bin/python -m pip install --quiet "torch==2.13.0" \
    ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
.venv/bin/python -m pip install --quiet -e ".[dev]"
