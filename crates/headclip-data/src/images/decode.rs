//! Format sniffing, header-only size checks, and decoding to PIL's `RGB` or `L` pixels.
//!
//! JPEG goes through [`super::jpeg`] (libjpeg-turbo's arithmetic), PNG through [`super::png`]
//! (the `png` crate with PIL's checksum rules); the other formats through the `image` crate,
//! whose lossless decoders give the same samples as PIL, after a check of the WebP container
//! that PIL's libwebp makes. The conversions then
//! follow PIL's `convert("RGB")` and `convert("L")`, except that 16-bit grey keeps its high byte
//! where PIL saturates at 255 (the spec asks for scaling, and PIL's other 16-bit modes do the
//! same).

use std::borrow::Cow;
use std::io::Cursor;

use image::{DynamicImage, ImageError, ImageFormat as ImgFormat, ImageReader};

use super::jpeg::{self, JpegError, Samples};
use super::png;
use super::{DataError, DecodeCost, DecodeLimits, ImageFormat, RgbImage};

/// Recognises an image format from its magic bytes.
pub(crate) fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    let starts = |m: &[u8]| bytes.starts_with(m);
    if starts(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if starts(b"\xFF\xD8\xFF") {
        Some(ImageFormat::Jpeg)
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else if starts(b"BM") && bytes.len() >= 26 {
        Some(ImageFormat::Bmp)
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        Some(ImageFormat::Tiff)
    } else if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::WebP)
    } else {
        None
    }
}

/// What a file that is not an image looks like, from its first bytes, for messages: users
/// recognise "an HTML page" (a failed download) where a hex dump tells them nothing.
pub(crate) fn looks_like(bytes: &[u8]) -> &'static str {
    let starts = |m: &[u8]| bytes.starts_with(m);
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let lower = String::from_utf8_lossy(text)
        .trim_start()
        .to_ascii_lowercase();
    if starts(b"%PDF-") {
        "a PDF"
    } else if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") {
        "a ZIP archive"
    } else if starts(b"\x1F\x8B") {
        "a gzip archive"
    } else if starts(b"version https://git-lfs") {
        "a Git LFS pointer (the file itself was not downloaded)"
    } else if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
        "HTML"
    } else if is_text(text) {
        "text"
    } else {
        "unknown binary"
    }
}

/// UTF-8 without control characters other than tabs and line breaks; a character cut off at
/// the end of the sample still counts.
fn is_text(bytes: &[u8]) -> bool {
    let valid = match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return false,
    };
    !valid.is_empty()
        && valid
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
}

fn image_crate_format(f: ImageFormat) -> ImgFormat {
    match f {
        ImageFormat::Png => ImgFormat::Png,
        ImageFormat::Jpeg => ImgFormat::Jpeg,
        ImageFormat::Gif => ImgFormat::Gif,
        ImageFormat::Bmp => ImgFormat::Bmp,
        ImageFormat::Tiff => ImgFormat::Tiff,
        ImageFormat::WebP => ImgFormat::WebP,
    }
}

fn from_image_error(format: ImageFormat, e: ImageError) -> DataError {
    let detail = e.to_string();
    match e {
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DataError::Truncated { format, detail }
        }
        ImageError::Decoding(_) if looks_truncated(&detail) => {
            DataError::Truncated { format, detail }
        }
        ImageError::Unsupported(_) => DataError::Unsupported { format, detail },
        ImageError::Limits(_) => DataError::Unsupported {
            format,
            detail: format!("decoder memory limit: {detail}"),
        },
        _ => DataError::Corrupt { format, detail },
    }
}

fn looks_truncated(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    [
        "eof",
        "end of",
        "truncated",
        "unexpected end",
        "not enough data",
    ]
    .iter()
    .any(|p| d.contains(p))
}

fn from_jpeg_error(e: JpegError, limits: &DecodeLimits) -> DataError {
    let format = ImageFormat::Jpeg;
    match e {
        JpegError::Truncated(detail) => DataError::Truncated { format, detail },
        JpegError::Corrupt(detail) => DataError::Corrupt { format, detail },
        JpegError::Unsupported(detail) => DataError::Unsupported { format, detail },
        JpegError::TooLarge { width, height } => DataError::TooLarge {
            width,
            height,
            max_pixels: limits.max_pixels,
        },
    }
}

/// Reads the pixel size from the header only. PNG and JPEG headers are parsed here, so that a
/// forged size is refused even when the rest of the file is missing.
pub(crate) fn dimensions(bytes: &[u8]) -> Result<(ImageFormat, u32, u32), DataError> {
    if bytes.is_empty() {
        return Err(DataError::Empty);
    }
    let format = sniff(bytes).ok_or_else(|| DataError::UnknownFormat {
        looks_like: looks_like(bytes),
    })?;
    let (w, h) = match format {
        ImageFormat::Png => {
            if bytes.len() < 24 {
                return Err(DataError::Truncated {
                    format,
                    detail: "PNG data ends inside its header".into(),
                });
            }
            if &bytes[12..16] != b"IHDR" {
                return Err(DataError::Corrupt {
                    format,
                    detail: "PNG does not start with an IHDR chunk".into(),
                });
            }
            let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
            (be32(16), be32(20))
        }
        ImageFormat::Jpeg => {
            jpeg::dimensions(bytes).map_err(|e| from_jpeg_error(e, &DecodeLimits::default()))?
        }
        _ => image_crate_reader(bytes, format)
            .into_dimensions()
            .map_err(|e| from_image_error(format, e))?,
    };
    if w == 0 || h == 0 {
        return Err(DataError::Corrupt {
            format,
            detail: format!("image size {w}×{h}"),
        });
    }
    Ok((format, w, h))
}

/// Decoded pixels before conversion, in PIL's terms.
enum Raw {
    Jpeg(jpeg::Decoded),
    Other(DynamicImage),
}

/// PIL's WebP reader (libwebp's demuxer) refuses a file whose RIFF size or chunk sizes run
/// past the data, which the `image` crate's decoder accepts when the image data is complete.
fn check_webp_container(bytes: &[u8]) -> Result<(), DataError> {
    let webp = |detail: &str| DataError::Corrupt {
        format: ImageFormat::WebP,
        detail: detail.into(),
    };
    let le32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let riff_end = 8 + le32(4);
    if riff_end > bytes.len() {
        return Err(DataError::Truncated {
            format: ImageFormat::WebP,
            detail: format!(
                "RIFF size says {riff_end} bytes, the file has {}",
                bytes.len()
            ),
        });
    }
    let mut pos = 12;
    while pos + 8 <= riff_end {
        let padded = le32(pos + 4).saturating_add(1) & !1;
        if padded > riff_end - pos - 8 {
            return Err(webp("a WebP chunk runs past the end of its RIFF container"));
        }
        pos += 8 + padded;
    }
    if pos != riff_end {
        return Err(webp("WebP RIFF container ends inside a chunk header"));
    }
    Ok(())
}

/// The cost of decoding, checked against the limits; see [`super::decode_cost`].
pub(crate) fn decode_cost(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodeCost, DataError> {
    let (format, width, height) = dimensions(bytes)?;
    limits.check_size(width, height)?;
    let pixels = u64::from(width) * u64::from(height);
    let (scans, block_scans) = if format == ImageFormat::Jpeg {
        let c = jpeg::cost(bytes).map_err(|e| from_jpeg_error(e, limits))?;
        (c.scans, c.block_scans)
    } else {
        (1, pixels.div_ceil(64))
    };
    if scans > limits.max_scans {
        return Err(DataError::TooMuchWork {
            what: "JPEG scans",
            limit: "max_scans",
            needed: u64::from(scans),
            max: u64::from(limits.max_scans),
        });
    }
    if format == ImageFormat::Jpeg && block_scans > limits.max_block_scans {
        return Err(DataError::TooMuchWork {
            what: "8×8 block visits (blocks × scans)",
            limit: "max_block_scans",
            needed: block_scans,
            max: limits.max_block_scans,
        });
    }
    Ok(DecodeCost {
        format,
        width,
        height,
        scans,
        block_scans,
    })
}

fn decode_raw(bytes: &[u8], limits: &DecodeLimits) -> Result<Raw, DataError> {
    let DecodeCost { format, .. } = decode_cost(bytes, limits)?;
    if format == ImageFormat::Jpeg {
        return jpeg::decode(bytes, limits.max_pixels)
            .map(Raw::Jpeg)
            .map_err(|e| from_jpeg_error(e, limits));
    }
    // 8 bytes per pixel covers RGBA16, the widest layout these formats decode to.
    let max_alloc = limits.max_pixels.saturating_mul(8).saturating_add(1 << 24);
    match format {
        ImageFormat::Png => return png::decode(bytes, max_alloc).map(Raw::Other),
        ImageFormat::WebP => check_webp_container(bytes)?,
        _ => {}
    }
    let mut reader = image_crate_reader(bytes, format);
    let mut l = image::Limits::no_limits();
    l.max_alloc = Some(max_alloc);
    reader.limits(l);
    let img = reader.decode().map_err(|e| from_image_error(format, e))?;
    Ok(Raw::Other(img))
}

/// PIL's CMYK→RGB on libjpeg's Adobe-inverted CMYK (PIL reads it as `CMYK;I`).
/// The `image` crate's reader over the file as PIL reads it.
fn image_crate_reader(bytes: &[u8], format: ImageFormat) -> ImageReader<Cursor<Cow<'_, [u8]>>> {
    let as_pil_reads = match format {
        ImageFormat::Tiff => tiff_without_tags_pil_skips(bytes).map(Cow::Owned),
        _ => None,
    };
    let data = as_pil_reads.unwrap_or(Cow::Borrowed(bytes));
    ImageReader::with_format(Cursor::new(data), image_crate_format(format))
}

/// Bytes per value of each TIFF field type PIL reads; it skips entries of other types.
fn tiff_type_size(field_type: u16) -> Option<u64> {
    match field_type {
        1 | 2 | 6 | 7 => Some(1),
        3 | 8 => Some(2),
        4 | 9 | 11 | 13 => Some(4),
        5 | 10 | 12 => Some(8),
        _ => None,
    }
}

/// PIL skips a first-IFD entry whose values it cannot read: an unknown type, values stored
/// past the end of the file, or out-of-line values that together exceed the file's length. The
/// `tiff` crate instead fails on such an entry (or tries to allocate what it claims), so the
/// entries PIL skips are renamed to an unused private tag. `None` when there are none.
fn tiff_without_tags_pil_skips(bytes: &[u8]) -> Option<Vec<u8>> {
    let big_endian = match bytes.get(..4)? {
        b"II*\0" => false,
        b"MM\0*" => true,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
        Some(if big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let ifd = u32_at(4)? as usize;
    let len = bytes.len() as u64;
    let mut out_of_line = 0u64;
    let mut skipped = Vec::new();
    for i in 0..usize::from(u16_at(ifd)?) {
        let entry = ifd + 2 + 12 * i;
        let (Some(field_type), Some(count), Some(offset)) =
            (u16_at(entry + 2), u32_at(entry + 4), u32_at(entry + 8))
        else {
            break;
        };
        let Some(unit) = tiff_type_size(field_type) else {
            skipped.push(entry);
            continue;
        };
        let size = unit * u64::from(count);
        if size > 4 {
            out_of_line += size;
            if out_of_line > len || u64::from(offset) + size > len {
                skipped.push(entry);
            }
        }
    }
    if skipped.is_empty() {
        return None;
    }
    let mut out = bytes.to_vec();
    for entry in skipped {
        // 65000 lies in the private range no decoder interprets.
        let unused = if big_endian {
            65000u16.to_be_bytes()
        } else {
            65000u16.to_le_bytes()
        };
        out[entry..entry + 2].copy_from_slice(&unused);
    }
    Some(out)
}

fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let nk = u32::from(px[3]);
        for &c in &px[..3] {
            let c = 255 - u32::from(c);
            out.push((nk - muldiv255(c, nk)) as u8);
        }
    }
    out
}

fn grey_to_rgb(grey: impl Iterator<Item = u8>) -> Vec<u8> {
    grey.flat_map(|v| [v, v, v]).collect()
}

fn keep_channels<T: Copy>(src: &[T], of: usize, keep: usize) -> Vec<T> {
    src.chunks_exact(of)
        .flat_map(|p| p[..keep].iter().copied())
        .collect()
}

/// 16-bit samples keep their high byte, as PIL does for its 16-bit RGB(A) and grey+alpha.
fn high_bytes(src: &[u16]) -> Vec<u8> {
    src.iter().map(|&v| (v >> 8) as u8).collect()
}

fn float_to_u8(src: &[f32]) -> Vec<u8> {
    src.iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

fn other_to_rgb(img: DynamicImage) -> Vec<u8> {
    match img {
        DynamicImage::ImageLuma8(b) => grey_to_rgb(b.into_raw().into_iter()),
        DynamicImage::ImageLumaA8(b) => grey_to_rgb(b.into_raw().into_iter().step_by(2)),
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => keep_channels(&b.into_raw(), 4, 3),
        DynamicImage::ImageLuma16(b) => grey_to_rgb(high_bytes(&b.into_raw()).into_iter()),
        DynamicImage::ImageLumaA16(b) => {
            grey_to_rgb(high_bytes(&b.into_raw()).into_iter().step_by(2))
        }
        DynamicImage::ImageRgb16(b) => high_bytes(&b.into_raw()),
        DynamicImage::ImageRgba16(b) => keep_channels(&high_bytes(&b.into_raw()), 4, 3),
        DynamicImage::ImageRgb32F(b) => float_to_u8(&b.into_raw()),
        DynamicImage::ImageRgba32F(b) => keep_channels(&float_to_u8(&b.into_raw()), 4, 3),
        other => other.to_rgb8().into_raw(),
    }
}

/// Decodes to 8-bit RGB as PIL's `Image.open(...).convert("RGB")` does.
pub(crate) fn decode_rgb(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DataError> {
    let (width, height, pixels) = match decode_raw(bytes, limits)? {
        Raw::Jpeg(j) => {
            let px = match j.samples {
                Samples::Grey(g) => grey_to_rgb(g.into_iter()),
                Samples::Rgb(p) => p,
                Samples::Cmyk(p) => cmyk_to_rgb(&p),
            };
            (j.width, j.height, px)
        }
        Raw::Other(img) => (img.width(), img.height(), other_to_rgb(img)),
    };
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

/// A single-channel image at its native depth.
pub(crate) struct Grey {
    pub width: u32,
    pub height: u32,
    pub values: Vec<u16>,
    /// 255 for 8-bit sources, 65535 for 16-bit grey.
    pub max_value: u16,
}

/// PIL's ITU-R 601-2 luma (`L24`): 16 fraction bits, rounded.
fn luma(rgb: &[u8]) -> Vec<u16> {
    rgb.chunks_exact(3)
        .map(|p| {
            let l = u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471;
            ((l + 0x8000) >> 16) as u16
        })
        .collect()
}

/// Decodes to grey as PIL's `convert("L")` does, but keeps 16-bit grey at 16 bits so that
/// thresholds can use the type's full range.
pub(crate) fn decode_grey(bytes: &[u8], limits: &DecodeLimits) -> Result<Grey, DataError> {
    let eight = |width, height, values| Grey {
        width,
        height,
        values,
        max_value: 255,
    };
    Ok(match decode_raw(bytes, limits)? {
        Raw::Jpeg(j) => {
            let values = match j.samples {
                Samples::Grey(g) => g.into_iter().map(u16::from).collect(),
                Samples::Rgb(p) => luma(&p),
                Samples::Cmyk(p) => luma(&cmyk_to_rgb(&p)),
            };
            eight(j.width, j.height, values)
        }
        Raw::Other(img) => {
            let (w, h) = (img.width(), img.height());
            let sixteen = |values| Grey {
                width: w,
                height: h,
                values,
                max_value: u16::MAX,
            };
            match img {
                DynamicImage::ImageLuma8(b) => {
                    eight(w, h, b.into_raw().into_iter().map(u16::from).collect())
                }
                DynamicImage::ImageLumaA8(b) => eight(
                    w,
                    h,
                    b.into_raw().into_iter().step_by(2).map(u16::from).collect(),
                ),
                DynamicImage::ImageLuma16(b) => sixteen(b.into_raw()),
                DynamicImage::ImageLumaA16(b) => {
                    sixteen(b.into_raw().into_iter().step_by(2).collect())
                }
                other => eight(w, h, luma(&other_to_rgb(other))),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_images_are_described_not_dumped() {
        let cases: [(&[u8], &str); 8] = [
            (b"these are notes\n", "text"),
            (b"\xEF\xBB\xBFid,label\n0,1\n", "text"),
            (b"%PDF-1.7\n%\xE2\xE3", "a PDF"),
            (b"PK\x03\x04\x14\x00\x00\x00", "a ZIP archive"),
            (b"  <!DOCTYPE html><html>", "HTML"),
            (
                b"version https://git-lfs.github.com/spec/v1\n",
                "a Git LFS pointer (the file itself was not downloaded)",
            ),
            (b"\x00\x01\x02\xFE\xFF\x00", "unknown binary"),
            // A multi-byte character cut at the end of the sample is still text.
            (b"caf\xC3", "text"),
        ];
        for (bytes, want) in cases {
            assert_eq!(looks_like(bytes), want, "{bytes:?}");
        }
        let e = dimensions(b"%PDF-1.7 and more").unwrap_err().to_string();
        assert_eq!(e, "not an image: the file looks like a PDF");
    }

    #[test]
    fn cmyk_matches_pil_formula() {
        // No ink (stored as 255 in Adobe's inverted form) is white; full black is black.
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 255]), vec![255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 0]), vec![0, 0, 0]);
        assert_eq!(cmyk_to_rgb(&[0, 255, 255, 255]), vec![0, 255, 255]);
    }

    #[test]
    fn luma_matches_pil() {
        assert_eq!(luma(&[255, 255, 255, 0, 0, 0, 255, 0, 0]), vec![255, 0, 76]);
    }
}
