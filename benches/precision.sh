#!/usr/bin/env bash
# Reduced-precision accuracy on the shared data: `headclip test` over the five shared data sets
# with the ViT-B/16-shaped random checkpoint at S = 512, once in fp32 and once with
# `--precision bf16`, maps saved; then benches/precision_agreement.py compares scores, rankings
# and maps. About 35 minutes on 2 cores (fp32 ≈ 1.5 s, bf16 ≈ 0.8 s per image).
#
#   benches/precision.sh                   # both runs
#   FP32=out/test-b16 benches/precision.sh # reuse an fp32 run's folder (its maps/ and scores.csv)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/headclip
PY=.venv-reference/bin/python
WEIGHTS=${WEIGHTS:-out/random-vit-b-16.safetensors}
PRECISION=${PRECISION:-bf16}
OUT=out/precision-$(date +%Y%m%d-%H%M%S)
[[ -x $BIN ]] || { echo "no $BIN: build it first (cargo build --release -p headclip-cli)" >&2; exit 2; }
[[ -x $PY ]] || { echo "no $PY: set it up first (reference/regen.sh)" >&2; exit 2; }
[[ -f $WEIGHTS ]] || $BIN weights random ViT-B-16 --out "$WEIGHTS" >/dev/null
mkdir -p "$OUT"
DATA=(
  --data mvtec:../shared/data/mvtec_bottle
  --data mvtec:../shared/data/colondb/colon,name=ColonDB
  --data folder:../shared/data/kvasir,anomalous=images,masks=masks,name=Kvasir
  --data 'csv:../shared/data/headct/labels.csv,image=id,label=hemorrhage,template=head_ct/{:03}.png,name=HeadCT'
  --data yesno:../shared/data/brainmri,name=BrainMRI
)
run() { # name, extra args
  local dir=$OUT/$1; shift
  mkdir -p "$dir"
  /usr/bin/time -f "%e s elapsed, %M KB peak" $BIN test --weights "$WEIGHTS" --image-size 512 --threads 2 \
    "${DATA[@]}" --json "$dir/report.json" --save-maps "$dir/maps" "$@" > "$dir/table.md" 2> "$dir/log.txt"
  tail -3 "$dir/log.txt"
}
if [[ -n ${FP32:-} ]]; then
  FP32_MAPS=$FP32/maps
else
  run fp32; FP32_MAPS=$OUT/fp32/maps
fi
run "$PRECISION" --precision "$PRECISION"
$PY benches/precision_agreement.py "$FP32_MAPS" "$OUT/$PRECISION/maps" --json "$OUT/agreement.json" | tee "$OUT/agreement.md"
echo "results in $OUT"
