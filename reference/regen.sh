#!/usr/bin/env bash
# Regenerates the parity fixtures with the PyTorch reference (needs network for the first set-up).
# The reference environment (.venv-reference, git-ignored) holds PyTorch 2.11.0 with its CUDA
# dependencies, numpy, PIL, scipy, scikit-learn, scikit-image, OpenAI's CLIP code, and OpenCLIP and
# transformers, which build the reference towers of the checkpoints that carry a config.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv-reference/bin/python ]]; then
  python3 -m venv .venv-reference
  .venv-reference/bin/pip install -q torch==2.11.0 numpy pillow==13.0.0 scipy scikit-learn scikit-image \
    safetensors ftfy regex tqdm
  # clip-anytorch asks for torchvision only for its own pre-processing, which we do not use.
  .venv-reference/bin/pip install -q --no-deps clip-anytorch torchvision==0.26.0
  # Pinning torch keeps pip from replacing it while it installs their dependencies.
  .venv-reference/bin/pip install -q torch==2.11.0 torchvision==0.26.0 open_clip_torch==3.3.0 \
    transformers==5.24.0
fi
if [[ ${1:-} == full ]]; then
  shift
  exec .venv-reference/bin/python reference/gen_full_fixtures.py "$@"
fi
.venv-reference/bin/python reference/gen_fixtures.py "$@"
if [[ $# -eq 0 ]]; then
  .venv-reference/bin/python reference/gen_config_fixtures.py
  .venv-reference/bin/python reference/gen_fewshot_fixtures.py
fi
