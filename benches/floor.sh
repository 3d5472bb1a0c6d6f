#!/usr/bin/env bash
# Inference against its arithmetic floor on the CPU at hand (run it on each CPU kind: AVX2 only,
# AVX512-BF16, AMX), side by side with the PyTorch reference. Each round runs `headclip bench` in
# fp32 and in bf16 (bf16 only where the CPU has AVX-512: elsewhere the engine runs it in fp32),
# then the reference (fp32) on the same weights and threads; rounds alternate so that a noisy
# neighbour hits both. `headclip bench` prints the FLOPs per image, the rate of a 2048³ matrix
# product in the same precision measured in the same run, and measured / floor. The summary gives
# per workload the median of engine / floor and of reference / engine over the rounds (each ratio
# taken within one round). Prints the CPU model, its flags and the commit first.
#
#   benches/floor.sh [quick|full] [ROUNDS]   quick: ViT-B/16 at S = 512; full adds ViT-L/14@336
#                                            at S = 518; ROUNDS defaults to 3
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-quick}
ROUNDS=${2:-3}
BIN=${BIN:-target/release/headclip}
PY=.venv-reference/bin/python
THREADS=${THREADS:-2}
OUT=out/floor-$(date +%Y%m%d-%H%M%S)
[[ -x $BIN ]] || { echo "no $BIN: build it first (cargo build --release -p headclip-cli)" >&2; exit 2; }
command -v jq >/dev/null || { echo "jq is needed for the results and summary" >&2; exit 2; }
[[ -x $PY ]] || { echo "no $PY: set it up first (reference/regen.sh)" >&2; exit 2; }
mkdir -p "$OUT"
grep -m1 'model name' /proc/cpuinfo | tee "$OUT/cpu.txt"
FLAGS=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512(f|bw|vl|dq|_bf16)|amx_(bf16|tile))$' | tr '\n' ' ')
echo "$FLAGS" | tee -a "$OUT/cpu.txt"
git rev-parse --short HEAD | tee -a "$OUT/cpu.txt"
PRECISIONS=(fp32)
if [[ $FLAGS == *avx512f* ]]; then PRECISIONS+=(bf16); else echo "no AVX-512: bf16 runs in fp32 here, not measured"; fi
[[ -f out/random-vit-b-16.safetensors ]] || $BIN weights random ViT-B-16 --out out/random-vit-b-16.safetensors >/dev/null
SHAPES=("b-16 512 4 1")
if [[ $MODE == full ]]; then
  [[ -f out/random-vit-l-14-336.safetensors ]] || $BIN weights random ViT-L-14-336 --out out/random-vit-l-14-336.safetensors >/dev/null
  SHAPES+=("l-14-336 518 2 1")
fi
RESULTS=$OUT/results.jsonl
for round in $(seq "$ROUNDS"); do
  for shape in "${SHAPES[@]}"; do
    read -r name side iters warmup <<< "$shape"
    common=(--weights "out/random-vit-$name.safetensors" --image-size "$side" --threads "$THREADS" --batch 1 --iters "$iters" --warmup "$warmup")
    for precision in "${PRECISIONS[@]}"; do
      $BIN bench "${common[@]}" --precision "$precision" 2> "$OUT/$name-$precision-$round.err" \
        | jq -c --arg w "$name" --argjson r "$round" '. + {workload: $w, round: $r}' | tee -a "$RESULTS"
    done
    (cd reference && ../$PY bench_ref.py --weights "../out/random-vit-$name.safetensors" --image-size "$side" \
      --threads "$THREADS" --batch 1 --iters "$iters" --warmup "$warmup" --mode infer | tail -1) \
      | jq -c --arg w "$name" --argjson r "$round" '. + {workload: $w, round: $r, precision: "fp32"}' | tee -a "$RESULTS"
  done
done
echo "== summary (median over $ROUNDS rounds; ratios within a round)"
jq -rs '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  group_by(.workload)[] as $w
  | ($w | map(select(.engine == "headclip")) | group_by(.precision)[]) as $e
  | ($e | map(. as $run | ($w[] | select(.engine == "pytorch-reference" and .round == $run.round) | .ms_per_batch_median) / $run.ms_per_batch_median)) as $ref
  | "\($w[0].workload) \($e[0].precision): engine \($e | map(.ms_per_batch_median) | median | round) ms/image, "
    + "engine/floor \($e | map(.times_floor) | median * 1000 | round / 1000) (rounds: \($e | map(.times_floor * 1000 | round / 1000) | join(" "))), "
    + "reference/engine (fp32 reference) \($ref | median * 100 | round / 100)"
' "$RESULTS" | tee "$OUT/summary.txt"
echo "results in $OUT"
