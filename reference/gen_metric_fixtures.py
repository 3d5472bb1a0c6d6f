#!/usr/bin/env python3
"""Generates the parity fixtures of the `metrics` room (crates/headclip-metrics/tests/fixtures/).

Run with the reference environment:

    /work/main/.venv-reference/bin/python reference/gen_metric_fixtures.py

Expected values come from scikit-learn (AUROC, AP, F1-max), scikit-image (8-connected regions)
and two straightforward AUPRO implementations that follow headclip-spec.md, "Evaluation":
AnomalyCLIP's 200-threshold variant and MVTec AD's exact one. A metric that the reference
cannot compute (one class, no region, too few AUPRO points) is stored as null.

Every score or map value is a float32, stored as a JSON string holding its shortest float32
decimal (`str(np.float32(x))`), which Rust's `str::parse::<f32>` reads back exactly (JSON number
parsing in serde_json is not correctly rounded by default).
"""

import json
import math
import pathlib
import warnings

import numpy as np
from skimage import measure
from sklearn.metrics import (
    auc,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/headclip-metrics/tests/fixtures"
FPR_LIMIT = 0.3
STEPS = 200


def finite_or_none(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def sk_metrics(labels, scores):
    """AUROC, AP, F1-max as scikit-learn computes them; None where undefined."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if labels.size == 0 or labels.min() == labels.max():
        return None, None, None
    auroc = roc_auc_score(labels, scores)
    ap = average_precision_score(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    return finite_or_none(auroc), finite_or_none(ap), finite_or_none(f1.max())


def regions_of(masks):
    """(image index, coords) of every 8-connected region, via skimage."""
    out = []
    for idx, m in enumerate(masks):
        lab = measure.label(m, connectivity=2)
        for r in measure.regionprops(lab):
            out.append((idx, r.coords))
    return out


def aupro_anomalyclip(maps, masks):
    """AnomalyCLIP's AUPRO, as the spec defines it, written plainly."""
    maps = maps.astype(np.float64)  # compare in float64, not in the map's float32
    regions = regions_of(masks)
    normal = masks == 0
    n_normal = int(normal.sum())
    if not regions or n_normal == 0:
        return None
    mn, mx = float(maps.min()), float(maps.max())
    fprs, pros = [], []
    for i in range(STEPS):
        th = mn + i * (mx - mn) / STEPS
        positive = maps > th
        fprs.append(np.logical_and(positive, normal).sum() / n_normal)
        fractions = [
            positive[idx][coords[:, 0], coords[:, 1]].sum() / len(coords)
            for idx, coords in regions
        ]
        pros.append(np.mean(fractions))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < FPR_LIMIT
    fprs, pros = fprs[keep], pros[keep]
    if fprs.size == 0:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    try:
        value = auc(fprs, pros)
    except ValueError:  # fewer than 2 points
        return None
    return finite_or_none(value)


def aupro_mvtec(maps, masks):
    """MVTec AD's exact AUPRO: every distinct value a threshold (positive when >=), the
    (FPR, PRO) curve from (0, 0) to (1, 1), integrated to FPR 0.3 with linear interpolation
    there, divided by 0.3."""
    regions = regions_of(masks)
    n_normal = int((masks == 0).sum())
    if not regions or n_normal == 0:
        return None
    weight = np.zeros(maps.shape, dtype=np.float64)  # 1/region size on region pixels
    for idx, coords in regions:
        weight[idx][coords[:, 0], coords[:, 1]] = 1.0 / len(coords)
    is_normal = (masks == 0).astype(np.float64).ravel()
    values = maps.ravel()
    order = np.argsort(values, kind="stable")[::-1]
    values = values[order]
    fpr = np.cumsum(is_normal[order]) / n_normal
    pro = np.cumsum(weight.ravel()[order]) / len(regions)
    last_of_run = np.append(np.diff(values) != 0, True)
    x = np.concatenate(([0.0], np.minimum(fpr[last_of_run], 1.0), [1.0]))
    y = np.concatenate(([0.0], np.minimum(pro[last_of_run], 1.0), [1.0]))
    area = 0.0
    for k in range(1, len(x)):
        if x[k] <= FPR_LIMIT:
            area += 0.5 * (y[k] + y[k - 1]) * (x[k] - x[k - 1])
        else:
            if x[k - 1] < FPR_LIMIT:
                y_at = y[k - 1] + (y[k] - y[k - 1]) * (FPR_LIMIT - x[k - 1]) / (x[k] - x[k - 1])
                area += 0.5 * (y_at + y[k - 1]) * (FPR_LIMIT - x[k - 1])
            break
    return finite_or_none(area / FPR_LIMIT)


def f32_list(a):
    out = []
    for v in np.asarray(a, dtype=np.float32).ravel():
        text = str(v)
        assert np.float32(text) == v and np.signbit(np.float32(text)) == np.signbit(v), (text, v)
        out.append(text)
    return out


# --------------------------------------------------------------------------------------------
# Image-level cases


def image_cases(rng):
    cases = []

    def add(name, scores, labels):
        scores = np.asarray(scores, dtype=np.float32)
        labels = np.asarray(labels, dtype=bool)
        auroc, ap, f1 = sk_metrics(labels, scores)
        cases.append(
            {
                "name": name,
                "scores": f32_list(scores),
                "labels": [bool(v) for v in labels],
                "auroc": auroc,
                "ap": ap,
                "f1_max": f1,
            }
        )

    for k in range(24):
        n = int(rng.integers(2, 300))
        prevalence = rng.uniform(0.05, 0.95)
        labels = rng.random(n) < prevalence
        levels = int(rng.choice([2, 3, 5, 10, 50]))
        # Quantised scores that correlate with the label: many ties.
        raw = rng.normal(size=n) + labels * rng.uniform(0.0, 2.0)
        scores = np.round(raw * levels / 4) / levels
        add(f"ties_{k}", scores, labels)
    for k in range(8):
        n = int(rng.integers(2, 500))
        labels = rng.random(n) < rng.uniform(0.1, 0.9)
        scores = (rng.random(n) + labels * rng.uniform(0, 0.6)).astype(np.float32)
        add(f"continuous_{k}", scores, labels)
    add("constant_scores", np.full(37, 0.25), rng.random(37) < 0.3)
    add("constant_two", [0.5, 0.5], [True, False])
    add("perfect", [0.1, 0.2, 0.8, 0.9], [False, False, True, True])
    add("inverted", [0.9, 0.8, 0.2, 0.1], [False, False, True, True])
    add("signed_zero_ties", [-0.0, 0.0, 0.0, -0.0, 1.0, -1.0], [True, False, False, True, True, False])
    add("negative_scores", [-3.5, -1.25, -2.0, -1.25, -0.5, -7.0], [False, True, False, False, True, False])
    add("single_positive", [0.3, 0.1, 0.7, 0.2, 0.4], [False, False, True, False, False])
    add("all_normal", rng.random(20), np.zeros(20, dtype=bool))
    add("all_anomalous", rng.random(20), np.ones(20, dtype=bool))
    add("one_sample", [0.5], [True])
    add("empty", [], [])
    return cases


# --------------------------------------------------------------------------------------------
# Pixel-level cases


def blob_masks(rng, n, h, w):
    """Masks with disks and rectangles, plus diagonal-touching squares (one region under
    8-connectivity, two under 4-connectivity)."""
    yy, xx = np.mgrid[0:h, 0:w]
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n):
        if i == 0:
            continue  # a normal image
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            r = rng.uniform(1.5, 5.0)
            masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        y0, x0 = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6))
        masks[i, y0 : y0 + 3, x0 : x0 + 3] = 1
        masks[i, y0 + 3 : y0 + 5, x0 + 3 : x0 + 5] = 1  # touches the square at one corner only
        # Isolated single pixels, one diagonal pair.
        masks[i, h - 1, 0] = 1
        masks[i, h - 3, 2] = 1
        masks[i, h - 2, 3] = 1
    return masks


def smooth_noise(rng, shape, passes=3):
    x = rng.random(shape)
    for _ in range(passes):
        x = (x + np.roll(x, 1, -1) + np.roll(x, -1, -1) + np.roll(x, 1, -2) + np.roll(x, -1, -2)) / 5
    return x


def pixel_case(name, maps, masks):
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks, dtype=np.uint8)
    n, h, w = maps.shape
    auroc, ap, f1 = sk_metrics(masks.ravel() != 0, maps.ravel())
    sizes = sorted(len(coords) for _, coords in regions_of(masks))
    per_image_regions = [int(measure.label(m, connectivity=2).max()) for m in masks]
    return {
        "name": name,
        "height": h,
        "width": w,
        "maps": [f32_list(m) for m in maps],
        "masks": [[int(v) for v in m.ravel()] for m in masks],
        "auroc": auroc,
        "ap": ap,
        "f1_max": f1,
        "aupro_anomalyclip": aupro_anomalyclip(maps, masks),
        "aupro_mvtec": aupro_mvtec(maps, masks),
        "region_sizes_sorted": sizes,
        "regions_per_image": per_image_regions,
    }


def pixel_cases(rng):
    cases = []
    n, h, w = 4, 32, 32
    masks = blob_masks(rng, n, h, w)
    base = smooth_noise(rng, (n, h, w))
    signal = 0.6 * base + 0.4 * masks * rng.uniform(0.3, 1.0, size=(n, h, w))
    # Quantised to 1/128: many ties.
    cases.append(pixel_case("blobs_quantised", np.round(signal * 128) / 128, masks))
    cases.append(pixel_case("blobs_continuous", signal, masks))
    masks2 = blob_masks(rng, n, h, w)
    weak = 0.8 * smooth_noise(rng, (n, h, w)) + 0.2 * masks2 * rng.random((n, h, w))
    cases.append(pixel_case("blobs_weak_signal", np.round(weak * 64) / 64, masks2))
    # Rectangular images.
    masks3 = blob_masks(rng, 3, 20, 28)
    rect = 0.5 * smooth_noise(rng, (3, 20, 28)) + 0.5 * masks3 * rng.random((3, 20, 28))
    cases.append(pixel_case("rect_20x28", rect, masks3))
    # Degenerate cases.
    cases.append(pixel_case("constant_maps", np.full((n, h, w), 0.375), masks))
    cases.append(pixel_case("no_anomaly", smooth_noise(rng, (2, 16, 16)), np.zeros((2, 16, 16))))
    cases.append(pixel_case("all_anomalous", smooth_noise(rng, (2, 8, 8)), np.ones((2, 8, 8))))
    # FPR hits exactly 0.3 at a threshold (10 normal pixels with distinct values).
    vals = np.array([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.45, 0.55, 0.65, 0.7, 0.75, 0.8, 0.9, 0.95, 1.0])
    mask = np.array([0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 1])
    assert (mask == 0).sum() == 10
    cases.append(pixel_case("fpr_hits_limit", vals.reshape(1, 4, 4), mask.reshape(1, 4, 4)))
    # Only one AnomalyCLIP threshold has FPR < 0.3: that variant is absent.
    m = np.zeros((1, 10, 10), dtype=np.uint8)
    m[0, 0, :5] = 1
    v = np.zeros((1, 10, 10))
    v[0, 0, :5] = np.linspace(0.2, 1.0, 5)
    v[0, 5:, :] = 0.0
    v[0, 1, :] = 1.0      # 10 normal pixels at the maximum
    v[0, 2, :] = 0.993    # 10 between the last two thresholds
    v[0, 3, :4] = 1.0     # 4 more at the maximum: 24 of 95 normals always positive above t_198
    v[0, 3, 4:] = 0.993   # 6 more between the last two thresholds
    cases.append(pixel_case("one_kept_point", v, m))
    # Normal pixels all at the maximum: no threshold has FPR < 0.3.
    v2 = np.where(m == 1, 0.5, 1.0)
    v2[0, 0, 0] = 0.0
    cases.append(pixel_case("no_kept_point", v2, m))
    # Touching-diagonal checkerboard: one region under 8-connectivity.
    checker = (np.indices((12, 12)).sum(axis=0) % 2 == 0).astype(np.uint8)
    checker[6:, :] = 0
    cmap = 0.5 * checker + 0.5 * smooth_noise(rng, (12, 12))
    cases.append(pixel_case("checkerboard", cmap[None], checker[None]))
    return cases


def main():
    warnings.simplefilter("error", RuntimeWarning)
    rng = np.random.default_rng(20250522)
    OUT.mkdir(parents=True, exist_ok=True)
    img = image_cases(rng)
    pix = pixel_cases(rng)
    (OUT / "image_cases.json").write_text(json.dumps(img, separators=(",", ":")) + "\n")
    (OUT / "pixel_cases.json").write_text(json.dumps(pix, separators=(",", ":")) + "\n")
    for c in pix:
        print(
            f"{c['name']:>18}: auroc={c['auroc']} ap={c['ap']} f1={c['f1_max']} "
            f"aupro_ac={c['aupro_anomalyclip']} aupro_mvtec={c['aupro_mvtec']} "
            f"regions={c['regions_per_image']}"
        )
    print(f"{len(img)} image cases, {len(pix)} pixel cases -> {OUT}")


if __name__ == "__main__":
    main()
