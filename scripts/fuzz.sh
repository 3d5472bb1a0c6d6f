#!/usr/bin/env bash
# The long fuzz run: 106,000 mutated inputs over every target of headclip-fuzz (images, masks,
# parameter files, training states, CLIP checkpoints and their configs, HTTP to `headclip serve`), each target
# bounded in time. Prints the summary and writes out/fuzz/summary.json, out/fuzz/summary.txt and
# out/fuzz/run.txt (date, commit, CPU); findings go to out/fuzz/findings. Exits 1 on any finding.
#
#   scripts/fuzz.sh            # seed 1
#   scripts/fuzz.sh 7          # another seed: other inputs
#   FUZZ_SECONDS_PER_TARGET=600 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-libtorch.sh
cargo build --release --quiet -p headclip-cli -p headclip-fuzz
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

seed=${1:-1}
out=out/fuzz
mkdir -p "$out"
# Each input is written here before it runs: memory-backed where possible, and kept if the
# whole process dies, so that the input that killed it can be replayed.
scratch=$( [[ -d /dev/shm ]] && echo /dev/shm || echo "${TMPDIR:-/tmp}" )/headclip-fuzz-$$

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with local changes)')"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
  echo "seed: $seed"
} > "$out/run.txt"
cat "$out/run.txt"

status=0
"$target_dir/release/headclip-fuzz" --seed "$seed" \
  --target image=70000 --target mask=15000 --target params=6000 --target state=1500 \
  --target checkpoint=500 --target clip_config=5000 --target http=8000 \
  --seconds "${FUZZ_SECONDS_PER_TARGET:-1200}" \
  --headclip "$target_dir/release/headclip" \
  --findings "$out/findings" --scratch "$scratch" --json "$out/summary.json" \
  | tee "$out/summary.txt" || status=${PIPESTATUS[0]}

if (( status > 128 )); then
  echo "headclip-fuzz was killed by signal $((status - 128)); the input in flight:" >&2
  ls -l "$scratch" >&2 || true
fi
exit "$status"
