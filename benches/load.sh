#!/usr/bin/env bash
# Model load: ViT-L/14@336-shaped random weights as an fp32 safetensors file (1.7 GB) with a
# learned-parameters file that records their sha256, page cache warm; `headclip bench --mode
# load` times Detector::load in-process (its log line says "loaded in"), then the whole process.
#
#   benches/load.sh            (needs the reference environment for the fp32 file and parameters)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/headclip}
PY=.venv-reference/bin/python
W=out/random-vit-l-14-336.safetensors
W32=out/random-vit-l-14-336-fp32.safetensors
P=out/params-l14-random.safetensors
[[ -x $BIN ]] || { echo "no $BIN: build it first (cargo build --release -p headclip-cli)" >&2; exit 2; }
[[ -x $PY ]] || { echo "no $PY: set it up first (reference/regen.sh)" >&2; exit 2; }
mkdir -p out
[[ -f $W ]] || $BIN weights random ViT-L-14-336 --out $W >/dev/null
# `weights random` writes fp16, as OpenAI's files are; the load target is an fp32 file.
[[ -f $W32 ]] || $PY -c '
import sys
from safetensors import safe_open
from safetensors.torch import save_file
with safe_open(sys.argv[1], "pt") as f:
    save_file({k: f.get_tensor(k).float().contiguous() for k in f.keys()}, sys.argv[2], metadata=f.metadata())
' $W $W32
[[ -f $P ]] || $PY benches/random_params_l14.py $W32 $P
cat $W32 > /dev/null # warm the page cache
ARGS=(--weights $W32 --params $P --threads "${THREADS:-2}")
$BIN bench --mode load "${ARGS[@]}" --iters 5 --warmup 1
/usr/bin/time -f "whole process: %e s wall, %U s user, %S s system, %M KB peak" \
  $BIN bench --mode load "${ARGS[@]}" --iters 1 --warmup 0
