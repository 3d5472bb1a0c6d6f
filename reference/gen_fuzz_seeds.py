"""Writes the fuzz harness's stored seed images: the kinds the `image` crate cannot encode
(progressive, restart-marked, 4:4:4 and CMYK JPEGs; lossy WebP with and without alpha).

Small on purpose (16×12): a mutation of a small file lands in its headers more often.
Run with Pillow 13.0.0:  python reference/gen_fuzz_seeds.py
"""
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "crates/headclip-fuzz/seeds"


def gradient(w=16, h=12):
    img = Image.new("RGB", (w, h))
    img.putdata([(x * 255 // w, y * 255 // h, (x * y) % 256) for y in range(h) for x in range(w)])
    return img


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rgb = gradient()
    rgb.save(OUT / "progressive.jpg", quality=80, progressive=True, optimize=True)
    rgb.save(OUT / "restart.jpg", quality=80, subsampling="4:2:2", restart_marker_blocks=1)
    rgb.save(OUT / "s444.jpg", quality=90, subsampling="4:4:4")
    rgb.convert("CMYK").save(OUT / "cmyk.jpg", quality=80)
    rgb.save(OUT / "lossy.webp", quality=60)
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    rgba.save(OUT / "lossy_alpha.webp", quality=60)
    for f in sorted(OUT.iterdir()):
        print(f.name, f.stat().st_size)


if __name__ == "__main__":
    main()
