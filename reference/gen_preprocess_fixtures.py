#!/usr/bin/env python3
"""Expected pre-processing outputs from PIL, for crates/headclip-data/tests/preprocess.rs.

Run with the reference environment from the repository root:

    .venv-reference/bin/python reference/gen_preprocess_fixtures.py

It reads real images in place from ../shared/data (override with HEADCLIP_SHARED_DATA), writes
small generated inputs to crates/headclip-data/tests/fixtures/preprocess/gen/ (formats the shared data
lacks: 16-bit PNG, CMYK JPEG, TIFF, grey+alpha, progressive JPEG with restart markers, ...), and
writes for every case the pixels PIL produces to expected/ as lossless PNG, plus manifest.json.

Image cases: Image.open(p).convert("RGB").resize((S, S), Image.BICUBIC), skipped when already
S x S. The one deliberate departure from PIL: 16-bit grey keeps its high byte (PIL saturates it
at 255; the spec asks for scaling, as PIL does for 16-bit RGB).

Mask cases, the spec's rule: grey (16-bit grey kept at 16 bits), anomalous where >= half the
type's range, or where non-zero when the maximum is below half range (label maps); 0/255 image
resized with BILINEAR; kept where > 127. Expected files hold 0/1.

"decode_sha256" holds the sha256 of PIL's convert("RGB") pixels for a spread of shared files:
up to three (the smallest) per kind in BrainMRI, HeadCT and Kvasir, where a kind is format, mode,
JPEG sampling, progressive and Adobe marker. Decoding must be bit-exact, not just close.

The manifest also carries, for two cases, normalised values computed by numpy in float64 from
PIL's pixels ((v / 255 - mean) / std, CHW), to check the normalisation and layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/headclip-data/tests/fixtures/preprocess"
SHARED = Path(os.environ.get("HEADCLIP_SHARED_DATA", ROOT.parent / "shared/data"))
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])

# (name, source relative to the shared data folder, sides)
REAL_IMAGES = [
    ("mvtec_bottle_broken_large_000", "mvtec_bottle/bottle/test/broken_large/000.png", [518, 64]),
    ("mvtec_bottle_good_000", "mvtec_bottle/bottle/test/good/000.png", [224]),
    ("kvasir_619x529", "kvasir/images/cju0qx73cjw570799j4n5cjze.jpg", [224]),
    ("kvasir_332x487_tall", "kvasir/images/cju2htabevq9108015qjei0x7.jpg", [224, 64]),
    ("kvasir_1348x1070", "kvasir/images/cju0qoxqj9q6s0835b43399p4.jpg", [64]),
    ("headct_rgba_201x251", "headct/head_ct/188.png", [224, 64]),
    ("brainmri_grey_jpeg", "brainmri/no/N15.jpg", [224]),
    ("brainmri_grey_png", "brainmri/yes/Y92.png", [64]),
    ("brainmri_palette_named_jpg", "brainmri/no/no 98.jpg", [224]),
    ("brainmri_rgba_png_named_jpg", "brainmri/no/No15.jpg", [224]),
    ("brainmri_progressive_jpeg", "brainmri/yes/Y186.jpg", [224]),
    ("brainmri_422_jpeg", "brainmri/yes/Y91.jpg", [64]),
    ("brainmri_adobe_444_jpeg", "brainmri/no/no 8.jpg", [64]),
    ("brainmri_wide_png", "brainmri/no/no 9.png", [64]),
    ("colondb_574x500", "colondb/colon/test/polyp/001.png", [64]),
]

REAL_MASKS = [
    ("mvtec_mask", "mvtec_bottle/bottle/ground_truth/broken_large/000_mask.png", [224]),
    ("kvasir_jpeg_mask", "kvasir/masks/cju0qx73cjw570799j4n5cjze.jpg", [224]),
    ("colondb_mask", "colondb/colon/ground_truth/polyp/001_mask.png", [518]),
]


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth, textured RGB scene (float 0..1): gradients, a disc, mild noise."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 0.5 + 0.4 * np.sin(x / max(w, 1) * 5.0 + seed)
    g = 0.5 + 0.4 * np.cos(y / max(h, 1) * 4.0 - seed)
    b = (x + y) / (w + h)
    disc = ((x - w * 0.6) ** 2 + (y - h * 0.4) ** 2) < (min(w, h) * 0.25) ** 2
    img = np.stack([r, g, b], -1)
    img[disc] = [0.9, 0.2, 0.1]
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1)


def u8(a: np.ndarray) -> np.ndarray:
    return np.round(a * 255).astype(np.uint8)


def png_raw(w: int, h: int, colour_type: int, depth: int, rows: list[bytes]) -> bytes:
    """A PNG written by hand, for sample layouts PIL cannot save (16-bit RGB, RGBA, LA)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + r for r in rows), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def generated_images() -> list[tuple[str, str, list[int], str]]:
    """Writes the generated inputs; returns (name, file name, sides, note)."""
    gen = OUT / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    cases = []

    def save(name, fname, im, sides, note, **kw):
        im.save(gen / fname, **kw)
        cases.append((name, fname, sides, note))

    rgb = lambda h, w, s: Image.fromarray(u8(scene(h, w, s)))  # noqa: E731

    # 16-bit samples, written by hand so every layout is covered.
    g16 = np.round(scene(37, 45, 1)[..., 1] * 65535).astype(">u2")
    (gen / "grey16.png").write_bytes(png_raw(45, 37, 0, 16, [r.tobytes() for r in g16]))
    cases.append(("gen_grey16_png", "grey16.png", [64], "16-bit grey: high byte (PIL saturates)"))
    c16 = np.round(scene(29, 37, 2) * 65535).astype(">u2")
    (gen / "rgb16.png").write_bytes(png_raw(37, 29, 2, 16, [r.tobytes() for r in c16]))
    cases.append(("gen_rgb16_png", "rgb16.png", [64], "16-bit RGB PNG"))
    a16 = np.concatenate([c16, np.full(c16.shape[:2] + (1,), 1000, ">u2")], -1)
    (gen / "rgba16.png").write_bytes(png_raw(37, 29, 6, 16, [r.tobytes() for r in a16]))
    cases.append(("gen_rgba16_png", "rgba16.png", [64], "16-bit RGBA, alpha dropped"))

    la = np.stack([u8(scene(41, 33, 3)[..., 0]), np.full((41, 33), 7, np.uint8)], -1)
    save("gen_grey_alpha_png", "grey_alpha.png", Image.fromarray(la, "LA"), [64], "LA, alpha dropped")
    rgba = np.concatenate([u8(scene(30, 40, 4)), np.full((30, 40, 1), 0, np.uint8)], -1)
    save("gen_rgba_transparent_png", "rgba_clear.png", Image.fromarray(rgba, "RGBA"), [64],
         "fully transparent RGBA: colours kept, no compositing")

    save("gen_cmyk_jpeg", "cmyk.jpg", rgb(40, 48, 5).convert("CMYK"), [64], "CMYK JPEG (Adobe)",
         quality=90)
    save("gen_progressive_restart_jpeg", "progressive.jpg", rgb(47, 61, 6), [64],
         "progressive 4:2:0, optimised tables, restart markers",
         quality=85, progressive=True, optimize=True, restart_marker_blocks=3)
    save("gen_422_restart_jpeg", "s422.jpg", rgb(45, 53, 7), [64], "baseline 4:2:2, restarts",
         quality=80, subsampling=1, restart_marker_rows=1)
    save("gen_444_jpeg", "s444.jpg", rgb(33, 35, 8), [64], "baseline 4:4:4",
         quality=95, subsampling=0)
    save("gen_tiny_420_jpeg", "tiny.jpg", rgb(3, 5, 9), [64], "5x3 4:2:0: chroma 3x2, edge cases",
         quality=90)

    save("gen_tiff_lzw", "rgb_lzw.tif", rgb(30, 50, 10), [64], "TIFF, LZW", compression="tiff_lzw")
    save("gen_tiff_raw", "rgb_raw.tif", rgb(31, 23, 11), [64], "TIFF, uncompressed")
    save("gen_bmp", "rgb.bmp", rgb(21, 27, 12), [64], "BMP 24-bit")
    save("gen_gif", "palette.gif", rgb(26, 30, 13).convert("P", palette=Image.ADAPTIVE), [64],
         "GIF palette")
    save("gen_webp_lossless", "lossless.webp", rgb(25, 31, 14), [64], "WebP lossless",
         lossless=True)
    save("gen_bilevel_png", "bilevel.png", rgb(30, 30, 15).convert("1"), [64], "1-bit PNG")
    p4 = rgb(19, 23, 16).convert("P", palette=Image.ADAPTIVE, colors=12)
    save("gen_palette4_png", "palette4.png", p4, [64], "4-bit palette PNG", bits=4)
    save("gen_upscale_png", "small.png", rgb(15, 20, 17), [64], "20x15 RGB: upscaled both ways")
    save("gen_exact_size_png", "exact64.png", rgb(64, 64, 18), [64], "already S x S: no resample")
    return cases


def generated_masks() -> list[tuple[str, str, list[int], str]]:
    gen = OUT / "gen"
    rng = np.random.RandomState(20)
    labels = np.zeros((40, 50), np.uint8)
    labels[5:20, 8:30] = 1
    labels[25:35, 30:45] = 2
    Image.fromarray(labels, "L").save(gen / "visa_labels.png")
    m16 = np.zeros((33, 29), ">u2")
    m16[4:20, 3:15] = 40000
    m16[22:30, 10:25] = 20000  # below half range: not anomalous
    m16[0:3, 20:29] = 65535
    m16 += rng.randint(0, 300, m16.shape).astype(">u2")
    (gen / "mask16.png").write_bytes(png_raw(29, 33, 0, 16, [r.tobytes() for r in m16]))
    return [
        ("gen_visa_label_map", "visa_labels.png", [64], "label map 0/1/2: every non-zero"),
        ("gen_mask16", "mask16.png", [64], "16-bit grey: >= 32768"),
    ]


def rgb_expected(path: Path, side: int, note: str) -> np.ndarray:
    im = Image.open(path)
    if im.mode in ("I;16", "I;16B", "I;16L"):
        im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
    im = im.convert("RGB")
    if im.size != (side, side):
        im = im.resize((side, side), Image.BICUBIC)
    return np.asarray(im)


def mask_expected(path: Path, side: int) -> np.ndarray:
    im = Image.open(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        raw, half = np.asarray(im).astype(np.int64), 32768
    else:
        raw, half = np.asarray(im.convert("L")).astype(np.int64), 128
    anomalous = raw > 0 if raw.max() < half else raw >= half
    m = Image.fromarray((anomalous * 255).astype(np.uint8), "L")
    if m.size != (side, side):
        m = m.resize((side, side), Image.BILINEAR)
    return (np.asarray(m) > 127).astype(np.uint8)


def normalised_samples(px: np.ndarray, n: int, seed: int) -> dict:
    t = ((px.astype(np.float64) / 255.0 - MEAN) / STD).transpose(2, 0, 1)  # CHW
    rng = np.random.RandomState(seed)
    picks = [(int(rng.randint(3)), int(rng.randint(t.shape[1])), int(rng.randint(t.shape[2])))
             for _ in range(n)]
    return {
        "channel_means": [float(t[c].mean()) for c in range(3)],
        "samples": [[c, y, x, float(t[c, y, x])] for c, y, x in picks],
    }


def decode_hashes() -> dict[str, str]:
    from PIL import JpegImagePlugin

    kinds: dict[tuple, list[Path]] = {}
    for folder in ("brainmri", "headct", "kvasir/images", "kvasir/masks"):
        for f in sorted((SHARED / folder).rglob("*")):
            if not f.is_file() or f.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                continue
            im = Image.open(f)
            jpeg = im.format == "JPEG"
            kind = (folder, im.format, im.mode,
                    JpegImagePlugin.get_sampling(im) if jpeg else None,
                    bool(im.info.get("progressive")), "adobe" in im.info)
            kinds.setdefault(kind, []).append(f)
    out = {}
    for files in kinds.values():
        for f in sorted(files, key=lambda f: (f.stat().st_size, f))[:3]:
            px = np.ascontiguousarray(np.asarray(Image.open(f).convert("RGB")))
            out[str(f.relative_to(SHARED))] = hashlib.sha256(px.tobytes()).hexdigest()
    return dict(sorted(out.items()))


def main() -> None:
    if not SHARED.is_dir():
        raise SystemExit(f"shared data not found at {SHARED}")
    exp = OUT / "expected"
    exp.mkdir(parents=True, exist_ok=True)
    for old in exp.glob("*.png"):
        old.unlink()
    cases = []
    images = [(n, "shared", s, sides, "") for n, s, sides in REAL_IMAGES]
    images += [(n, "fixture", f"gen/{f}", sides, note) for n, f, sides, note in generated_images()]
    for name, root, src, sides, note in images:
        path = (SHARED if root == "shared" else OUT) / src
        for side in sides:
            px = rgb_expected(path, side, note)
            fname = f"{name}_{side}.png"
            Image.fromarray(px, "RGB").save(exp / fname, optimize=True)
            case = {"name": f"{name}_{side}", "kind": "image", "root": root, "source": src,
                    "side": side, "expected": f"expected/{fname}",
                    "original_size": list(Image.open(path).size), "note": note}
            if name in ("kvasir_619x529", "mvtec_bottle_good_000"):
                case["normalised"] = normalised_samples(px, 16, side)
            cases.append(case)
    masks = [(n, "shared", s, sides, "") for n, s, sides in REAL_MASKS]
    masks += [(n, "fixture", f"gen/{f}", sides, note) for n, f, sides, note in generated_masks()]
    for name, root, src, sides, note in masks:
        path = (SHARED if root == "shared" else OUT) / src
        for side in sides:
            m = mask_expected(path, side)
            fname = f"{name}_{side}.png"
            Image.fromarray(m, "L").save(exp / fname, optimize=True)
            cases.append({"name": f"{name}_{side}", "kind": "mask", "root": root, "source": src,
                          "side": side, "expected": f"expected/{fname}",
                          "original_size": list(Image.open(path).size), "note": note,
                          "anomalous_pixels": int(m.sum())})
    manifest = {
        "generator": "reference/gen_preprocess_fixtures.py",
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "mean": MEAN.tolist(),
        "std": STD.tolist(),
        "cases": cases,
        "decode_sha256": decode_hashes(),
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"{len(cases)} cases, {total / 1e6:.2f} MB in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
