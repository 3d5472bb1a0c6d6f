"""How far reduced-precision scores and maps are from fp32: reads the `--save-maps` folders of two
`headclip test` runs over the same data (one fp32, one `--precision bf16`) and prints, per data set
and overall, the largest |score difference| of the joint image score, Kendall's τ of the reduced
precision ranking against fp32, and the largest |map difference| over every pixel.

    python benches/precision_agreement.py FP32_MAPS_DIR BF16_MAPS_DIR [--json OUT]

Targets (issue #6): scores within 1e-3, τ ≥ 0.99, maps within 0.01. τ is also given over the pairs
whose fp32 scores differ by more than the score tolerance: a random-weight model gives nearly equal
scores to every image, and pairs closer than bf16 can resolve make the plain τ a coin toss.
"""

import argparse
import csv
import json
import math
import pathlib
from collections import defaultdict

import numpy as np
from scipy.stats import kendalltau

SCORE_TOL = 1e-3


def read(maps_dir: pathlib.Path) -> dict:
    rows = {}
    with open(maps_dir / "scores.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows[r["image"]] = r
    return rows


def resolvable_tau(a: np.ndarray, b: np.ndarray, gap: float) -> tuple[float, int]:
    """τ over the pairs (i, j) with |a_i − a_j| > gap: (concordant − discordant) / pairs."""
    i, j = np.triu_indices(len(a), k=1)
    keep = np.abs(a[i] - a[j]) > gap
    if not keep.any():
        return math.nan, 0
    s = np.sign(a[i][keep] - a[j][keep]) * np.sign(b[i][keep] - b[j][keep])
    return float(s.mean()), int(keep.sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("fp32", type=pathlib.Path)
    ap.add_argument("reduced", type=pathlib.Path)
    ap.add_argument("--json", type=pathlib.Path)
    args = ap.parse_args()
    full, reduced = read(args.fp32), read(args.reduced)
    missing = sorted(set(full) ^ set(reduced))
    if missing:
        raise SystemExit(f"the two runs scored different images, e.g. {missing[:3]}")

    by_set = defaultdict(list)
    for image, r in full.items():
        by_set[r["dataset"].lower()].append(image)
    by_set["all"] = list(full)

    report = {}
    for name, images in by_set.items():
        a = np.array([float(full[i]["score"]) for i in images])
        b = np.array([float(reduced[i]["score"]) for i in images])
        map_diff = 0.0
        for i in images:
            if name == "all":
                break
            fa = args.fp32 / full[i]["npy"]
            fb = args.reduced / reduced[i]["npy"]
            map_diff = max(map_diff, float(np.abs(np.load(fa) - np.load(fb)).max()))
        tau = kendalltau(a, b).statistic
        tau_gap, pairs = resolvable_tau(a, b, SCORE_TOL)
        report[name] = {
            "images": len(images),
            "fp32_score_std": float(a.std()),
            "max_abs_score_diff": float(np.abs(a - b).max()),
            "kendall_tau": float(tau),
            "kendall_tau_pairs_apart_by_more_than_1e-3": tau_gap,
            "pairs_apart_by_more_than_1e-3": pairs,
            "max_abs_map_diff": map_diff if name != "all" else None,
        }
    report["all"]["max_abs_map_diff"] = max(
        v["max_abs_map_diff"] for k, v in report.items() if k != "all"
    )

    print("| data set | images | fp32 score std | max abs score diff | Kendall τ | τ over pairs > 1e-3 apart (pairs) | max abs map diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, v in report.items():
        print(
            f"| {name} | {v['images']} | {v['fp32_score_std']:.2e} | {v['max_abs_score_diff']:.2e} | "
            f"{v['kendall_tau']:.4f} | {v['kendall_tau_pairs_apart_by_more_than_1e-3']:.4f} "
            f"({v['pairs_apart_by_more_than_1e-3']}) | {v['max_abs_map_diff']:.2e} |"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
