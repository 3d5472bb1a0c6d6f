#!/usr/bin/env python3
"""A fixed corpus of damaged images with Pillow's verdict on each, for
crates/headclip-data/tests/damaged.rs.

Run with the reference environment from the repository root:

    .venv-reference/bin/python reference/gen_damaged_corpus.py

Seeds are small images generated here (a smooth scene, seeded) in every supported format and
the variants that matter (JPEG 4:2:0, 4:2:2, 4:4:4, grey, CMYK, progressive, restart markers;
PNG RGB, RGBA, palette, grey, interlaced; WebP lossy and lossless; GIF; BMP; TIFF raw and LZW).
Each seed is damaged in fixed, seeded ways: truncations, bytes flipped in the header and in the
data, and format-specific damage (JPEG markers cut into the entropy data, wrong restart numbers,
Huffman tables removed, bogus segment lengths, unknown markers, huge declared sizes; PNG data
corrupted under a recomputed CRC; ...). The damaged files are written to
crates/headclip-data/tests/fixtures/damaged/ with manifest.json, which records for every case
Pillow's decision: "decode" with the size and the sha256 of `convert("RGB")`'s pixels, or
"refuse" with Pillow's message. The decoder must agree on every case, pixel for pixel.

Pillow 13.0.0 (libjpeg-turbo 3.2.0, zlib 1.2.13, libwebp 1.6.0) made the committed manifest;
the script refuses to run with another Pillow so the fixtures cannot drift silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

PILLOW = "13.0.0"
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/headclip-data/tests/fixtures/damaged"
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth RGB scene with a disc and mild noise, as 8-bit samples."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack(
        [
            0.5 + 0.4 * np.sin(x / w * 5.0 + seed),
            0.5 + 0.4 * np.cos(y / h * 4.0 - seed),
            (x + y) / (w + h),
        ],
        -1,
    )
    disc = ((x - w * 0.6) ** 2 + (y - h * 0.4) ** 2) < (min(w, h) * 0.25) ** 2
    img[disc] = [0.9, 0.2, 0.1]
    img += rng.normal(0, 0.03, img.shape)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def seeds() -> dict[str, bytes]:
    rgb = Image.fromarray(scene(48, 64, 1))
    small = Image.fromarray(scene(24, 32, 2))
    return {
        "jpeg420": encode(rgb, "JPEG", quality=85),
        "jpeg422": encode(rgb, "JPEG", quality=85, subsampling=1),
        "jpeg444": encode(rgb, "JPEG", quality=85, subsampling=0),
        "jpeggrey": encode(rgb.convert("L"), "JPEG", quality=85),
        "jpegcmyk": encode(rgb.convert("CMYK"), "JPEG", quality=85),
        "jpegprog": encode(rgb, "JPEG", quality=85, progressive=True),
        "jpegrst": encode(rgb, "JPEG", quality=85, restart_marker_blocks=2),
        "jpegprogrst": encode(rgb, "JPEG", quality=85, progressive=True, restart_marker_blocks=3),
        "pngrgb": encode(small, "PNG"),
        "pngrgba": encode(small.convert("RGBA"), "PNG"),
        "pngpal": encode(small.convert("P"), "PNG"),
        "pnggrey": encode(small.convert("L"), "PNG"),
        "pngadam7": png_interlaced(small),
        "webplossy": encode(rgb, "WEBP", quality=80),
        "webplossless": encode(small, "WEBP", lossless=True),
        "gif": encode(small.convert("P"), "GIF"),
        "bmp": encode(small, "BMP"),
        "tiffraw": encode(small, "TIFF"),
        "tifflzw": encode(small, "TIFF", compression="tiff_lzw"),
    }


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_interlaced(im: Image.Image) -> bytes:
    """Adam7 PNG written by hand (PIL cannot save interlaced PNG)."""
    a = np.asarray(im)
    h, w = a.shape[:2]
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = a[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------
# Generic damage


def truncations(data: bytes) -> list[tuple[str, bytes]]:
    cuts = sorted({max(1, int(len(data) * f)) for f in (0.05, 0.2, 0.4, 0.6, 0.8, 0.95)} | {len(data) - 2, len(data) - 1})
    return [(f"truncated at {c} of {len(data)}", data[:c]) for c in cuts]


def flips(data: bytes, rng: random.Random, header_end: int) -> list[tuple[str, bytes]]:
    out = []
    for where, lo, hi in (("header", 0, header_end), ("data", header_end, len(data))):
        for _ in range(4):
            at = rng.randrange(lo, hi)
            b = bytearray(data)
            b[at] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
            out.append((f"{where} byte {at} changed", bytes(b)))
    return out


# ---------------------------------------------------------------------------------------------
# JPEG damage


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start of the marker, end of its segment) up to and including the first SOS."""
    out, pos = [], 2
    while pos + 4 <= len(data):
        m = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        out.append((m, pos, pos + 2 + length))
        pos += 2 + length
        if m == 0xDA:
            break
    return out


def first(data: bytes, marker: int) -> tuple[int, int]:
    for m, start, end in jpeg_segments(data):
        if m == marker:
            return start, end
    raise KeyError(hex(marker))


def scan_data_start(data: bytes) -> int:
    return first(data, 0xDA)[1]


def with_length(data: bytes, marker: int, length: int) -> bytes:
    start, _ = first(data, marker)
    return data[: start + 2] + struct.pack(">H", length) + data[start + 4 :]


def sof_marker(data: bytes) -> int:
    return next(m for m, _, _ in jpeg_segments(data) if m in (0xC0, 0xC1, 0xC2))


def with_size(data: bytes, w: int, h: int) -> bytes:
    start, _ = first(data, sof_marker(data))
    return data[: start + 5] + struct.pack(">HH", h, w) + data[start + 9 :]


def entropy_offset(data: bytes, frac: float) -> int:
    """A position in the first scan's entropy data, away from 0xFF bytes and markers."""
    s = scan_data_start(data)
    end = data.index(b"\xff", s) if data.find(b"\xff\xd9", s) < 0 else data.find(b"\xff", s)
    end = max(end, s + 8)
    at = s + int((end - s) * frac)
    while data[at] == 0xFF or data[at - 1] == 0xFF:
        at += 1
    return at


def rst_positions(data: bytes) -> list[int]:
    s = scan_data_start(data)
    return [i for i in range(s, len(data) - 1) if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7]


def strip_segments(data: bytes, marker: int) -> bytes:
    """Removes every segment with this marker code from the whole file."""
    out, pos = bytearray(data[:2]), 2
    while pos < len(data):
        if data[pos] != 0xFF or pos + 1 >= len(data):
            out += data[pos:]
            break
        m = data[pos + 1]
        if m == 0xD9 or 0xD0 <= m <= 0xD7:
            out += data[pos : pos + 2]
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        end = pos + 2 + length
        if m == 0xDA:
            nxt = end
            while nxt < len(data) - 1 and not (data[nxt] == 0xFF and data[nxt + 1] not in (0, *range(0xD0, 0xD8))):
                nxt += 1
            end = nxt
        if m != marker:
            out += data[pos:end]
        pos = end
    return bytes(out)


def jpeg_damage(name: str, data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    s = scan_data_start(data)
    out = truncations(data) + flips(data, rng, s)
    mid = entropy_offset(data, 0.5)
    early = entropy_offset(data, 0.15)
    for frac, at in (("early", early), ("half-way", mid)):
        out.append((f"EOI cut into the entropy data {frac}", data[:at] + b"\xff\xd9" + data[at + 2 :]))
        out.append((f"APP5 marker cut into the entropy data {frac}", data[:at] + b"\xff\xe5" + data[at + 2 :]))
        out.append((f"RST3 cut into the entropy data {frac}", data[:at] + b"\xff\xd3" + data[at + 2 :]))
    out.append(("entropy data cut by EOI, rest of file dropped", data[:mid] + b"\xff\xd9"))
    out.append(("Huffman tables removed", strip_segments(data, 0xC4)))
    out.append(("quantisation tables removed", strip_segments(data, 0xDB)))
    for marker, label in ((0xDA, "scan header"), (0xDB, "DQT"), (0xC4, "DHT"), (sof_marker(data), "frame header"), (0xE0, "APP0")):
        try:
            start, end = first(data, marker)
        except KeyError:
            continue
        length = end - start - 2
        for bogus in (0, 1, length - 1, length + 1, 0xFFFF):
            out.append((f"{label} length {length} -> {bogus}", with_length(data, marker, bogus)))
    sof_start, _ = first(data, sof_marker(data))
    for code in (0x02, 0x4F, 0xC8, 0xF0, 0xEF, 0xFE):
        seg = b"\xff" + bytes([code]) + b"\x00\x04ab"
        out.append((f"segment with marker {code:02X} before the frame header", data[:sof_start] + seg + data[sof_start:]))
    out.append(("stray FF 00 before the frame header", data[:sof_start] + b"\xff\x00" + data[sof_start:]))
    out.append(("junk bytes before the frame header", data[:sof_start] + b"junk" + data[sof_start:]))
    out.append(("scan header moved before the tables", data[:2] + data[s - 14 : s] + data[2:]))
    for w, h in ((65535, 48), (64, 65501), (65500, 65500), (8192, 8192), (0, 48)):
        out.append((f"frame header declares {w}x{h}", with_size(data, w, h)))
    out.append(("8192x8192 header with the data cut after the first scan header", with_size(data, 8192, 8192)[: s + 40]))
    out.append(("second frame header", data[:s] + data[sof_start : first(data, sof_marker(data))[1]] + data[s:]))
    out.append(("EOI removed", data[:-2]))
    out.append(("garbage after EOI", data + b"garbage after the end"))
    rsts = rst_positions(data)
    if rsts:
        a, b = rsts[len(rsts) // 3], rsts[2 * len(rsts) // 3]
        for at in (a, b):
            n = data[at + 1] - 0xD0
            for delta, label in ((1, "next"), (2, "second next"), (4, "far"), (7, "previous")):
                bad = 0xD0 + (n + delta) % 8
                out.append((f"restart marker {n} at {at} numbered {bad - 0xD0} ({label})", data[: at + 1] + bytes([bad]) + data[at + 2 :]))
        out.append((f"restart marker at {a} removed", data[:a] + data[a + 2 :]))
        out.append((f"restart marker at {a} doubled", data[:a] + data[a : a + 2] + data[a:]))
        out.append(("restart interval changed to 1 MCU", dri(data, 1)))
    if name == "jpegprog":
        scans = [start for m, start, _ in all_segments(data) if m == 0xDA]
        for k in (1, len(scans) // 2, len(scans) - 1):
            end = scans[k + 1] if k + 1 < len(scans) else len(data) - 2
            out.append((f"progressive scan {k} of {len(scans)} removed", data[: scans[k]] + data[end:]))
        out.append(("only the first progressive scan", data[: scans[1]] + b"\xff\xd9"))
        out.append(("many empty scans", data[: scans[1]] + empty_scans(data, 40) + data[scans[1]:]))
    return out


def all_segments(data: bytes) -> list[tuple[int, int, int]]:
    """Every marker at a segment boundary in the file (scans included)."""
    out, pos = [], 2
    while pos < len(data) - 1:
        if data[pos] != 0xFF:
            pos += 1
            continue
        m = data[pos + 1]
        if m in (0x00, 0xFF) or 0xD0 <= m <= 0xD7:
            pos += 2 if m != 0xFF else 1
            continue
        if m == 0xD9:
            out.append((m, pos, pos + 2))
            break
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        out.append((m, pos, pos + 2 + length))
        pos += 2 + length
    return out


def empty_scans(data: bytes, n: int) -> bytes:
    """n progressive AC refinement-free scans of the first component that code one EOB run."""
    start, end = first(data, 0xDA)
    comp = data[start + 5]
    # A first AC scan of band 1..1 for component `comp`, table 0, with an EOB run covering all
    # blocks needs a table; reuse the file's tables by declaring an empty band (Ss=Se) whose
    # data is a single EOB code: libjpeg reads it quickly, as the hostile case does.
    hdr = b"\xff\xda\x00\x08\x01" + bytes([comp, 0x00, 63, 63, 0x00])
    return (hdr + b"\x00") * n


def dri(data: bytes, interval: int) -> bytes:
    start, end = first(data, 0xDD)
    return data[: start + 4] + struct.pack(">H", interval) + data[end:]


# ---------------------------------------------------------------------------------------------
# PNG damage


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    out, pos = [], 8
    while pos + 8 <= len(data):
        n = struct.unpack(">I", data[pos : pos + 4])[0]
        out.append((data[pos + 4 : pos + 8], pos, pos + 12 + n))
        pos += 12 + n
    return out


def png_rechunk(data: bytes, kind: bytes, payload: bytes) -> bytes:
    """Replaces the first `kind` chunk's payload, with a correct CRC."""
    for k, start, end in png_chunks(data):
        if k == kind:
            return data[:start] + png_chunk(kind, payload) + data[end:]
    raise KeyError(kind)


def png_payload(data: bytes, kind: bytes) -> bytes:
    for k, start, end in png_chunks(data):
        if k == kind:
            return data[start + 8 : end - 4]
    raise KeyError(kind)


def png_damage(name: str, data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    out = truncations(data) + flips(data, rng, 33)
    idat = png_payload(data, b"IDAT")
    for frac in (0.1, 0.5, 0.9):
        at = int(len(idat) * frac)
        b = bytearray(idat)
        b[at] ^= 0x5A
        out.append((f"IDAT byte {at} changed, CRC recomputed", png_rechunk(data, b"IDAT", bytes(b))))
    b = bytearray(idat)
    b[-2] ^= 0xFF
    out.append(("zlib checksum changed, CRC recomputed", png_rechunk(data, b"IDAT", bytes(b))))
    out.append(("IDAT cut short, CRC recomputed", png_rechunk(data, b"IDAT", idat[: len(idat) // 2])))
    raw = zlib.decompress(idat)
    out.append(("zlib stream without its checksum", png_rechunk(data, b"IDAT", idat[:-4])))
    out.append(("image data one row short", png_rechunk(data, b"IDAT", zlib.compress(raw[: len(raw) - len(raw) // 24]))))
    out.append(("image data with extra bytes", png_rechunk(data, b"IDAT", zlib.compress(raw + b"\0" * 50))))
    out.append(("bad filter type", png_rechunk(data, b"IDAT", zlib.compress(b"\x07" + raw[1:]))))
    ihdr = png_payload(data, b"IHDR")
    for w, h in ((100000, 100000), (1 << 31, 1), (0, 24)):
        out.append((f"IHDR declares {w}x{h}, CRC recomputed", png_rechunk(data, b"IHDR", struct.pack(">II", w, h) + ihdr[8:])))
    out.append(("IHDR bit depth 3, CRC recomputed", png_rechunk(data, b"IHDR", ihdr[:8] + b"\x03" + ihdr[9:])))
    out.append(("IEND removed", data[:-12]))
    k, start, end = next(c for c in png_chunks(data) if c[0] == b"IDAT")
    out.append(("IDAT length too large", data[:start] + struct.pack(">I", end - start - 12 + 1000) + data[start + 4 :]))
    out.append(("IDAT CRC wrong", data[: end - 1] + bytes([data[end - 1] ^ 1]) + data[end:]))
    if any(c[0] == b"PLTE" for c in png_chunks(data)):
        plte = png_payload(data, b"PLTE")
        for cut in (1, 2):
            out.append((f"PLTE {cut} bytes short of whole entries, CRC recomputed",
                        png_rechunk(data, b"PLTE", plte[:-cut])))
        out.append(("PLTE of 2 bytes, CRC recomputed", png_rechunk(data, b"PLTE", plte[:2])))
    return out


# ---------------------------------------------------------------------------------------------
# Other formats


def webp_damage(name: str, data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    out = truncations(data) + flips(data, rng, 30)
    out.append(("RIFF size too large", data[:4] + struct.pack("<I", len(data) + 1000) + data[8:]))
    out.append(("RIFF size too small", data[:4] + struct.pack("<I", len(data) // 2) + data[8:]))
    out.append(("chunk size too large", data[:16] + struct.pack("<I", len(data)) + data[20:]))
    return out


def generic_damage(name: str, data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    return truncations(data) + flips(data, rng, min(64, len(data) // 4))


DAMAGE = {"jpeg": jpeg_damage, "png": png_damage, "webp": webp_damage}


# ---------------------------------------------------------------------------------------------


def pillow_verdict(data: bytes) -> dict:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                im.load()
                rgb = im.convert("RGB")
    except Exception as e:  # Pillow's refusal, whatever its kind
        # Object addresses would change the manifest on every run.
        message = re.sub(r" at 0x[0-9a-f]+", "", f"{type(e).__name__}: {e}")
        return {"pillow": "refuse", "error": message[:200]}
    return {
        "pillow": "decode",
        "width": rgb.width,
        "height": rgb.height,
        "rgb_sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
    }


def main() -> None:
    if PIL.__version__ != PILLOW:
        raise SystemExit(f"Pillow {PILLOW} made these fixtures; found {PIL.__version__}")
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    rng = random.Random(11)
    cases, seen = [], set()
    for name, data in seeds().items():
        damage = next((f for k, f in DAMAGE.items() if name.startswith(k)), generic_damage)
        variants = [("undamaged", data)] + damage(name, data, rng)
        for i, (what, bytes_) in enumerate(variants):
            digest = hashlib.sha256(bytes_).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            fname = f"{name}_{i:03}.bin"
            (OUT / fname).write_bytes(bytes_)
            cases.append({"file": fname, "seed": name, "damage": what, **pillow_verdict(bytes_)})
    manifest = {
        "pillow": PIL.__version__,
        "note": "written by reference/gen_damaged_corpus.py; do not edit",
        "cases": cases,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum((OUT / c["file"]).stat().st_size for c in cases)
    decoded = sum(c["pillow"] == "decode" for c in cases)
    print(f"{len(cases)} cases ({decoded} decoded by Pillow), {total} bytes")


if __name__ == "__main__":
    main()
