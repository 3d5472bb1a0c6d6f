//! What an overlay carries besides the map: a colour bar (the fixed [0, 1] scale, with the
//! calibrated pixel threshold marked) along the right edge, and the score (with the verdict,
//! when a calibration gave one) in the top-left corner.

use super::colormap;
use super::font::{glyph, GLYPH_H, GLYPH_W};
use crate::images::RgbImage;

/// What to draw on an overlay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Annotation {
    /// The image's joint score, printed with three decimals.
    pub score: f32,
    /// The verdict (`true` = anomalous, printed `NG`; `false` printed `OK`), with a calibration.
    pub verdict: Option<bool>,
    /// The pixel threshold, marked on the colour bar, with a calibration.
    pub pixel_threshold: Option<f32>,
}

impl Annotation {
    /// The text in the corner: `0.734`, or `NG 0.734` / `OK 0.212` with a verdict.
    pub fn text(&self) -> String {
        match self.verdict {
            Some(true) => format!("NG {:.3}", self.score),
            Some(false) => format!("OK {:.3}", self.score),
            None => format!("{:.3}", self.score),
        }
    }
}

/// Draws the colour bar and the score onto `image` in place, scaled to its size (images too
/// small to hold them are left as they are).
pub fn annotate(image: &mut RgbImage, annotation: &Annotation) {
    let (w, h) = (image.width as usize, image.height as usize);
    if w < 16 || h < 16 || image.pixels.len() != w * h * 3 {
        return;
    }
    draw_colour_bar(image, annotation.pixel_threshold);
    draw_text(image, &annotation.text());
}

fn put(image: &mut RgbImage, x: usize, y: usize, rgb: [u8; 3]) {
    let at = (y * image.width as usize + x) * 3;
    image.pixels[at..at + 3].copy_from_slice(&rgb);
}

/// A vertical bar at the right edge, 1 at the top and 0 at the bottom, framed in black, with a
/// white tick across it at the threshold.
fn draw_colour_bar(image: &mut RgbImage, threshold: Option<f32>) {
    let (w, h) = (image.width as usize, image.height as usize);
    let bar_w = (w / 32).max(4);
    let margin = (h / 20).max(2);
    let (x0, x1) = (w - bar_w - margin.min(w / 8), w - margin.min(w / 8));
    let (y0, y1) = (margin, h - margin);
    let span = (y1 - y0 - 1).max(1) as f32;
    for y in y0..y1 {
        let value = 1.0 - (y - y0) as f32 / span;
        for x in x0..x1 {
            let edge = x == x0 || x + 1 == x1 || y == y0 || y + 1 == y1;
            put(image, x, y, if edge { [0, 0, 0] } else { colormap(value) });
        }
    }
    if let Some(t) = threshold.filter(|t| t.is_finite()) {
        let y = y0 + ((1.0 - t.clamp(0.0, 1.0)) * span).round() as usize;
        let tick = (bar_w / 2).max(2);
        for x in x0.saturating_sub(tick)..x1 {
            put(image, x, y.min(y1 - 1), [255, 255, 255]);
        }
    }
}

/// The text in white on a black box in the top-left corner, each font pixel a square of a
/// size that grows with the image.
fn draw_text(image: &mut RgbImage, text: &str) {
    let (w, h) = (image.width as usize, image.height as usize);
    let chars: Vec<[u8; GLYPH_H]> = text.chars().filter_map(glyph).collect();
    let advance = GLYPH_W + 1;
    let cols = chars.len() * advance + 1;
    // Text about a twelfth of the image's height, but never wider than two thirds of it.
    let scale = (h / 12 / (GLYPH_H + 2)).min(w * 2 / 3 / cols.max(1)).max(1);
    let (box_w, box_h) = (cols * scale, (GLYPH_H + 2) * scale);
    if box_w > w || box_h > h {
        return;
    }
    for y in 0..box_h {
        for x in 0..box_w {
            put(image, x, y, [0, 0, 0]);
        }
    }
    for (i, rows) in chars.iter().enumerate() {
        for (row, bits) in rows.iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits >> (GLYPH_W - 1 - col) & 1 == 0 {
                    continue;
                }
                let (gx, gy) = ((1 + i * advance + col) * scale, (1 + row) * scale);
                for dy in 0..scale {
                    for dx in 0..scale {
                        put(image, gx + dx, gy + dy, [255, 255, 255]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(w: u32, h: u32) -> RgbImage {
        RgbImage {
            width: w,
            height: h,
            pixels: vec![128; (w * h * 3) as usize],
        }
    }

    fn pixel(img: &RgbImage, x: usize, y: usize) -> [u8; 3] {
        let at = (y * img.width as usize + x) * 3;
        [img.pixels[at], img.pixels[at + 1], img.pixels[at + 2]]
    }

    #[test]
    fn bar_runs_from_one_at_the_top_to_zero_at_the_bottom() {
        let mut img = grey(200, 200);
        let a = Annotation {
            score: 0.5,
            verdict: None,
            pixel_threshold: None,
        };
        annotate(&mut img, &a);
        // bar_w = 6, margin = 10: the bar spans x 184..190, y 10..190.
        assert_eq!(pixel(&img, 186, 11), colormap(1.0 - 1.0 / 179.0));
        assert_eq!(pixel(&img, 186, 188), colormap(1.0 / 179.0));
        assert_eq!(pixel(&img, 184, 100), [0, 0, 0]);
        // The middle of the image is untouched.
        assert_eq!(pixel(&img, 100, 100), [128, 128, 128]);
    }

    #[test]
    fn threshold_tick_and_text_are_drawn() {
        let mut img = grey(240, 240);
        let a = Annotation {
            score: 0.734,
            verdict: Some(true),
            pixel_threshold: Some(0.5),
        };
        assert_eq!(a.text(), "NG 0.734");
        annotate(&mut img, &a);
        let white_rows: Vec<usize> = (0..240)
            .filter(|&y| pixel(&img, 225, y) == [255, 255, 255])
            .collect();
        assert_eq!(white_rows.len(), 1, "{white_rows:?}");
        assert!((white_rows[0] as i64 - 120).abs() <= 1);
        // The box's corner is black and some font pixel inside it is white.
        assert_eq!(pixel(&img, 0, 0), [0, 0, 0]);
        let box_has_text = (0..20).any(|y| (0..100).any(|x| pixel(&img, x, y) == [255; 3]));
        assert!(box_has_text);
    }

    #[test]
    fn tiny_images_are_left_alone() {
        let mut img = grey(8, 8);
        let before = img.clone();
        annotate(
            &mut img,
            &Annotation {
                score: 1.0,
                verdict: None,
                pixel_threshold: None,
            },
        );
        assert_eq!(img, before);
    }
}
