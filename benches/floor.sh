#!/usr/bin/env bash
# Inference against its arithmetic floor on the CPU at hand (run it on each CPU kind: AVX2 only,
# AVX512-BF16, AMX): `headclip bench` in fp32 and bf16 prints the FLOPs per image, the rate of a
# large matrix product in the same precision measured in the same run, and measured / floor; the
# PyTorch reference (fp32) runs beside each workload. Prints the CPU model and flags first.
#
#   benches/floor.sh [quick|full]      quick: ViT-B/16 at S = 512; full adds ViT-L/14@336 at S = 518
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-quick}
BIN=${BIN:-target/release/headclip}
PY=.venv-reference/bin/python
THREADS=${THREADS:-2}
OUT=out/floor-$(date +%Y%m%d-%H%M%S)
[[ -x $BIN ]] || { echo "no $BIN: build it first (cargo build --release -p headclip-cli)" >&2; exit 2; }
[[ -x $PY ]] || { echo "no $PY: set it up first (reference/regen.sh)" >&2; exit 2; }
mkdir -p "$OUT"
grep -m1 'model name' /proc/cpuinfo | tee "$OUT/cpu.txt"
grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512(f|bw|vl|dq|_bf16)|amx_(bf16|tile))$' | tr '\n' ' ' | tee -a "$OUT/cpu.txt"; echo
git rev-parse --short HEAD | tee -a "$OUT/cpu.txt"
[[ -f out/random-vit-b-16.safetensors ]] || $BIN weights random ViT-B-16 --out out/random-vit-b-16.safetensors >/dev/null
SHAPES=("b-16 512 2 1")
if [[ $MODE == full ]]; then
  [[ -f out/random-vit-l-14-336.safetensors ]] || $BIN weights random ViT-L-14-336 --out out/random-vit-l-14-336.safetensors >/dev/null
  SHAPES+=("l-14-336 518 1 0")
fi
for shape in "${SHAPES[@]}"; do
  read -r name side iters warmup <<< "$shape"
  common=(--weights "out/random-vit-$name.safetensors" --image-size "$side" --threads "$THREADS" --batch 1 --iters "$iters" --warmup "$warmup")
  for precision in fp32 bf16; do
    $BIN bench "${common[@]}" --precision $precision 2> "$OUT/$name-$precision.err" | tee -a "$OUT/results.jsonl"
    grep -E '^floor|bf16' "$OUT/$name-$precision.err" || true
  done
  (cd reference && ../$PY bench_ref.py --weights "../out/random-vit-$name.safetensors" --image-size "$side" \
    --threads "$THREADS" --batch 1 --iters "$iters" --warmup "$warmup" --mode infer | tail -1) | tee -a "$OUT/results.jsonl"
done
echo "results in $OUT"
