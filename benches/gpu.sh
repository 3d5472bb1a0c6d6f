#!/usr/bin/env bash
# Inference and training throughput of the engine against the PyTorch reference on one CUDA GPU,
# same random weights, alternating engines. Needs PyTorch 2.11 with CUDA (its libtorch is what the
# engine loads) and OpenAI's `clip` package for the reference. Not part of CI.
#
#   benches/gpu.sh [HEADCLIP_BINARY] [OUT_DIR]
#
# Every engine inference line carries its floor: the FLOPs counted from the shapes, the rate of
# an 8192×8192×8192 matrix product in the same precision measured between the timed
# repetitions on the same GPU, and `times_floor` (measured / floor). The summary at the end
# prints bf16 at batch 8 against that floor and the training step against the straightforward
# autograd version (ratio reference / engine, above 1 when the engine is faster).
set -uo pipefail
BIN=${1:-target/release/headclip}
OUT=${2:-out/gpu}
mkdir -p "$OUT"
TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__)' | tee -a "$OUT/gpu.txt"
W=/tmp/headclip-weights
mkdir -p $W
"$BIN" weights random ViT-L-14-336 --out $W/l14.safetensors >/dev/null
"$BIN" weights random ViT-B-16 --out $W/b16.safetensors >/dev/null

echo "== predict on CUDA (ViT-L/14@336 shapes, S = 518)"
"$BIN" predict --device cuda --weights $W/l14.safetensors --out "$OUT/pred" examples/images/*.png \
  > "$OUT/predict.jsonl" 2> "$OUT/predict.log"; echo "predict exit $?"; tail -3 "$OUT/predict.log"

rust() { timeout 120 "$BIN" bench --device cuda --iters 10 --warmup 3 "$@" 2>>"$OUT/stderr.log"; }
py() { timeout 150 python3 reference/bench_ref.py --device cuda --iters 10 --warmup 3 "$@" 2>>"$OUT/stderr.log"; }
record() { local tag=$1; shift; local line; line=$("$@" | tail -1); echo "{\"workload\": \"$tag\", \"result\": ${line:-null}}" | tee -a "$OUT/results.jsonl"; }

for cfg in "l14 518" "b16 512"; do
  set -- $cfg; m=$1; s=$2
  for b in 1 8; do
    record "$m-infer-b$b-rust-fp32" rust --weights $W/$m.safetensors --image-size $s --batch $b
    record "$m-infer-b$b-ref-fp32" py --weights $W/$m.safetensors --image-size $s --batch $b --mode infer
    record "$m-infer-b$b-rust-bf16" rust --weights $W/$m.safetensors --image-size $s --batch $b --precision bf16
    record "$m-infer-b$b-rust-fp16" rust --weights $W/$m.safetensors --image-size $s --batch $b --precision fp16
  done
  record "$m-train-b8-rust" rust --weights $W/$m.safetensors --image-size $s --batch 8 --mode train
  record "$m-train-b8-ref-naive" py --weights $W/$m.safetensors --image-size $s --batch 8 --mode train-naive
  record "$m-train-b8-ref-ours" py --weights $W/$m.safetensors --image-size $s --batch 8 --mode train-ours
done
summary() {
  python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["result"]:
        rows[r["workload"]] = r["result"]
for m in ("l14", "b16"):
    e = rows.get(f"{m}-infer-b8-rust-bf16")
    if e and "times_floor" in e:
        print(f"{m} bf16 batch 8: {e['ms_per_batch_median']:.1f} ms, floor {e['floor_ms_per_batch']:.1f} ms "
              f"({e['flops_per_image']['total'] / 1e12:.3f} TFLOP per image at {e['matmul_gflops'] / 1e3:.0f} "
              f"TFLOP/s measured): {e['times_floor']:.2f}x the floor")
    e, n = rows.get(f"{m}-train-b8-rust"), rows.get(f"{m}-train-b8-ref-naive")
    if e and n:
        print(f"{m} training step batch 8: engine {e['ms_per_batch_median']:.1f} ms, straightforward autograd "
              f"{n['ms_per_batch_median']:.1f} ms: {n['ms_per_batch_median'] / e['ms_per_batch_median']:.2f}x")
PY
}
summary | tee "$OUT/summary.txt"
echo done
