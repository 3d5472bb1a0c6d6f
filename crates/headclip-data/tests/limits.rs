//! Limits on decoding work, checked from the file's structure before any decoding: a small
//! JPEG declaring a large progressive image with many empty scans is refused, honest
//! progressive files pass, and each limit refuses what exceeds it.

use std::path::Path;

use headclip_data::images::{decode_cost, decode_rgb, DataError, DecodeLimits, ImageFormat};

/// A progressive grey JPEG declaring `side`×`side` pixels followed by `scans` AC scans that
/// each hold one byte of entropy data: a few kilobytes that ask the decoder to visit every
/// block once per scan.
fn hostile_jpeg(side: u16, scans: usize) -> Vec<u8> {
    let mut d = vec![0xFF, 0xD8];
    // Quantisation table 0, all ones.
    d.extend([0xFF, 0xDB, 0x00, 0x43, 0x00]);
    d.extend([1u8; 64]);
    // Progressive frame: 8-bit, side×side, one component (id 1, 1×1 sampling, table 0).
    d.extend([0xFF, 0xC2, 0x00, 0x0B, 0x08]);
    d.extend(side.to_be_bytes());
    d.extend(side.to_be_bytes());
    d.extend([0x01, 0x01, 0x11, 0x00]);
    // AC table 0 with one 1-bit code, symbol 0x00 (end of band).
    d.extend([0xFF, 0xC4, 0x00, 0x14, 0x10, 1]);
    d.extend([0u8; 15]);
    d.push(0x00);
    for _ in 0..scans {
        // One component, table 0/0, band 1..1, no successive approximation; one data byte.
        d.extend([
            0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x01, 0x00, 0x00,
        ]);
    }
    d.extend([0xFF, 0xD9]);
    d
}

fn honest_progressive() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/damaged/jpegprog_000.bin");
    std::fs::read(p).unwrap()
}

fn work_error(e: DataError) -> (&'static str, u64, u64) {
    match e {
        DataError::TooMuchWork {
            limit, needed, max, ..
        } => (limit, needed, max),
        other => panic!("expected a work-limit refusal, got: {other}"),
    }
}

#[test]
fn small_jpeg_with_many_scans_over_a_large_image_is_refused_before_decoding() {
    let limits = DecodeLimits::default();
    let bomb = hostile_jpeg(8192, 2000);
    assert!(bomb.len() < 25_000, "{} bytes", bomb.len());
    let e = decode_rgb(&bomb, &limits).unwrap_err();
    let message = e.to_string();
    assert_eq!(work_error(e), ("max_scans", 2000, 100));
    assert!(
        message.contains("raise DecodeLimits::max_scans"),
        "{message}"
    );
    assert!(decode_cost(&bomb, &limits).is_err());
}

#[test]
fn scans_within_the_count_limit_are_still_bounded_by_block_visits() {
    // 40 scans over 8192² (1 Mi blocks) ask 40 Mi block visits, over the default 32 Mi.
    let bomb = hostile_jpeg(8192, 40);
    let e = decode_rgb(&bomb, &DecodeLimits::default()).unwrap_err();
    assert_eq!(
        work_error(e),
        ("max_block_scans", 40 * 1024 * 1024, 32 * 1024 * 1024)
    );
}

#[test]
fn honest_progressive_jpeg_passes_and_its_cost_is_reported() {
    let jpg = honest_progressive();
    let limits = DecodeLimits::default();
    let cost = decode_cost(&jpg, &limits).unwrap();
    assert_eq!(cost.format, ImageFormat::Jpeg);
    assert_eq!((cost.width, cost.height, cost.scans), (64, 48, 10));
    // 64×48 at 4:2:0: 48 luma and 2×12 chroma blocks; libjpeg's script visits them 4 to 5
    // times each.
    assert!((72..=72 * 6).contains(&cost.block_scans), "{cost:?}");
    assert!(decode_rgb(&jpg, &limits).is_ok());
}

#[test]
fn each_work_limit_refuses_what_exceeds_it() {
    let jpg = honest_progressive();
    let cost = decode_cost(&jpg, &DecodeLimits::default()).unwrap();
    let fewer_scans = DecodeLimits {
        max_scans: cost.scans - 1,
        ..DecodeLimits::default()
    };
    let e = decode_rgb(&jpg, &fewer_scans).unwrap_err();
    assert_eq!(work_error(e), ("max_scans", 10, 9));
    let less_work = DecodeLimits {
        max_block_scans: cost.block_scans - 1,
        ..DecodeLimits::default()
    };
    let e = decode_rgb(&jpg, &less_work).unwrap_err();
    assert_eq!(
        work_error(e),
        ("max_block_scans", cost.block_scans, cost.block_scans - 1)
    );
    // Exactly at the limits passes.
    let exact = DecodeLimits {
        max_scans: cost.scans,
        max_block_scans: cost.block_scans,
        ..DecodeLimits::default()
    };
    assert!(decode_rgb(&jpg, &exact).is_ok());
}

#[test]
fn other_formats_report_their_pixels_as_work() {
    let mut png = Vec::new();
    image::RgbImage::new(30, 20)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let cost = decode_cost(&png, &DecodeLimits::default()).unwrap();
    assert_eq!(
        (
            cost.format,
            cost.width,
            cost.height,
            cost.scans,
            cost.block_scans
        ),
        (ImageFormat::Png, 30, 20, 1, 10)
    );
}

/// Pixels handed over already decoded (arrays from Python, UINT8 tensors) meet the same
/// `max_pixels` as encoded headers, and an image without pixels is refused, never scored.
#[test]
fn decoded_pixels_are_held_to_the_limits() {
    use headclip_data::images::{ImageSource, Normalization, Preprocessor, RgbImage};
    let preprocessor = Preprocessor {
        side: 32,
        limits: DecodeLimits {
            max_pixels: 100 * 100,
            ..DecodeLimits::default()
        },
        normalization: Normalization::CLIP,
    };
    let image = |width: u32, height: u32| {
        ImageSource::Decoded(RgbImage {
            width,
            height,
            pixels: vec![128; (width * height * 3) as usize],
        })
    };
    assert!(preprocessor.prepare(image(100, 100), false).is_ok());
    match preprocessor.prepare(image(101, 100), false) {
        Err(DataError::TooLarge { max_pixels, .. }) => assert_eq!(max_pixels, 10_000),
        other => panic!("101×100 over a 10,000-pixel limit: {other:?}"),
    }
    for (w, h) in [(0, 0), (0, 5), (5, 0)] {
        let err = preprocessor.prepare(image(w, h), false).unwrap_err();
        assert!(err.to_string().contains("has no pixels"), "{w}×{h}: {err}");
    }
}
