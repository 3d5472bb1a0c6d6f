#!/usr/bin/env bash
# Installs libtorch from PyPI's torch wheel into .libtorch/site (git-ignored), never system-wide.
# The minimal set: torch without its dependencies, plus the CUDA runtime and CUPTI wheels that
# libtorch_cpu.so links. Idempotent: does nothing when the pinned set is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
WHEELS=("torch==${TORCH_VERSION}" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85")
SITE=.libtorch/site
STAMP=.libtorch/installed

want="${WHEELS[*]}"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -f "$SITE/torch/lib/libtorch_cpu.so" ]]; then
  exit 0
fi

echo "headclip: installing libtorch ${TORCH_VERSION} into ${SITE} (one time, ~1 GB)" >&2
rm -rf "$SITE" "$STAMP"
mkdir -p .libtorch
python3 -m pip install --quiet --no-deps --no-compile --target "$SITE" "${WHEELS[@]}"
# tch-sys checks this file against the version it was built for.
echo "$TORCH_VERSION" > "$SITE/torch/build-version"
echo "$want" > "$STAMP"
