#!/usr/bin/env bash
# Issue #6, workload (d): `headclip test` end to end over MVTec AD bottle (decode, pre-process,
# model, maps, metrics) against the same pipeline written the way the research code is
# (reference/test_pipeline_ref.py: torch Dataset + DataLoader(batch_size=1), PIL, headclip_ref,
# scikit-learn / AnomalyCLIP AUPRO), training-free, on the same random weights and thread count.
# Runs alternate engine, python, python, engine; each side's figure is the faster of its two runs.
#
#   benches/e2e.sh                                    # ViT-B/16 shapes, S = 512, 2 threads
#   IMAGE_SIZE=96 WEIGHTS=out/tiny-random.safetensors benches/e2e.sh     # quick check
#
# Environment: WEIGHTS (default out/random-vit-b-16.safetensors, made if missing), IMAGE_SIZE
# (512), THREADS (2), DATA (../shared/data/mvtec_bottle), WORKERS (DataLoader workers of the
# Python side, 0 as in AnomalyCLIP's test.py), DECODE_THREADS (engine; unset = its default).
#
# Threads. Both sides get THREADS compute threads (engine `--threads`, Python
# `torch.set_num_threads`). The engine is otherwise run with the defaults a user gets with
# `--threads T`: `--decode-threads` unset, which is 1 decoding thread on the CPU, reading and
# pre-processing the next images while the model runs; with `--threads` given, cmd_test.rs does
# not shrink libtorch's pool to leave that thread a core (it only does so without `--threads`), so
# the engine runs T + 1 busy threads. The Python side with WORKERS=0 decodes in its main thread
# between forward passes, as the research code does.
#
# Times. "whole process": wall clock of the command as launched here (the Python side includes
# importing torch, scipy, scikit-learn). "without model load": that minus the model load each side
# reports (engine: report.json timing.model_load_seconds, printed as "model loaded in"; Python:
# load_seconds; both cover reading the weights, building CLIP and encoding the ensemble text).
# "pipeline": in-process time from before the data set listing to after the metrics, without the
# load (engine: data_load_seconds + evaluation_seconds; Python: total_seconds).
# Metrics: the engine's report.json data set mean against Python's, ×100; they must agree within
# 0.5 points (exit status 1 otherwise).
#
# Needs the release binary (cargo build --release -p headclip-cli) and .venv-reference
# (reference/regen.sh sets it up). Results in out/e2e-<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."
WEIGHTS=${WEIGHTS:-out/random-vit-b-16.safetensors}
IMAGE_SIZE=${IMAGE_SIZE:-512}
THREADS=${THREADS:-2}
DATA=${DATA:-../shared/data/mvtec_bottle}
WORKERS=${WORKERS:-0}
DECODE_THREADS=${DECODE_THREADS:-}
TOLERANCE=0.5
BIN=target/release/headclip
PY=.venv-reference/bin/python
OUT=out/e2e-$(date +%Y%m%d-%H%M%S)

[[ -x $BIN ]] || { echo "no $BIN: build it first (cargo build --release -p headclip-cli)" >&2; exit 2; }
[[ -x $PY ]] || { echo "no $PY: set it up first (reference/regen.sh)" >&2; exit 2; }
[[ -d $DATA ]] || { echo "no data set at $DATA" >&2; exit 2; }
if [[ ! -f $WEIGHTS && $WEIGHTS == out/random-vit-b-16.safetensors ]]; then
  $BIN weights random ViT-B-16 --out "$WEIGHTS" >/dev/null
fi
[[ -f $WEIGHTS ]] || { echo "no weights at $WEIGHTS" >&2; exit 2; }
mkdir -p "$OUT"
WEIGHTS_ABS=$(realpath "$WEIGHTS")
DATA_ABS=$(realpath "$DATA")
ENGINE_EXTRA=()
[[ -n $DECODE_THREADS ]] && ENGINE_EXTRA=(--decode-threads "$DECODE_THREADS")

# Each run: its output in $OUT/<name>/, its wall clock in $OUT/<name>/wall_seconds.
engine() {
  local dir=$OUT/$1; mkdir -p "$dir"
  local t0=$EPOCHREALTIME
  $BIN test --weights "$WEIGHTS" --image-size "$IMAGE_SIZE" --threads "$THREADS" "${ENGINE_EXTRA[@]}" \
    --data "mvtec:$DATA" --json "$dir/report.json" >"$dir/stdout.md" 2>"$dir/stderr.txt" \
    || { echo "engine run $1 failed, see $dir/stderr.txt" >&2; exit 1; }
  python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$EPOCHREALTIME" >"$dir/wall_seconds"
  grep -E "images in|peak memory" "$dir/stderr.txt" | sed "s/^/  engine $1: /" >&2
}
python_ref() {
  local dir=$OUT/$1; mkdir -p "$dir"
  local t0=$EPOCHREALTIME
  (cd reference && "../$PY" test_pipeline_ref.py --weights "$WEIGHTS_ABS" --data "$DATA_ABS" \
    --image-size "$IMAGE_SIZE" --threads "$THREADS" --workers "$WORKERS") >"$dir/result.json" 2>"$dir/stderr.txt" \
    || { echo "python run $1 failed, see $dir/stderr.txt" >&2; exit 1; }
  python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$EPOCHREALTIME" >"$dir/wall_seconds"
  tail -1 "$dir/stderr.txt" | sed "s/^/  python $1: /" >&2
}

echo "e2e: weights $WEIGHTS, S = $IMAGE_SIZE, $THREADS threads, data $DATA, results in $OUT" >&2
engine engine-1
python_ref python-1
python_ref python-2
engine engine-2

set +e
python3 - "$OUT" "$TOLERANCE" <<'EOF' | tee "$OUT/table.md"
import json, sys
from pathlib import Path

out, tol = Path(sys.argv[1]), float(sys.argv[2])
wall = lambda run: float((out / run / "wall_seconds").read_text())
eng = {r: json.loads((out / r / "report.json").read_text()) for r in ("engine-1", "engine-2")}
py = {r: json.loads((out / r / "result.json").read_text().strip().splitlines()[-1]) for r in ("python-1", "python-2")}

def engine_row(r):
    t, n = eng[r]["timing"], eng[r]["timing"]["images"]
    pipeline = t["data_load_seconds"] + t["evaluation_seconds"]
    return {"wall": wall(r), "wall_no_load": wall(r) - t["model_load_seconds"], "pipeline": pipeline,
            "ms_per_image": 1e3 * pipeline / n, "load": t["model_load_seconds"],
            "rss": (eng[r]["peak_rss_bytes"] or 0) / 2**20, "images": n}

def python_row(r):
    j = py[r]
    return {"wall": wall(r), "wall_no_load": wall(r) - j["load_seconds"], "pipeline": j["total_seconds"],
            "ms_per_image": 1e3 * j["total_seconds"] / j["images"], "load": j["load_seconds"],
            "rss": j["peak_rss_mb"], "images": j["images"]}

e_runs = [engine_row(r) for r in eng]
p_runs = [python_row(r) for r in py]
best = lambda runs, k: min(x[k] for x in runs)
assert e_runs[0]["images"] == p_runs[0]["images"], "the two sides scored different numbers of images"
m0 = eng["engine-1"]["model"]
print(f"**headclip test end to end**: {e_runs[0]['images']} images, {m0['architecture']} at S = {m0['image_size']}, "
      f"{py['python-1']['threads']} compute threads, Python DataLoader workers {py['python-1']['workers']}; "
      f"best of two runs each (runs: engine, python, python, engine)\n")
print("| seconds | engine | python | speed-up |\n|---|---:|---:|---:|")
for key, label in [("wall", "wall clock, whole process"), ("wall_no_load", "wall clock without model load"),
                   ("pipeline", "pipeline (listing → metrics, no load)"), ("ms_per_image", "ms per image (pipeline)"),
                   ("load", "model load")]:
    e, p = best(e_runs, key), best(p_runs, key)
    print(f"| {label} | {e:.2f} | {p:.2f} | {p / e:.2f}× |")
print(f"| peak RSS (MB) | {max(x['rss'] for x in e_runs):.0f} | {max(x['rss'] for x in p_runs):.0f} | |")
runs = lambda xs: ", ".join("%.2f" % x["wall_no_load"] for x in xs)
print(f"\nruns (wall clock without model load, s): engine {runs(e_runs)}; python {runs(p_runs)}\n")

keys = ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro_anomalyclip"]
ok = True
print(f"| metric (×100, data set mean) | engine | python | \\|diff\\| | within {tol} |\n|---|---:|---:|---:|:---:|")
for k in keys:
    e = eng["engine-1"]["datasets"][0]["mean"][k]
    p = py["python-1"]["metrics"][k]
    # Each side must also agree with its own second run (both are deterministic on the CPU).
    e2 = eng["engine-2"]["datasets"][0]["mean"][k]
    p2 = py["python-2"]["metrics"][k]
    if e is None or p is None:
        good = e is None and p is None
        print(f"| {k} | {e} | {p} | | {'yes' if good else 'NO'} |")
    else:
        d = 100 * abs(e - p)
        good = d <= tol and 100 * abs(e - e2) <= tol and 100 * abs(p - p2) <= tol
        print(f"| {k} | {100 * e:.2f} | {100 * p:.2f} | {d:.4f} | {'yes' if good else 'NO'} |")
    ok &= good
print("\nmetrics agree" if ok else "\nMETRICS DISAGREE")
sys.exit(0 if ok else 1)
EOF
status=${PIPESTATUS[0]}
set -e
echo "results in $OUT"
exit "$status"
