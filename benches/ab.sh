#!/usr/bin/env bash
# Two builds of `headclip bench` (or one build under two environments) alternating, A B A B …,
# with the ratio B/A of their median time per batch taken pair by pair: the way BENCHMARKS.md
# compares a change with the code before it on a noisy machine. Extra arguments go to both runs.
#
#   benches/ab.sh ROUNDS "A=CMD" "B=CMD" -- BENCH_ARGS…
#   e.g. benches/ab.sh 5 "old=/tmp/headclip-old" "new=target/release/headclip" -- \
#          --weights out/random-vit-b-16.safetensors --image-size 512 --threads 2 --iters 6 --warmup 1
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=$1 A=$2 B=$3
shift 3
[[ ${1:-} == -- ]] && shift
command -v jq >/dev/null || { echo "jq is needed for the results" >&2; exit 2; }
declare -A MEDIANS
for round in $(seq "$ROUNDS"); do
  for spec in "$A" "$B"; do
    label=${spec%%=*} cmd=${spec#*=}
    line=$(eval "$cmd bench \"\$@\"" 2>/dev/null | tail -1)
    jq -r --arg l "$label" --argjson r "$round" \
      '"\($r) \($l) median \(.ms_per_batch_median | round) ms, best \(.ms_per_batch_min | round) ms, matrix \(.matmul_gflops * 10 | round / 10) GFLOP/s, engine/floor \(.times_floor * 1000 | round / 1000)"' <<< "$line"
    MEDIANS[$label-$round]=$(jq .ms_per_batch_median <<< "$line")
  done
done
la=${A%%=*} lb=${B%%=*}
ratios=()
for round in $(seq "$ROUNDS"); do
  ratios+=("$(jq -n "${MEDIANS[$lb-$round]} / ${MEDIANS[$la-$round]} * 1000 | round / 1000")")
done
echo "$lb/$la per pair: ${ratios[*]}; median $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}')"
