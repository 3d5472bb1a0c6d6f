#!/usr/bin/env bash
# Regenerates the parity fixtures with the PyTorch reference (needs network for the first set-up).
# The reference environment (.venv-reference, git-ignored) holds PyTorch 2.11.0 with its CUDA
# dependencies, numpy, PIL, scipy, scikit-learn, scikit-image and OpenAI's CLIP code.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv-reference/bin/python ]]; then
  python3 -m venv .venv-reference
  .venv-reference/bin/pip install -q torch==2.11.0 numpy pillow scipy scikit-learn scikit-image \
    safetensors ftfy regex tqdm
  # clip-anytorch asks for torchvision only for its own pre-processing, which we do not use.
  .venv-reference/bin/pip install -q --no-deps clip-anytorch torchvision==0.26.0
fi
if [[ ${1:-} == full ]]; then
  shift
  exec .venv-reference/bin/python reference/gen_full_fixtures.py "$@"
fi
exec .venv-reference/bin/python reference/gen_fixtures.py "$@"
