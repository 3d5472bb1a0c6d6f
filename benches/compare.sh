#!/usr/bin/env bash
# CPU benchmarks: the engine against the PyTorch reference (reference/bench_ref.py) on the same
# random weights and thread count, alternating engines in one run; prints the ratios.
#
#   benches/compare.sh [quick|full]      (needs the reference environment: reference/regen.sh sets it up)
#   ONLY='b8|training' benches/compare.sh full    # only the rows whose name matches the regex
#
# quick: ViT-B/16 at S = 512 (inference fp32 and bf16, training steps) and ViT-L/14@336 inference
# at batch 1, about 15 minutes on 2 cores; full adds batch 8 and the ViT-L/14@336 training steps,
# about 45 minutes more. Each row: engine, reference, reference, engine; the best median of each
# side. The ViT-L/14@336 batch-8 rows time one step without a warm-up (a step takes about a minute).
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
[[ -x $PY ]] || { echo "no reference environment at $PY: run reference/regen.sh first" >&2; exit 2; }
[[ -f out/random-vit-b-16.safetensors ]] || $BIN weights random ViT-B-16 --out out/random-vit-b-16.safetensors >/dev/null
[[ -f out/random-vit-l-14-336.safetensors ]] || $BIN weights random ViT-L-14-336 --out out/random-vit-l-14-336.safetensors >/dev/null

# A failed run (out of memory, say) shows its error and stops the script.
rust() { $BIN bench --threads "$THREADS" "$@" 2>"$OUT/last.err" | tail -1 || { cat "$OUT/last.err" >&2; exit 1; }; }
py() { (cd reference && ../$PY bench_ref.py --threads "$THREADS" "$@" 2>"../$OUT/last.err" | tail -1) || { cat "$OUT/last.err" >&2; exit 1; }; }
field() { python3 -c "import sys,json; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

B16="--weights out/random-vit-b-16.safetensors --image-size 512"
L14="--weights out/random-vit-l-14-336.safetensors --image-size 518"
B16_REF="--weights ../out/random-vit-b-16.safetensors --image-size 512"
L14_REF="--weights ../out/random-vit-l-14-336.safetensors --image-size 518"

# workload name | engine args | reference args
WORKLOADS=(
  "ViT-B/16 S=512 inference b1|$B16 --batch 1 --iters 3|$B16_REF --batch 1 --iters 3 --mode infer"
  "ViT-B/16 S=512 inference b1, engine bf16 vs reference fp32|$B16 --batch 1 --iters 3 --precision bf16|$B16_REF --batch 1 --iters 3 --mode infer"
  "ViT-L/14@336 S=518 inference b1|$L14 --batch 1 --iters 2|$L14_REF --batch 1 --iters 2 --mode infer"
  "ViT-B/16 S=512 training step b8 vs straightforward autograd|$B16 --batch 8 --iters 2 --mode train|$B16_REF --batch 8 --iters 2 --mode train-naive"
  "ViT-B/16 S=512 training step b8 vs our algorithm in PyTorch|$B16 --batch 8 --iters 2 --mode train|$B16_REF --batch 8 --iters 2 --mode train-ours"
  "ViT-B/16 S=512 training step b8, engine bf16 (mixed) vs straightforward fp32|$B16 --batch 8 --iters 2 --mode train --precision bf16|$B16_REF --batch 8 --iters 2 --mode train-naive"
)
if [[ $MODE == full ]]; then
  WORKLOADS+=(
    "ViT-B/16 S=512 inference b8|$B16 --batch 8 --iters 2|$B16_REF --batch 8 --iters 2 --mode infer"
    "ViT-B/16 S=512 inference b8, engine bf16 vs reference fp32|$B16 --batch 8 --iters 2 --precision bf16|$B16_REF --batch 8 --iters 2 --mode infer"
    "ViT-L/14@336 S=518 inference b1, engine bf16 vs reference fp32|$L14 --batch 1 --iters 2 --precision bf16|$L14_REF --batch 1 --iters 2 --mode infer"
    "ViT-L/14@336 S=518 inference b8|$L14 --batch 8 --iters 1 --warmup 0|$L14_REF --batch 8 --iters 1 --warmup 0 --mode infer"
    "ViT-L/14@336 S=518 inference b8, engine bf16 vs reference fp32|$L14 --batch 8 --iters 1 --warmup 0 --precision bf16|$L14_REF --batch 8 --iters 1 --warmup 0 --mode infer"
    "ViT-L/14@336 S=518 training step b8 vs our algorithm in PyTorch|$L14 --batch 8 --iters 1 --warmup 0 --mode train|$L14_REF --batch 8 --iters 1 --warmup 0 --mode train-ours"
    # The straightforward version keeps every attention map of the trunk for autograd: tens of
    # GB at batch 8, more than these machines have, so it is compared at batch 1.
    "ViT-L/14@336 S=518 training step b1 vs straightforward autograd|$L14 --batch 1 --iters 1 --mode train|$L14_REF --batch 1 --iters 1 --mode train-naive"
    "ViT-L/14@336 S=518 training step b1, engine bf16 (mixed) vs straightforward fp32|$L14 --batch 1 --iters 1 --mode train --precision bf16|$L14_REF --batch 1 --iters 1 --mode train-naive"
  )
fi

printf '| workload | engine ms | reference ms | speed-up | engine peak RSS MB | reference peak RSS MB |\n|---|---:|---:|---:|---:|---:|\n' | tee "$OUT/table.md"
declare -A REF_CACHE
for w in "${WORKLOADS[@]}"; do
  IFS='|' read -r name rargs pargs <<< "$w"
  [[ -z ${ONLY:-} || $name =~ $ONLY ]] || continue
  # Alternate the order between two rounds so neither engine always runs on a warmer machine.
  # A reference workload already run (the fp32 reference of a bf16 row) is not run again.
  if [[ -n ${REF_CACHE[$pargs]:-} ]]; then
    a1=$(rust $rargs); a2=$(rust $rargs)
    b1=${REF_CACHE[$pargs]%%$'\n'*}; b2=${REF_CACHE[$pargs]#*$'\n'}
  else
    a1=$(rust $rargs); b1=$(py $pargs); b2=$(py $pargs); a2=$(rust $rargs)
    REF_CACHE[$pargs]="$b1"$'\n'"$b2"
  fi
  printf '{"workload": "%s", "engine": [%s, %s], "reference": [%s, %s]}\n' "$name" "$a1" "$a2" "$b1" "$b2" >> "$OUT/raw.jsonl"
  ra=$(python3 -c "print(min($(field "$a1" ms_per_batch_median), $(field "$a2" ms_per_batch_median)))")
  rb=$(python3 -c "print(min($(field "$b1" ms_per_batch_median), $(field "$b2" ms_per_batch_median)))")
  ma=$(python3 -c "print(round(max($(field "$a1" peak_rss_mb), $(field "$a2" peak_rss_mb))))")
  mb=$(python3 -c "print(round(max($(field "$b1" peak_rss_mb), $(field "$b2" peak_rss_mb))))")
  printf '| %s | %.0f | %.0f | %.2f× | %s | %s |\n' "$name" "$ra" "$rb" "$(python3 -c "print($rb/$ra)")" "$ma" "$mb" | tee -a "$OUT/table.md"
done
echo "results in $OUT"
