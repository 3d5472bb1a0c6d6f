"""Writes a tiny data set in VisA's exact layout to crates/headclip-data/tests/fixtures/visa/.

VisA (Zou et al., ECCV 2022) as distributed with its split files:

    <object>/Data/Images/Normal/NNNN.JPG
    <object>/Data/Images/Anomaly/NNN.JPG
    <object>/Data/Masks/Anomaly/NNN.png     label maps: 0 background, 1, 2, ... one value per defect
    <object>/image_anno.csv                 image,label,mask
    split_csv/1cls.csv                      object,split,label,image,mask (paths relative to root;
                                            mask empty for normal images)

Two objects, a few synthetic images each (JPEG as in VisA, plus one PNG), masks with values 0/1/2.
Deterministic: rerunning gives the same bytes. Run with the reference venv:

    .venv-reference/bin/python reference/gen_visa_fixture.py
"""

import csv
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent / "crates/headclip-data/tests/fixtures/visa"

# object -> (size (w, h), train normals, test normals, anomalies as (defect label, regions))
# where each region is (value, x0, y0, x1, y1) painted into the label map.
OBJECTS = {
    "candle": (
        (64, 48),
        2,
        2,
        [
            ("wax missing", [(1, 10, 10, 20, 18)]),
            ("wax missing,extra wax", [(1, 5, 30, 15, 40), (2, 40, 8, 56, 20)]),
        ],
    ),
    "pcb1": (
        (56, 56),
        1,
        1,
        [
            ("bent", [(1, 20, 20, 30, 34)]),
            ("scratch,missing", [(2, 8, 8, 14, 14), (1, 36, 40, 50, 50)]),
        ],
    ),
}


def picture(rng, size, regions):
    w, h = size
    base = np.zeros((h, w, 3), np.float32)
    base[..., 0] = np.linspace(60, 200, w)[None, :]
    base[..., 1] = np.linspace(90, 160, h)[:, None]
    base[..., 2] = 120
    base += rng.normal(0, 6, base.shape)
    for _, x0, y0, x1, y1 in regions:
        base[y0:y1, x0:x1] = [230, 40, 40]
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def label_map(size, regions):
    w, h = size
    m = np.zeros((h, w), np.uint8)
    for value, x0, y0, x1, y1 in regions:
        m[y0:y1, x0:x1] = value
    return Image.fromarray(m, "L")


def save(img, path, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=85)
    else:
        img.save(buf, "PNG", optimize=True)
    path.write_bytes(buf.getvalue())


def main():
    if ROOT.exists():
        shutil.rmtree(ROOT)
    rng = np.random.default_rng(20220922)
    split_rows = []
    for obj, (size, n_train, n_test, anomalies) in OBJECTS.items():
        anno_rows = []
        normals = [("train", i) for i in range(n_train)] + [
            ("test", n_train + i) for i in range(n_test)
        ]
        for split, i in normals:
            # pcb1's last normal image is a PNG (VisA itself is all JPEG; loaders must not care).
            png = obj == "pcb1" and split == "test"
            rel = f"{obj}/Data/Images/Normal/{i:04d}.{'png' if png else 'JPG'}"
            save(picture(rng, size, []), ROOT / rel, "PNG" if png else "JPEG")
            split_rows.append([obj, split, "normal", rel, ""])
            anno_rows.append([rel, "normal", ""])
        for i, (defect, regions) in enumerate(anomalies):
            rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            save(picture(rng, size, regions), ROOT / rel, "JPEG")
            save(label_map(size, regions), ROOT / mrel, "PNG")
            split_rows.append([obj, "test", "anomaly", rel, mrel])
            anno_rows.append([rel, defect, mrel])
        with open(ROOT / obj / "image_anno.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["image", "label", "mask"])
            w.writerows(anno_rows)
    (ROOT / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(ROOT / "split_csv/1cls.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(split_rows)
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    print(f"wrote {ROOT} ({total} bytes)")


if __name__ == "__main__":
    main()
