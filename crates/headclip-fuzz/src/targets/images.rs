//! Images through headclip-data's public decode API: every format it reads, as seeds made here
//! with the `image` and `png` crates or stored (Pillow-made) in `seeds/`.

use std::io::Cursor;

use fastrand::Rng;
use headclip_data::images::{decode_mask, DataError, DecodeLimits, Normalization, Preprocessor};
use image::{DynamicImage, ImageBuffer, ImageFormat};

use super::{Input, Outcome, Seed, Target};
use crate::mutate;

/// Model sides the image target prepares for: the fixture's, a tiny one and CLIP's.
const SIDES: [u32; 3] = [14, 32, 224];

/// `Preprocessor::prepare_encoded`: decode, resize, normalise.
pub fn image_target(_: &super::Context) -> anyhow::Result<Box<dyn Target>> {
    Ok(Box::new(ImageTarget {
        name: "image",
        seeds: seeds()?,
        mask: false,
    }))
}

/// `decode_mask`: decode as grey, threshold, resize.
pub fn mask_target(_: &super::Context) -> anyhow::Result<Box<dyn Target>> {
    Ok(Box::new(ImageTarget {
        name: "mask",
        seeds: seeds()?,
        mask: true,
    }))
}

struct ImageTarget {
    name: &'static str,
    seeds: Vec<Seed>,
    mask: bool,
}

impl Target for ImageTarget {
    fn name(&self) -> &'static str {
        self.name
    }

    fn seeds(&self) -> &[Seed] {
        &self.seeds
    }

    fn mutate(&self, rng: &mut Rng, input: &mut Vec<u8>, partner: &[u8]) {
        // Mostly format-aware edits; format-blind ones also break what the format parsers keep.
        if rng.u32(0..3) == 0 {
            return mutate::bytes(rng, input, partner);
        }
        match headclip_data::images::sniff_format(input) {
            Some(headclip_data::images::ImageFormat::Png) => {
                mutate::png::mutate(rng, input, partner)
            }
            Some(headclip_data::images::ImageFormat::Jpeg) => {
                mutate::jpeg::mutate(rng, input, partner)
            }
            _ => mutate::bytes(rng, input, partner),
        }
    }

    fn run(&mut self, input: &Input) -> Outcome {
        let limits = DecodeLimits::default();
        let side = SIDES[input.bytes.len() % SIDES.len()];
        let result = if self.mask {
            decode_mask(input.bytes, side, &limits).map(drop)
        } else {
            Preprocessor {
                side,
                limits,
                normalization: Normalization::CLIP,
            }
            .prepare_encoded(input.bytes, false)
            .map(drop)
        };
        match result {
            Ok(()) => Outcome::Accepted,
            Err(e) => Outcome::Refused(data_error_kind(&e)),
        }
    }
}

fn data_error_kind(e: &DataError) -> String {
    match e {
        DataError::Empty => "empty".into(),
        DataError::UnknownFormat { .. } => "not an image".into(),
        DataError::TooLarge { .. } => "too large".into(),
        DataError::TooMuchWork { limit, .. } => format!("over {limit}"),
        DataError::Truncated { format, .. } => format!("truncated {format}"),
        DataError::Corrupt { format, .. } => format!("corrupt {format}"),
        DataError::Unsupported { format, .. } => format!("unsupported {format}"),
        DataError::InvalidArgument(_) => "invalid argument".into(),
        other => format!("other: {other}"),
    }
}

/// One seed per kind of file the decoders handle.
pub fn seeds() -> anyhow::Result<Vec<Seed>> {
    let rgb = gradient(16, 12);
    let mut seeds = vec![
        encoded(
            "rgb.png",
            DynamicImage::ImageRgb8(rgb.clone()),
            ImageFormat::Png,
        )?,
        encoded(
            "grey.png",
            DynamicImage::ImageLuma8(grey(&rgb)),
            ImageFormat::Png,
        )?,
        encoded(
            "rgba.png",
            DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb.clone()).to_rgba8()),
            ImageFormat::Png,
        )?,
        encoded(
            "grey_alpha.png",
            DynamicImage::ImageLumaA8(DynamicImage::ImageRgb8(rgb.clone()).to_luma_alpha8()),
            ImageFormat::Png,
        )?,
        encoded(
            "grey16.png",
            DynamicImage::ImageLuma16(DynamicImage::ImageRgb8(rgb.clone()).to_luma16()),
            ImageFormat::Png,
        )?,
        encoded(
            "rgb16.png",
            DynamicImage::ImageRgb16(DynamicImage::ImageRgb8(rgb.clone()).to_rgb16()),
            ImageFormat::Png,
        )?,
        Seed {
            name: "palette.png".into(),
            bytes: palette_png(&rgb)?,
        },
        Seed {
            name: "interlaced.png".into(),
            bytes: interlaced_png(&rgb),
        },
        encoded(
            "baseline.jpg",
            DynamicImage::ImageRgb8(rgb.clone()),
            ImageFormat::Jpeg,
        )?,
        encoded(
            "grey.jpg",
            DynamicImage::ImageLuma8(grey(&rgb)),
            ImageFormat::Jpeg,
        )?,
        encoded(
            "palette.gif",
            DynamicImage::ImageRgb8(rgb.clone()),
            ImageFormat::Gif,
        )?,
        encoded(
            "rgb.bmp",
            DynamicImage::ImageRgb8(rgb.clone()),
            ImageFormat::Bmp,
        )?,
        encoded(
            "rgb.tif",
            DynamicImage::ImageRgb8(rgb.clone()),
            ImageFormat::Tiff,
        )?,
        encoded(
            "lossless.webp",
            DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb).to_rgba8()),
            ImageFormat::WebP,
        )?,
    ];
    seeds.extend(stored());
    Ok(seeds)
}

/// The kinds the `image` crate cannot write, made with Pillow by `reference/gen_fuzz_seeds.py`.
fn stored() -> Vec<Seed> {
    let seed = |name: &str, bytes: &[u8]| Seed {
        name: name.into(),
        bytes: bytes.to_vec(),
    };
    vec![
        seed(
            "progressive.jpg",
            include_bytes!("../../seeds/progressive.jpg"),
        ),
        seed("restart.jpg", include_bytes!("../../seeds/restart.jpg")),
        seed("s444.jpg", include_bytes!("../../seeds/s444.jpg")),
        seed("cmyk.jpg", include_bytes!("../../seeds/cmyk.jpg")),
        seed("lossy.webp", include_bytes!("../../seeds/lossy.webp")),
        seed(
            "lossy_alpha.webp",
            include_bytes!("../../seeds/lossy_alpha.webp"),
        ),
    ]
}

fn gradient(w: u32, h: u32) -> image::RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| {
        image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, (x * y) as u8])
    })
}

fn grey(rgb: &image::RgbImage) -> image::GrayImage {
    DynamicImage::ImageRgb8(rgb.clone()).to_luma8()
}

fn encoded(name: &str, img: DynamicImage, format: ImageFormat) -> anyhow::Result<Seed> {
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), format)?;
    Ok(Seed {
        name: name.into(),
        bytes,
    })
}

/// A 4-bit palette PNG of 16 grey levels.
fn palette_png(rgb: &image::RgbImage) -> anyhow::Result<Vec<u8>> {
    let (w, h) = rgb.dimensions();
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Four);
    enc.set_palette(
        (0..16u8)
            .flat_map(|i| [i * 17, i * 17, 255 - i * 17])
            .collect::<Vec<_>>(),
    );
    let mut writer = enc.write_header()?;
    let packed: Vec<u8> = grey(rgb)
        .rows()
        .flat_map(|row| {
            let idx: Vec<u8> = row.map(|p| p.0[0] >> 4).collect();
            idx.chunks(2)
                .map(|c| c[0] << 4 | c.get(1).copied().unwrap_or(0))
                .collect::<Vec<_>>()
        })
        .collect();
    writer.write_image_data(&packed)?;
    writer.finish()?;
    Ok(out)
}

/// An Adam7-interlaced RGB PNG, written by hand: neither `image` nor `png` writes interlacing.
fn interlaced_png(rgb: &image::RgbImage) -> Vec<u8> {
    const PASSES: [(u32, u32, u32, u32); 7] = [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ];
    let (w, h) = rgb.dimensions();
    let mut raw = Vec::new();
    for (x0, y0, dx, dy) in PASSES {
        if x0 >= w || y0 >= h {
            continue;
        }
        for y in (y0..h).step_by(dy as usize) {
            raw.push(0); // filter type None
            for x in (x0..w).step_by(dx as usize) {
                raw.extend_from_slice(&rgb.get_pixel(x, y).0);
            }
        }
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 1]); // 8-bit RGB, deflate, adaptive filters, Adam7
    mutate::png::encode(&[
        (*b"IHDR", ihdr),
        (
            *b"IDAT",
            miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6),
        ),
        (*b"IEND", Vec::new()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_decodes() {
        let pre = Preprocessor {
            side: 14,
            limits: DecodeLimits::default(),
            normalization: Normalization::CLIP,
        };
        for s in seeds().unwrap() {
            let img = headclip_data::images::decode_rgb(&s.bytes, &pre.limits)
                .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            assert_eq!((img.width, img.height), (16, 12), "{}", s.name);
        }
    }
}
