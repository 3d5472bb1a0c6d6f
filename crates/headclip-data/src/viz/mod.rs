//! Heat-map overlays: an anomaly map coloured with a perceptual colormap, blended over the image.
//!
//! Maps are read on a fixed [0, 1] scale, never stretched to their own minimum and maximum, so
//! that colours compare across images: a normal image stays blue instead of showing its noise
//! in red.

mod annotate;
mod font;

pub use annotate::{annotate, Annotation};

use crate::images::{DataError, RgbImage};

/// Weight of the colour layer in [`overlay`].
pub const OVERLAY_ALPHA: f32 = 0.5;

/// The turbo colormap (Google, 2019) at `v`, clamped to [0, 1]; NaN counts as 0.
///
/// Evaluated with Google's published degree-5 polynomial approximation of the turbo table: dark
/// at 0, blue, cyan, green, yellow, red, dark red at 1. It follows the table closely except near
/// 0, where it is darker. Public so a legend or a web page can reproduce the overlay's colours.
pub fn colormap(v: f32) -> [u8; 3] {
    let x = if v.is_nan() {
        0.0
    } else {
        f64::from(v.clamp(0.0, 1.0))
    };
    let poly = |c: [f64; 6]| {
        let y = c[0] + x * (c[1] + x * (c[2] + x * (c[3] + x * (c[4] + x * c[5]))));
        (y.clamp(0.0, 1.0) * 255.0).round() as u8
    };
    [
        poly([
            0.135_721_38,
            4.615_392_6,
            -42.660_322_58,
            132.131_082_34,
            -152.942_393_96,
            59.286_379_43,
        ]),
        poly([
            0.091_402_61,
            2.194_188_39,
            4.842_966_58,
            -14.185_033_33,
            4.277_298_57,
            2.829_566_04,
        ]),
        poly([
            0.106_673_3,
            12.641_946_08,
            -60.582_048_36,
            110.362_767_71,
            -89.903_109_12,
            27.348_249_73,
        ]),
    ]
}

/// Source position and weight of each output position when stretching `n_in` samples over
/// `n_out` (pixel centres aligned, edges clamped).
fn bilinear_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            let s = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f32);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, s - i0 as f32)
        })
        .collect()
}

/// An `side`×`side` map (row-major) resized bilinearly to `width`×`height`, as
/// `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` does (no
/// anti-aliasing): pixel centres aligned, edges clamped. Predicted masks threshold this.
///
/// # Panics
/// If `map.len() != side²` or `side` is 0.
pub fn resize_map(map: &[f32], side: usize, width: usize, height: usize) -> Vec<f32> {
    assert!(side > 0, "anomaly map side must be positive");
    assert_eq!(map.len(), side * side, "anomaly map is not side²");
    let xs = bilinear_taps(side, width);
    let ys = bilinear_taps(side, height);
    let mut out = Vec::with_capacity(width * height);
    for &(y0, y1, fy) in &ys {
        let (r0, r1) = (&map[y0 * side..], &map[y1 * side..]);
        for &(x0, x1, fx) in &xs {
            let top = r0[x0] * (1.0 - fx) + r0[x1] * fx;
            let bottom = r1[x0] * (1.0 - fx) + r1[x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// Colours an `map_side`×`map_side` anomaly map (row-major, values on a fixed [0, 1] scale,
/// clamped) with [`colormap`], stretches it bilinearly to the original image's size and blends
/// it over the image with weight [`OVERLAY_ALPHA`].
///
/// # Panics
/// If `map.len() != map_side²`, `map_side` is 0, or the image's pixels do not match its size.
pub fn overlay(original: &RgbImage, map: &[f32], map_side: usize) -> RgbImage {
    let (w, h) = (original.width as usize, original.height as usize);
    assert_eq!(
        original.pixels.len(),
        w * h * 3,
        "image pixels do not match its size"
    );
    let clean: Vec<f32> = map
        .iter()
        .map(|&v| if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) })
        .collect();
    let stretched = resize_map(&clean, map_side, w, h);
    let mut pixels = Vec::with_capacity(w * h * 3);
    for (at, &v) in stretched.iter().enumerate() {
        let colour = colormap(v);
        for (c, &m) in colour.iter().enumerate() {
            let base = f32::from(original.pixels[at * 3 + c]);
            let v = base * (1.0 - OVERLAY_ALPHA) + f32::from(m) * OVERLAY_ALPHA;
            pixels.push(v.round() as u8);
        }
    }
    RgbImage {
        width: original.width,
        height: original.height,
        pixels,
    }
}

/// Encodes a `width`×`height` mask (0 or 1 per pixel, row-major) as an 8-bit grey PNG with
/// anomalous pixels 255.
pub fn encode_mask_png(mask: &[u8], width: u32, height: u32) -> Result<Vec<u8>, DataError> {
    use image::ImageEncoder;
    if mask.len() != width as usize * height as usize {
        return Err(DataError::InvalidArgument(format!(
            "{width}×{height} mask needs {} values, has {}",
            width as usize * height as usize,
            mask.len()
        )));
    }
    let grey: Vec<u8> = mask.iter().map(|&m| if m > 0 { 255 } else { 0 }).collect();
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&grey, width, height, image::ExtendedColorType::L8)
        .map_err(|e| DataError::Encode(e.to_string()))?;
    Ok(out)
}

/// Encodes an image as an 8-bit RGB PNG.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, DataError> {
    use image::ImageEncoder;
    let expected = img.width as usize * img.height as usize * 3;
    if img.pixels.len() != expected {
        return Err(DataError::InvalidArgument(format!(
            "{}×{} RGB image needs {expected} bytes, has {}",
            img.width,
            img.height,
            img.pixels.len()
        )));
    }
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            &img.pixels,
            img.width,
            img.height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| DataError::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{decode_rgb, DecodeLimits};

    fn grey(w: u32, h: u32) -> RgbImage {
        RgbImage::new(w, h, vec![128; (w * h * 3) as usize]).unwrap()
    }

    #[test]
    fn colormap_spans_turbo() {
        assert!(
            colormap(0.0).iter().all(|&c| c < 64),
            "dark: {:?}",
            colormap(0.0)
        );
        let [r, g, b] = colormap(0.15);
        assert!(b > 200 && b > r && b > g, "blue: {:?}", colormap(0.15));
        let [r, g, b] = colormap(0.5);
        assert!(g > 200 && g > r && g > b, "green: {:?}", colormap(0.5));
        let [r, g, b] = colormap(1.0);
        assert!(r > 100 && g < 30 && b < 30, "dark red: {:?}", colormap(1.0));
        assert_eq!(colormap(-3.0), colormap(0.0));
        assert_eq!(colormap(7.0), colormap(1.0));
        assert_eq!(colormap(f32::NAN), colormap(0.0));
    }

    #[test]
    fn maps_stretch_with_centres_aligned() {
        // Same size: the map itself.
        assert_eq!(
            resize_map(&[0.0, 0.2, 0.4, 0.6], 2, 2, 2),
            [0.0, 0.2, 0.4, 0.6]
        );
        // 2 → 4 across, 2 → 1 down: edges clamped, centres halfway, the row between averaged.
        let wide = resize_map(&[0.0, 0.8, 0.4, 0.4], 2, 4, 1);
        let want = [0.2, 0.3, 0.5, 0.6];
        assert!(
            wide.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{wide:?}"
        );
    }

    #[test]
    fn zeros_and_ones_give_different_colours_at_the_original_size() {
        let img = grey(37, 23);
        let lo = overlay(&img, &[0.0; 16], 4);
        let hi = overlay(&img, &[1.0; 16], 4);
        assert_eq!(
            (lo.width, lo.height, lo.pixels.len()),
            (37, 23, 37 * 23 * 3)
        );
        assert_ne!(lo.pixels[..3], hi.pixels[..3]);
        // A constant map gives one colour everywhere.
        assert!(lo.pixels.chunks(3).all(|p| p == &lo.pixels[..3]));
    }

    #[test]
    fn scale_is_fixed_not_stretched() {
        // Map and image of the same size: each pixel takes its own map value.
        let img = grey(2, 2);
        let out = overlay(&img, &[0.0, 0.2, 0.0, 0.2], 2);
        let blend = |v: f32| colormap(v).map(|c| ((128.0 + f32::from(c)) / 2.0).round() as u8);
        // 0.2 stays 0.2 (blue-cyan), not stretched to the map's maximum (dark red).
        assert_eq!(out.pixels[3..6], blend(0.2));
        assert_eq!(out.pixels[..3], blend(0.0));
    }

    #[test]
    fn resize_map_matches_torch_bilinear() {
        // torch.nn.functional.interpolate(m, size=(2, 5), mode="bilinear", align_corners=False)
        // of this 3×3 map, torch 2.11.
        let map = [0.0, 0.1, 0.2, 0.3, 0.9, 0.4, 0.5, 0.6, 1.0];
        let want = [0.075, 0.165, 0.3, 0.27, 0.25, 0.45, 0.54, 0.675, 0.78, 0.85];
        let got = resize_map(&map, 3, 5, 2);
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn png_round_trips() {
        let img = overlay(&grey(5, 3), &[0.2, 0.9, 0.4, 0.7], 2);
        let png = encode_png(&img).unwrap();
        assert_eq!(decode_rgb(&png, &DecodeLimits::default()).unwrap(), img);
        let bad = RgbImage {
            width: 2,
            height: 2,
            pixels: vec![0; 3],
        };
        assert!(encode_png(&bad).is_err());
    }
}
