"""`headclip test` end to end, written the way the research code is: the Python side of
benchmark workload (d) of issue #6 (`benches/e2e.sh`).

It mirrors AnomalyCLIP's `test.py` on an MVTec AD layout, training-free (WinCLIP's prompt
ensemble, all head weights 1), with the engine's pre-processing and metrics:

- data: a torch `Dataset` over `ROOT/<category>/test/<defect>/*` (sorted by path, as the engine
  sorts samples), `good` normal with an all-zero mask, every other defect anomalous with its mask
  `ROOT/<category>/ground_truth/<defect>/<stem>_mask.<ext>` (or `<stem>.<ext>`), read through a
  `DataLoader(batch_size=1, shuffle=False, num_workers=--workers)`;
- pre-processing: PIL decoding, `convert("RGB").resize((S, S), BICUBIC)`, then
  `(v / 255 - mean) / std` in float32, CHW (`crates/headclip/src/data/mod.rs`); masks binarised,
  resized with PIL's bilinear and kept where > 127 (`data/mask.rs`). Both come from
  `gen_preprocess_fixtures.py`, whose PIL code is what the engine's fixtures are checked against;
- model: `headclip_ref.py` (OpenAI's CLIP code plus HeadCLIP's maps), the ensemble text features
  computed once, `score()` per image: global score, per-layer maps at S×S, Gaussian smoothing
  (sigma 4), joint score; layers from `bench_ref.default_layers`, as the engine's defaults;
- metrics, per category, on everything gathered in memory (as AnomalyCLIP does): scikit-learn
  AUROC / AP / F1-max of the joint score and of all pixels, AnomalyCLIP's AUPRO (FPR limit 0.3),
  from `gen_metric_fixtures.py` (the engine's metric fixtures); a data set's figure is the mean
  over its categories.

Run from `reference/` (it imports `headclip_ref`), e.g.

    cd reference && ../.venv-reference/bin/python test_pipeline_ref.py \
        --weights ../out/random-vit-b-16.safetensors --data ../../shared/data/mvtec_bottle \
        --image-size 512 --threads 2

Prints one JSON line on stdout. `total_seconds` is wall clock from before the data set listing to
after the metrics, without the model load (CLIP weights read and built, ensemble text features
encoded: what the engine's "model loaded in" covers), which is `load_seconds`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

import headclip_ref as ref
from bench_ref import default_layers
from gen_metric_fixtures import aupro_anomalyclip, sk_metrics
from gen_preprocess_fixtures import MEAN, STD, mask_expected, rgb_expected

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
METRICS = ["image_auroc", "image_ap", "image_f1_max",
           "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro_anomalyclip"]


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def list_mvtec(root: Path) -> list[dict]:
    """Samples of every category's test split: {path, mask, category, anomalous}."""
    is_category = lambda d: (d / "test").is_dir()  # noqa: E731
    categories = [root] if is_category(root) else sorted(d for d in root.iterdir() if is_category(d))
    if not categories:
        raise SystemExit(f"{root}: no MVTec AD category (ROOT/<category>/test/<defect>/)")
    samples = []
    for cat in categories:
        cat_samples = []
        for defect in sorted(d for d in (cat / "test").iterdir() if d.is_dir()):
            for img in images_in(defect):
                mask = None
                if defect.name != "good":
                    gt = cat / "ground_truth" / defect.name
                    found = [p for stem in (f"{img.stem}_mask", img.stem)
                             for p in sorted(gt.glob(stem + ".*")) if p.suffix.lower() in IMAGE_SUFFIXES]
                    if not found:
                        raise SystemExit(f"{img}: no mask in {gt}")
                    mask = found[0]
                cat_samples.append({"path": img, "mask": mask, "category": cat.name,
                                    "anomalous": defect.name != "good"})
        samples += sorted(cat_samples, key=lambda s: s["path"])
    return samples


class MVTecTest(Dataset):
    """One item per test image: the normalised image, its S×S 0/1 mask, its label."""

    def __init__(self, samples: list[dict], side: int):
        self.samples = samples
        self.side = side
        self.mean = torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(STD, dtype=torch.float32)[:, None, None]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        px = rgb_expected(s["path"], self.side, "")  # PIL: convert("RGB"), resize BICUBIC
        img = torch.from_numpy(np.array(px, np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0
        img = (img - self.mean) / self.std
        if s["mask"] is None:
            mask = torch.zeros(self.side, self.side, dtype=torch.uint8)
        else:
            mask = torch.from_numpy(mask_expected(s["mask"], self.side))
        return {"img": img, "img_mask": mask, "cls_name": s["category"],
                "anomaly": int(s["anomalous"]), "img_path": str(s["path"])}


def category_metrics(scores, labels, maps, masks) -> dict:
    image_auroc, image_ap, image_f1 = sk_metrics(labels, scores)
    pixel_auroc, pixel_ap, pixel_f1 = sk_metrics(masks.ravel() != 0, maps.ravel())
    return {"image_auroc": image_auroc, "image_ap": image_ap, "image_f1_max": image_f1,
            "pixel_auroc": pixel_auroc, "pixel_ap": pixel_ap, "pixel_f1_max": pixel_f1,
            "aupro_anomalyclip": aupro_anomalyclip(maps, masks)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="CLIP weights, safetensors (OpenAI layout)")
    ap.add_argument("--data", required=True, help="MVTec AD root (or one category folder)")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader num_workers (research code: 0)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    started = time.perf_counter()
    samples = list_mvtec(Path(args.data))
    listing_seconds = time.perf_counter() - started

    # Model load, timed apart (the engine's "model loaded in" also covers the text features).
    t = time.perf_counter()
    model = ref.load_clip(load_file(args.weights)).to(dev)
    for p in model.parameters():
        p.requires_grad_(False)
    start, readout = default_layers(len(model.visual.transformer.resblocks))
    cfg = ref.Config(readout=readout, dpam_start=start)
    params = ref.Params()  # training-free
    with torch.no_grad():
        text = ref.encode_ensemble_text(model)
    sync()
    load_seconds = time.perf_counter() - t

    t_eval = time.perf_counter()
    loader = DataLoader(MVTecTest(samples, args.image_size), batch_size=1, shuffle=False,
                        num_workers=args.workers)
    results: dict[str, dict[str, list]] = {}
    model_seconds = 0.0
    for items in loader:
        image = items["img"].to(dev)
        gt_mask = items["img_mask"]
        t = time.perf_counter()
        with torch.no_grad():
            out = ref.score(model, image, text, cfg, params)
        model_seconds += time.perf_counter() - t
        r = results.setdefault(items["cls_name"][0], {"scores": [], "labels": [], "maps": [], "masks": []})
        r["scores"].append(out["score"][0])
        r["labels"].append(int(items["anomaly"][0]))
        r["maps"].append(out["map"][0].astype(np.float32))
        r["masks"].append(gt_mask[0].numpy())
    eval_seconds = time.perf_counter() - t_eval

    t = time.perf_counter()
    per_category = {}
    for name, r in results.items():
        per_category[name] = category_metrics(np.array(r["scores"], dtype=np.float32), np.array(r["labels"]),
                                              np.stack(r["maps"]), np.stack(r["masks"]))
    mean = {}
    for m in METRICS:
        values = [c[m] for c in per_category.values() if c[m] is not None]
        mean[m] = sum(values) / len(values) if values else None
    metrics_seconds = time.perf_counter() - t
    total_seconds = time.perf_counter() - started - load_seconds

    n = len(samples)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n} images in {total_seconds:.1f} s without the model load ({1e3 * total_seconds / n:.1f} ms "
          f"per image; model {1e3 * model_seconds / n:.1f} ms per image), metrics {metrics_seconds:.2f} s; "
          f"model loaded in {load_seconds:.1f} s; peak RSS {peak_mb:.0f} MB", file=sys.stderr)
    print(json.dumps({
        "engine": "pytorch-reference-pipeline", "device": args.device, "threads": torch.get_num_threads(),
        "workers": args.workers, "image_size": args.image_size, "dpam_start": start, "readout": readout,
        "images": n, "total_seconds": total_seconds, "seconds_per_image": total_seconds / n,
        "load_seconds": load_seconds, "listing_seconds": listing_seconds, "eval_seconds": eval_seconds,
        "model_seconds": model_seconds, "metrics_seconds": metrics_seconds,
        "metrics": mean, "categories": per_category, "peak_rss_mb": peak_mb,
        # DataLoader worker processes (--workers > 0) are not in peak_rss_mb: the largest one.
        "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
