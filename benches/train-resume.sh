#!/usr/bin/env bash
# The documented training run of issue #3: `headclip train` on ../shared/data/mvtec_bottle with
# the ViT-L/14@336-shaped random checkpoint at its default S = 518, batch 8, 2 epochs. After epoch 1
# and a mid-epoch state checkpoint in epoch 2 the process is killed with SIGKILL (no chance to save
# anything); the parameters file must still hold epoch 1, and `--resume` must continue epoch 2 from
# the checkpoint's batch and finish. Prints seconds per training image and peak memory.
# About 25 minutes on 2 cores.
#
#   benches/train-resume.sh                      # WEIGHTS, IMAGE_SIZE, THREADS, INTERVAL overridable
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/headclip
WEIGHTS=${WEIGHTS:-out/random-vit-l-14-336.safetensors}
THREADS=${THREADS:-2}
INTERVAL=${INTERVAL:-120}
OUT=out/train-resume-$(date +%Y%m%d-%H%M%S)
[[ -x $BIN ]] || { echo "no $BIN: build it first (cargo build --release -p headclip-cli)" >&2; exit 2; }
[[ -f $WEIGHTS ]] || $BIN weights random ViT-L-14-336 --out "$WEIGHTS" >/dev/null
mkdir -p "$OUT"
PARAMS=$OUT/params.safetensors
STATE=$OUT/params.state.safetensors
LOG=$OUT/params.losses.jsonl
ARGS=(train --weights "$WEIGHTS" --data mvtec:../shared/data/mvtec_bottle --out "$PARAMS"
      --epochs 2 --threads "$THREADS" --checkpoint-interval "$INTERVAL")
[[ -n ${IMAGE_SIZE:-} ]] && ARGS+=(--image-size "$IMAGE_SIZE")

# progress of the state file: "epochs_done batches_done_in_epoch"
state_progress() {
  python3 - "$STATE" <<'PY'
import json, struct, sys
try:
    with open(sys.argv[1], "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n))["__metadata__"]["headclip.training_state"]
    meta = json.loads(meta)
    print(meta["epochs_done"], (meta.get("in_epoch") or {}).get("batches_done", 0))
except (OSError, KeyError, ValueError, struct.error):
    print(0, 0)
PY
}

echo "== run 1: $BIN ${ARGS[*]}"
# Started directly (not under /usr/bin/time) so that the SIGKILL reaches the trainer itself.
"$BIN" "${ARGS[@]}" 2> "$OUT/run1.log" &
PID=$!
# Wait for epoch 1, then for a mid-epoch checkpoint of epoch 2, then one more batch, and kill.
until grep -q '"summary":true' "$LOG" 2>/dev/null; do sleep 2; kill -0 $PID; done
EPOCH1_SHA=$(sha256sum "$PARAMS" | cut -d' ' -f1)
echo "epoch 1 complete: $(grep '"summary":true' "$LOG" | head -1)"
until read -r done batches <<< "$(state_progress)" && [[ $done == 1 && $batches -ge 1 ]]; do sleep 2; kill -0 $PID; done
echo "mid-epoch checkpoint: epoch 2 after batch $batches"
lines=$(grep -c '"epoch":2' "$LOG" || true)
until [[ $(grep -c '"epoch":2' "$LOG" || true) -gt $lines ]]; do sleep 2; kill -0 $PID; done
echo "run 1 peak memory before the kill: $(grep VmHWM /proc/$PID/status)"
kill -KILL $PID; wait $PID || true
echo "killed (SIGKILL) after batch $(grep '"epoch":2' "$LOG" | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["batch"])') of epoch 2"
[[ $(sha256sum "$PARAMS" | cut -d' ' -f1) == "$EPOCH1_SHA" ]] && echo "parameters file unchanged since epoch 1: ok" \
  || { echo "parameters file changed after epoch 1" >&2; exit 1; }
echo "state after the kill (epochs done, batches of epoch 2 done): $(state_progress)"

echo "== run 2: $BIN ${ARGS[*]} --resume"
/usr/bin/time -v "$BIN" "${ARGS[@]}" --resume 2> "$OUT/run2.log"
grep -E "resuming|continuing|epoch 2/2|Maximum resident|Elapsed" "$OUT/run2.log"
python3 - "$PARAMS" "$LOG" <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    meta = json.loads(f.read(n))["__metadata__"]
print("parameters file: epochs", meta["headclip.epochs"])
for line in open(sys.argv[2]):
    r = json.loads(line)
    if r.get("summary"):
        print(f"epoch {r['epoch']}: loss {r['loss']['total']:.4f}, {r['images']} images, "
              f"{r['seconds']:.0f} s for this process's part, {r['seconds_per_image']:.2f} s per image")
PY
echo "results in $OUT"
