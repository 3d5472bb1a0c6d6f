#!/usr/bin/env bash
# CPU benchmarks: the engine against the PyTorch reference (reference/bench_ref.py) on the same
# random weights and thread count, alternating engines in one run; prints the ratios.
#
#   benches/compare.sh [quick|full]      (needs the reference environment: reference/regen.sh sets it up)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-quick}
THREADS=${THREADS:-2}
OUT=out/bench-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT" out
scripts/setup-libtorch.sh
cargo build --release --quiet -p headclip-cli
BIN=target/release/headclip
PY=.venv-reference/bin/python
[[ -f out/random-vit-b-16.safetensors ]] || $BIN weights random ViT-B-16 --out out/random-vit-b-16.safetensors >/dev/null
[[ -f out/random-vit-l-14-336.safetensors ]] || $BIN weights random ViT-L-14-336 --out out/random-vit-l-14-336.safetensors >/dev/null

rust() { $BIN bench --threads "$THREADS" "$@" 2>/dev/null | tail -1; }
py() { (cd reference && ../$PY bench_ref.py --threads "$THREADS" "$@" 2>/dev/null | tail -1); }
median() { python3 -c "import sys,json; print(json.loads(sys.argv[1])['ms_per_batch_median'])" "$1"; }

# workload name | engine args | reference args
WORKLOADS=(
  "B16 S512 infer b1|--weights out/random-vit-b-16.safetensors --image-size 512 --batch 1 --iters 3|--weights ../out/random-vit-b-16.safetensors --image-size 512 --batch 1 --iters 3 --mode infer"
  "L14@336 S518 infer b1|--weights out/random-vit-l-14-336.safetensors --image-size 518 --batch 1 --iters 2|--weights ../out/random-vit-l-14-336.safetensors --image-size 518 --batch 1 --iters 2 --mode infer"
  "B16 S512 train b8 (vs naive)|--weights out/random-vit-b-16.safetensors --image-size 512 --batch 8 --iters 2 --mode train|--weights ../out/random-vit-b-16.safetensors --image-size 512 --batch 8 --iters 2 --mode train-naive"
  "B16 S512 train b8 (vs ours in PyTorch)|--weights out/random-vit-b-16.safetensors --image-size 512 --batch 8 --iters 2 --mode train|--weights ../out/random-vit-b-16.safetensors --image-size 512 --batch 8 --iters 2 --mode train-ours"
)
if [[ $MODE == full ]]; then
  WORKLOADS+=(
    "B16 S512 infer b8|--weights out/random-vit-b-16.safetensors --image-size 512 --batch 8 --iters 2|--weights ../out/random-vit-b-16.safetensors --image-size 512 --batch 8 --iters 2 --mode infer"
    "L14@336 S518 infer b8|--weights out/random-vit-l-14-336.safetensors --image-size 518 --batch 8 --iters 1|--weights ../out/random-vit-l-14-336.safetensors --image-size 518 --batch 8 --iters 1 --mode infer"
    "B16 S512 infer b1 bf16 (vs fp32 ref)|--weights out/random-vit-b-16.safetensors --image-size 512 --batch 1 --iters 3 --precision bf16|--weights ../out/random-vit-b-16.safetensors --image-size 512 --batch 1 --iters 3 --mode infer"
  )
fi

printf '| workload | engine ms | reference ms | speed-up |\n|---|---:|---:|---:|\n' | tee "$OUT/table.md"
for w in "${WORKLOADS[@]}"; do
  IFS='|' read -r name rargs pargs <<< "$w"
  # Alternate the order between two rounds so neither engine always runs on a warmer machine.
  a1=$(rust $rargs); b1=$(py $pargs); b2=$(py $pargs); a2=$(rust $rargs)
  echo "$a1 $a2 $b1 $b2" >> "$OUT/raw.jsonl"
  ra=$(python3 -c "print(min($(median "$a1"), $(median "$a2")))")
  rb=$(python3 -c "print(min($(median "$b1"), $(median "$b2")))")
  printf '| %s | %.0f | %.0f | %.2f× |\n' "$name" "$ra" "$rb" "$(python3 -c "print($rb/$ra)")" | tee -a "$OUT/table.md"
done
echo "results in $OUT"
