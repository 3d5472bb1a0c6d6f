//! The data room against PIL: decoding, resizing, normalisation and masks, on real images from
//! `shared/data` (read in place) and on small generated files in `tests/fixtures/preprocess`.
//! Expected values come from `reference/gen_preprocess_fixtures.py` (Pillow 13.0.0). Also: bad
//! input (empty, truncated, not an image, decompression bombs) must give typed errors, never
//! panics.

use std::path::{Path, PathBuf};

use headclip_data::images::{
    decode_mask, decode_rgb, image_dimensions, is_image, normalize_clip, preprocess, read_mask,
    read_rgb, resize_bicubic, sniff_format, DataError, DecodeLimits, ImageFormat, RgbImage,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

/// `shared/data` beside the repository (CI checks it out there too).
fn shared_data() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(
        p.is_dir(),
        "shared data not found at {}: these tests read the real images in place",
        p.display()
    );
    p
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn source_path(case: &Value) -> PathBuf {
    let src = case["source"].as_str().unwrap();
    match case["root"].as_str().unwrap() {
        "shared" => shared_data().join(src),
        _ => fixtures().join(src),
    }
}

/// Expected pixels, read with the `image` crate directly (not through the code under test).
fn expected_png(case: &Value) -> (u32, u32, Vec<u8>) {
    let path = fixtures().join(case["expected"].as_str().unwrap());
    let img = image::ImageReader::open(&path).unwrap().decode().unwrap();
    let (w, h) = (img.width(), img.height());
    let raw = match img {
        image::DynamicImage::ImageRgb8(b) => b.into_raw(),
        image::DynamicImage::ImageLuma8(b) => b.into_raw(),
        other => panic!(
            "unexpected layout in {}: {:?}",
            path.display(),
            other.color()
        ),
    };
    (w, h, raw)
}

fn cases(kind: &str) -> Vec<Value> {
    manifest()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == kind)
        .cloned()
        .collect()
}

#[test]
fn images_match_pil_within_one_level() {
    let limits = DecodeLimits::default();
    let mut report = Vec::new();
    let mut worst = 0u8;
    for case in cases("image") {
        let name = case["name"].as_str().unwrap();
        let side = case["side"].as_u64().unwrap() as u32;
        let img = read_rgb(&source_path(&case), &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
        let size = &case["original_size"];
        assert_eq!(
            [u64::from(img.width), u64::from(img.height)],
            [size[0].as_u64().unwrap(), size[1].as_u64().unwrap()],
            "{name}: decoded size"
        );
        let got = resize_bicubic(&img, side);
        let (w, h, want) = expected_png(&case);
        assert_eq!((got.width, got.height), (w, h), "{name}: resized size");
        let diffs: Vec<u8> = got
            .pixels
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        let differing = diffs.iter().filter(|&&d| d > 0).count();
        worst = worst.max(max);
        report.push(format!(
            "{name:<44} S={side:<4} samples differing from PIL: {differing:>6} of {:>7}, max {max}",
            diffs.len()
        ));
    }
    println!("{}", report.join("\n"));
    assert!(
        worst <= 1,
        "more than one level off PIL:\n{}",
        report.join("\n")
    );
}

#[test]
fn normalisation_matches_numpy() {
    let limits = DecodeLimits::default();
    let mut checked = 0;
    for case in cases("image") {
        let Some(norm) = case.get("normalised") else {
            continue;
        };
        let side = case["side"].as_u64().unwrap() as u32;
        let img = read_rgb(&source_path(&case), &limits).unwrap();
        let t = preprocess(&img, side);
        let n = (side * side) as usize;
        assert_eq!(t.len(), 3 * n);
        for (c, want) in norm["channel_means"].as_array().unwrap().iter().enumerate() {
            let mean = t[c * n..(c + 1) * n]
                .iter()
                .map(|&v| f64::from(v))
                .sum::<f64>()
                / n as f64;
            let want = want.as_f64().unwrap();
            assert!(
                (mean - want).abs() < 1e-5,
                "channel {c}: {mean} vs numpy {want}"
            );
        }
        for s in norm["samples"].as_array().unwrap() {
            let [c, y, x] = [0, 1, 2].map(|i| s[i].as_u64().unwrap() as usize);
            let got = f64::from(t[c * n + y * side as usize + x]);
            let want = s[3].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-5,
                "({c},{y},{x}): {got} vs numpy {want}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn decoding_is_bit_exact_with_pil() {
    let limits = DecodeLimits::default();
    let m = manifest();
    let hashes = m["decode_sha256"].as_object().unwrap();
    let mut wrong = Vec::new();
    for (rel, want) in hashes {
        let img = read_rgb(&shared_data().join(rel), &limits).unwrap_or_else(|e| panic!("{e}"));
        let got = format!("{:x}", Sha256::digest(&img.pixels));
        if got != want.as_str().unwrap() {
            wrong.push(rel.clone());
        }
    }
    println!(
        "{} of {} files decode differently from PIL",
        wrong.len(),
        hashes.len()
    );
    assert!(
        wrong.is_empty(),
        "decoded pixels differ from PIL: {wrong:?}"
    );
}

#[test]
fn masks_match_the_spec_rule() {
    let limits = DecodeLimits::default();
    for case in cases("mask") {
        let name = case["name"].as_str().unwrap();
        let side = case["side"].as_u64().unwrap() as u32;
        let m = read_mask(&source_path(&case), side, &limits).unwrap_or_else(|e| panic!("{e}"));
        let (w, h, want) = expected_png(&case);
        assert_eq!((m.side, m.side), (w, h));
        let size = &case["original_size"];
        assert_eq!(
            [u64::from(m.original_width), u64::from(m.original_height)],
            [size[0].as_u64().unwrap(), size[1].as_u64().unwrap()],
            "{name}: original size"
        );
        let differing = m.values.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!(
            "{name:<28} S={side:<4} anomalous {:>6}, differing from reference: {differing}",
            m.values.iter().filter(|&&v| v == 1).count()
        );
        assert_eq!(differing, 0, "{name}");
        assert!(m.values.iter().all(|&v| v <= 1));
        assert_eq!(
            m.values.iter().filter(|&&v| v == 1).count() as u64,
            case["anomalous_pixels"].as_u64().unwrap()
        );
    }
}

/// The error decoding `bytes` gives; an image instead fails the test with its size only.
fn decode_err(bytes: &[u8]) -> DataError {
    match decode_rgb(bytes, &DecodeLimits::default()) {
        Ok(img) => panic!("decoded a {}×{} image", img.width, img.height),
        Err(e) => e,
    }
}

fn tmp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("headclip-preprocess");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn png_chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
    // CRC-32 (IEEE), bitwise: the decoder must refuse before it would ever check one anyway.
    let mut crc = !0u32;
    for &b in kind.iter().chain(data) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&(!crc).to_be_bytes());
    out
}

fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    // A few bytes of a zlib stream that would inflate to gigabytes of zeros.
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

#[test]
fn empty_file_is_refused_by_name() {
    let p = tmp_file("empty.png", b"");
    let e = read_rgb(&p, &DecodeLimits::default()).unwrap_err();
    assert!(matches!(&e, DataError::File { error, .. } if matches!(**error, DataError::Empty)));
    let msg = e.to_string();
    assert!(
        msg.contains("empty.png") && msg.contains("empty file"),
        "{msg}"
    );
    assert!(matches!(
        decode_rgb(b"", &DecodeLimits::default()),
        Err(DataError::Empty)
    ));
}

#[test]
fn text_named_png_is_not_an_image() {
    let p = tmp_file("notes.png", b"these are notes, not pixels\n");
    let e = read_rgb(&p, &DecodeLimits::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("notes.png") && msg.contains("not an image: the file looks like text"),
        "{msg}"
    );
    // What it looks like, not its bytes in hex ("these" starts 7468657365).
    assert!(!msg.contains("7468"), "{msg}");
    assert!(!is_image(b"these are notes"));
    let e = read_mask(&p, 64, &DecodeLimits::default()).unwrap_err();
    assert!(e.to_string().contains("not an image"));
}

#[test]
fn missing_file_names_the_path() {
    let e = read_rgb(Path::new("/nonexistent/x.png"), &DecodeLimits::default()).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/x.png"), "{e}");
}

#[test]
fn truncated_files_are_errors() {
    let limits = DecodeLimits::default();
    let png = std::fs::read(shared_data().join("mvtec_bottle/bottle/test/good/000.png")).unwrap();
    // Cuts that lose pixel data. (Losing only what follows it, here text chunks and IEND, loses
    // no pixels and is accepted, where PIL refuses it.)
    for keep in [30, 100, png.len() / 3, png.len() - 5000] {
        let e = decode_err(&png[..keep]);
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    format: ImageFormat::Png,
                    ..
                }
            ),
            "PNG cut at {keep}: {e}"
        );
    }
    let jpg =
        std::fs::read(shared_data().join("kvasir/images/cju0qx73cjw570799j4n5cjze.jpg")).unwrap();
    for keep in [4, 300, jpg.len() / 2, jpg.len() - 10] {
        let e = decode_err(&jpg[..keep]);
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    format: ImageFormat::Jpeg,
                    ..
                }
            ),
            "JPEG cut at {keep}: {e}"
        );
        assert!(e.to_string().contains("truncated"), "{e}");
    }
    // Cutting only the end-of-image marker loses no pixels, but libjpeg reads ahead past the
    // last bits and PIL refuses the file as truncated ("2 bytes not processed"); so must we.
    let e = decode_rgb(&jpg[..jpg.len() - 2], &limits).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn decompression_bombs_are_refused_before_decoding() {
    let limits = DecodeLimits::default();
    let bomb = bomb_png(100_000, 100_000);
    assert_eq!(
        image_dimensions(&bomb).unwrap(),
        (ImageFormat::Png, 100_000, 100_000)
    );
    let e = decode_err(&bomb);
    assert!(
        matches!(
            e,
            DataError::TooLarge {
                width: 100_000,
                height: 100_000,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("refused before decoding"), "{e}");
    assert!(matches!(
        decode_mask(&bomb, 64, &limits),
        Err(DataError::TooLarge { .. })
    ));

    // A JPEG frame header claiming 65000×65000, with no data behind it.
    let mut jpg = b"\xFF\xD8\xFF\xC0\x00\x11\x08".to_vec();
    jpg.extend_from_slice(&65000u16.to_be_bytes());
    jpg.extend_from_slice(&65000u16.to_be_bytes());
    jpg.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    let e = decode_err(&jpg);
    assert!(matches!(e, DataError::TooLarge { .. }), "{e}");

    // The limit is configurable: the 900×900 bottle passes by default, not under 0.5 MP.
    let png = std::fs::read(shared_data().join("mvtec_bottle/bottle/test/good/000.png")).unwrap();
    assert!(decode_rgb(&png, &limits).is_ok());
    let small = DecodeLimits {
        max_pixels: 500_000,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode_rgb(&png, &small),
        Err(DataError::TooLarge {
            width: 900,
            height: 900,
            max_pixels: 500_000
        })
    ));
}

#[test]
fn format_comes_from_the_bytes_not_the_name() {
    let p = shared_data().join("brainmri/no/No15.jpg");
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(sniff_format(&bytes), Some(ImageFormat::Png));
    assert!(is_image(&bytes));
    let img = read_rgb(&p, &DecodeLimits::default()).unwrap();
    assert_eq!((img.width, img.height), (393, 400));
}

/// Flipped bytes and cuts anywhere in small files of every format: errors or images, no panics.
#[test]
fn damaged_files_never_panic() {
    let limits = DecodeLimits::default();
    let gen = fixtures().join("gen");
    let mut files: Vec<_> = std::fs::read_dir(&gen)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for f in files {
        let good = std::fs::read(&f).unwrap();
        for _ in 0..60 {
            let mut bad = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bad.len() as u64) as usize;
                bad[at] ^= 1 << (next() % 8);
            }
            if next() % 3 == 0 {
                bad.truncate((next() % bad.len() as u64) as usize);
            }
            let _ = decode_rgb(&bad, &limits);
            let _ = decode_mask(&bad, 16, &limits);
        }
    }
}

#[test]
fn rgb_image_checks_its_size() {
    assert!(RgbImage::new(3, 2, vec![0; 18]).is_ok());
    let e = RgbImage::new(3, 2, vec![0; 17]).unwrap_err();
    assert!(matches!(e, DataError::InvalidArgument(_)));
    let img = RgbImage::new(1, 1, vec![255, 0, 0]).unwrap();
    assert_eq!(normalize_clip(&img).len(), 3);
}
