//! PNG decoding with PIL's decisions on damaged files.
//!
//! The `image` crate's PNG decoder skips zlib's Adler-32 check, so corrupt image data under a
//! recomputed chunk CRC decodes where PIL (zlib) refuses; it also checks the CRC of every chunk,
//! where PIL checks those before the image data only. This module drives the `png` crate with
//! PIL's choices: Adler-32 checked, CRCs of the chunks before the first IDAT checked here.

use std::io::Cursor;

use image::{DynamicImage, ImageBuffer};

use super::{DataError, ImageFormat};

const FORMAT: ImageFormat = ImageFormat::Png;

fn corrupt(detail: impl Into<String>) -> DataError {
    DataError::Corrupt {
        format: FORMAT,
        detail: detail.into(),
    }
}

/// PIL verifies the CRC of each chunk it reads before the image data.
fn check_header_crcs(bytes: &[u8]) -> Result<(), DataError> {
    let mut pos = 8;
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        if kind == b"IDAT" {
            return Ok(());
        }
        let Some(end) = (pos + 8).checked_add(len).filter(|&e| e + 4 <= bytes.len()) else {
            return Ok(()); // the decoder reports the truncation
        };
        let stored = u32::from_be_bytes(bytes[end..end + 4].try_into().unwrap());
        if crc32(&bytes[pos + 4..end]) != stored {
            let kind = String::from_utf8_lossy(kind);
            return Err(corrupt(format!("bad CRC in the {kind} chunk")));
        }
        pos = end + 4;
    }
    Ok(())
}

/// The CRC-32 of PNG chunks (ISO 3309), bit by bit: chunks before the image data are small.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn from_png_error(e: png::DecodingError) -> DataError {
    let detail = e.to_string();
    match e {
        png::DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DataError::Truncated {
                format: FORMAT,
                detail,
            }
        }
        png::DecodingError::LimitsExceeded => corrupt(format!("decoder memory limit: {detail}")),
        _ => corrupt(detail),
    }
}

/// Decodes to the sample layout the file holds (palette and low depths expanded to 8 bits).
pub(super) fn decode(bytes: &[u8], max_alloc: u64) -> Result<DynamicImage, DataError> {
    check_header_crcs(bytes)?;
    let mut options = png::DecodeOptions::default();
    options.set_ignore_adler32(false);
    options.set_ignore_crc(true);
    let mut decoder = png::Decoder::new_with_options(Cursor::new(bytes), options);
    decoder.set_limits(png::Limits {
        bytes: usize::try_from(max_alloc).unwrap_or(usize::MAX),
    });
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(from_png_error)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| corrupt("image too large for memory"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(from_png_error)?;
    buf.truncate(info.buffer_size());
    to_dynamic(info, buf)
}

fn to_dynamic(info: png::OutputInfo, buf: Vec<u8>) -> Result<DynamicImage, DataError> {
    use png::{BitDepth, ColorType};
    let (w, h) = (info.width, info.height);
    let wrong = || corrupt("decoded PNG data does not match its size");
    let sixteen = |buf: Vec<u8>| -> Vec<u16> {
        buf.chunks_exact(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect()
    };
    let img = match (info.color_type, info.bit_depth) {
        (ColorType::Grayscale, BitDepth::Sixteen) => {
            DynamicImage::ImageLuma16(ImageBuffer::from_raw(w, h, sixteen(buf)).ok_or_else(wrong)?)
        }
        (ColorType::GrayscaleAlpha, BitDepth::Sixteen) => DynamicImage::ImageLumaA16(
            ImageBuffer::from_raw(w, h, sixteen(buf)).ok_or_else(wrong)?,
        ),
        (ColorType::Rgb, BitDepth::Sixteen) => {
            DynamicImage::ImageRgb16(ImageBuffer::from_raw(w, h, sixteen(buf)).ok_or_else(wrong)?)
        }
        (ColorType::Rgba, BitDepth::Sixteen) => {
            DynamicImage::ImageRgba16(ImageBuffer::from_raw(w, h, sixteen(buf)).ok_or_else(wrong)?)
        }
        (ColorType::Grayscale, _) => {
            DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, buf).ok_or_else(wrong)?)
        }
        (ColorType::GrayscaleAlpha, _) => {
            DynamicImage::ImageLumaA8(ImageBuffer::from_raw(w, h, buf).ok_or_else(wrong)?)
        }
        (ColorType::Rgb, _) => {
            DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, buf).ok_or_else(wrong)?)
        }
        (ColorType::Rgba, _) => {
            DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, buf).ok_or_else(wrong)?)
        }
        (ColorType::Indexed, _) => return Err(corrupt("palette left unexpanded")),
    };
    Ok(img)
}
