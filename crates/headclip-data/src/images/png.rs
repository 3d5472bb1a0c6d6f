//! PNG decoding with PIL's decisions on damaged files.
//!
//! The `image` crate's PNG decoder skips zlib's Adler-32 check, so corrupt image data under a
//! recomputed chunk CRC decodes where PIL (zlib) refuses; it also checks the CRC of every chunk,
//! where PIL checks those before the image data only. This module drives the `png` crate with
//! PIL's choices: Adler-32 checked, CRCs of the chunks before the first IDAT checked here.
//!
//! Where the `png` crate refuses the image data, PIL may still decode it: it stops reading as
//! soon as the last row arrives or zlib's stream ends at a row boundary, so a missing IEND, an
//! IDAT length running past the end of the file or a stream that stops rows early decode, the
//! missing rows left at zero. [`as_pil_reads`] replays that reading and hands the `png` crate
//! the image data PIL would have used.

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
        if crc32fast::hash(&bytes[pos + 4..end]) != stored {
            let kind = String::from_utf8_lossy(kind);
            return Err(corrupt(format!("bad CRC in the {kind} chunk")));
        }
        pos = end + 4;
    }
    Ok(())
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
    let whole_palette = with_whole_palette_entries(bytes);
    let bytes = whole_palette.as_deref().unwrap_or(bytes);
    let reader = open(bytes, max_alloc)?;
    match read_image(reader) {
        Ok(img) => Ok(img),
        Err(_) => {
            let repaired = as_pil_reads(bytes, max_alloc)?;
            read_image(open(&repaired, max_alloc)?)
        }
    }
}

/// A PLTE chunk whose length is not a multiple of 3 (which the `png` crate does not survive)
/// rewritten to its whole entries, as PIL reads it: the partial entry and the entries never
/// given are black. `None` when the palette is whole or absent.
fn with_whole_palette_entries(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut pos = 8;
    while pos + 8 <= bytes.len() {
        let len = be32(bytes, pos);
        let kind = &bytes[pos + 4..pos + 8];
        let end = (pos + 12).checked_add(len).filter(|&e| e <= bytes.len())?;
        match kind {
            b"IDAT" => return None,
            b"PLTE" if !len.is_multiple_of(3) => {
                let mut out = bytes[..pos].to_vec();
                // No whole entry: one black one, since the `png` crate refuses an empty PLTE.
                let entries = match &bytes[pos + 8..pos + 8 + len / 3 * 3] {
                    [] => &[0u8; 3][..],
                    whole => whole,
                };
                push_chunk(&mut out, b"PLTE", entries);
                out.extend_from_slice(&bytes[end..]);
                return Some(out);
            }
            _ => pos = end,
        }
    }
    None
}

type Reader<'a> = png::Reader<Cursor<&'a [u8]>>;

/// Reads the chunks up to the image data.
fn open(bytes: &[u8], max_alloc: u64) -> Result<Reader<'_>, DataError> {
    let mut options = png::DecodeOptions::default();
    options.set_ignore_adler32(false);
    options.set_ignore_crc(true);
    let mut decoder = png::Decoder::new_with_options(Cursor::new(bytes), options);
    decoder.set_limits(png::Limits {
        bytes: usize::try_from(max_alloc).unwrap_or(usize::MAX),
    });
    decoder.set_transformations(png::Transformations::EXPAND);
    decoder.read_info().map_err(from_png_error)
}

fn read_image(mut reader: Reader) -> Result<DynamicImage, DataError> {
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| corrupt("image too large for memory"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(from_png_error)?;
    buf.truncate(info.buffer_size());
    to_dynamic(info, buf)
}

fn truncated(detail: impl Into<String>) -> DataError {
    DataError::Truncated {
        format: FORMAT,
        detail: detail.into(),
    }
}

fn be32(bytes: &[u8], at: usize) -> usize {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
}

/// The file rewritten to hold the image data PIL decodes from it: its chunks up to the first
/// IDAT, then one IDAT with the rows PIL reads (rows it never reaches left at zero), then IEND.
/// Fails where PIL fails: zlib reports an error, or the data ends inside a row.
fn as_pil_reads(bytes: &[u8], max_alloc: u64) -> Result<Vec<u8>, DataError> {
    let layout = RowLayout::from_ihdr(bytes)?;
    if layout.raw_len() as u64 > max_alloc {
        return Err(corrupt("image too large for memory"));
    }
    let (first_idat, stream) = pil_image_data(bytes);
    let raw = inflate_rows(&stream, &layout)?;
    let mut out = bytes[..first_idat].to_vec();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut z, &raw).map_err(|e| corrupt(e.to_string()))?;
    let compressed = z.finish().map_err(|e| corrupt(e.to_string()))?;
    push_chunk(&mut out, b"IDAT", &compressed);
    push_chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

fn push_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Where the first IDAT chunk starts, and the zlib stream as PIL reads it: the data of that
/// chunk and of the IDAT chunks right after it, the last one cut where the file ends. Any other
/// chunk, or a chunk header cut short, ends the stream.
fn pil_image_data(bytes: &[u8]) -> (usize, Vec<u8>) {
    let mut pos = 8;
    while pos + 8 <= bytes.len() && &bytes[pos + 4..pos + 8] != b"IDAT" {
        pos = pos.saturating_add(12).saturating_add(be32(bytes, pos));
    }
    let first_idat = pos.min(bytes.len());
    let mut stream = Vec::new();
    while pos + 8 <= bytes.len() && &bytes[pos + 4..pos + 8] == b"IDAT" {
        let start = pos + 8;
        let end = start.saturating_add(be32(bytes, pos));
        stream.extend_from_slice(&bytes[start..end.min(bytes.len())]);
        pos = end.saturating_add(4);
    }
    (first_idat, stream)
}

/// The filtered rows of the zlib stream, as (rows, bytes per row with the filter byte) for
/// each Adam7 pass, or for the whole image when it is not interlaced.
struct RowLayout {
    passes: Vec<(usize, usize)>,
}

impl RowLayout {
    fn from_ihdr(bytes: &[u8]) -> Result<Self, DataError> {
        let ihdr = bytes
            .get(16..29)
            .ok_or_else(|| truncated("PNG header cut short"))?;
        let (width, height) = (be32(ihdr, 0), be32(ihdr, 4));
        let channels = match ihdr[9] {
            0 | 3 => 1,
            2 => 3,
            4 => 2,
            6 => 4,
            other => return Err(corrupt(format!("PNG colour type {other}"))),
        };
        let bits_per_pixel = channels * usize::from(ihdr[8]);
        let row_bytes = |w: usize| 1 + (w * bits_per_pixel).div_ceil(8);
        let passes = if ihdr[12] == 0 {
            vec![(height, row_bytes(width))]
        } else {
            // Adam7: (first column, first row, column step, row step) of each pass.
            const ADAM7: [(usize, usize, usize, usize); 7] = [
                (0, 0, 8, 8),
                (4, 0, 8, 8),
                (0, 4, 4, 8),
                (2, 0, 4, 4),
                (0, 2, 2, 4),
                (1, 0, 2, 2),
                (0, 1, 1, 2),
            ];
            ADAM7
                .iter()
                .map(|&(x0, y0, dx, dy)| {
                    let (w, h) = (
                        width.saturating_sub(x0).div_ceil(dx),
                        height.saturating_sub(y0).div_ceil(dy),
                    );
                    (if w == 0 { 0 } else { h }, row_bytes(w))
                })
                .collect()
        };
        Ok(Self { passes })
    }

    fn raw_len(&self) -> usize {
        self.passes
            .iter()
            .map(|&(rows, len)| rows.saturating_mul(len))
            .sum()
    }

    fn row_lengths(&self) -> impl Iterator<Item = usize> + '_ {
        self.passes
            .iter()
            .flat_map(|&(rows, len)| std::iter::repeat_n(len, rows))
    }
}

/// Inflates `stream` row by row as PIL's zlib decoder does: it stops once every row has
/// arrived or the stream ends with a row, and fails on a zlib error or a stream that ends inside
/// a row (PIL keeps reading, finds no more image data and calls the file truncated).
fn inflate_rows(stream: &[u8], layout: &RowLayout) -> Result<Vec<u8>, DataError> {
    let mut raw = vec![0u8; layout.raw_len()];
    let mut z = flate2::Decompress::new(true);
    let mut at = 0;
    for len in layout.row_lengths() {
        match next_row(&mut z, stream, &mut raw[at..at + len])? {
            Row::Full { stream_ended } => {
                at += len;
                if stream_ended {
                    break;
                }
            }
            Row::StreamEndedBefore if at > 0 => break,
            // PIL only checks for the end of the stream after a row, so it needs at least one.
            Row::StreamEndedBefore | Row::Partial => {
                return Err(truncated("PNG image data ends inside a row"));
            }
        }
    }
    // Rows never reached stay zero: filter type 0 and zero samples, as PIL leaves them.
    raw[at..].fill(0);
    Ok(raw)
}

enum Row {
    Full {
        stream_ended: bool,
    },
    /// zlib's stream had ended with the previous row (zlib would have said so with it).
    StreamEndedBefore,
    Partial,
}

fn next_row(z: &mut flate2::Decompress, stream: &[u8], row: &mut [u8]) -> Result<Row, DataError> {
    let mut filled = 0;
    loop {
        let (before_in, before_out) = (z.total_in(), z.total_out());
        let rest = stream.get(before_in as usize..).unwrap_or_default();
        let status = z
            .decompress(rest, &mut row[filled..], flate2::FlushDecompress::None)
            .map_err(|e| corrupt(format!("PNG image data: {e}")))?;
        filled += (z.total_out() - before_out) as usize;
        let ended = status == flate2::Status::StreamEnd;
        if filled == row.len() {
            return Ok(Row::Full {
                stream_ended: ended,
            });
        }
        if ended && filled == 0 {
            return Ok(Row::StreamEndedBefore);
        }
        let stuck = z.total_in() == before_in && z.total_out() == before_out;
        if ended || stuck {
            return Ok(Row::Partial);
        }
    }
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
        (ColorType::GrayscaleAlpha, BitDepth::Sixteen) => {
            DynamicImage::ImageLumaA16(ImageBuffer::from_raw(w, h, sixteen(buf)).ok_or_else(wrong)?)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×3 grey PNG whose zlib stream holds the first `rows` rows (value 7) and no IEND.
    fn grey_png_with_rows(rows: usize) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let ihdr = [0, 0, 0, 2, 0, 0, 0, 3, 8, 0, 0, 0, 0];
        push_chunk(&mut out, b"IHDR", &ihdr);
        let raw = [0u8, 7, 7].repeat(rows);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut z, &raw).unwrap();
        push_chunk(&mut out, b"IDAT", &z.finish().unwrap());
        out
    }

    #[test]
    fn a_stream_ending_with_a_row_leaves_the_missing_rows_black() {
        let img = decode(&grey_png_with_rows(2), 1 << 20).unwrap();
        assert_eq!(img.to_luma8().into_raw(), [7, 7, 7, 7, 0, 0]);
    }

    #[test]
    fn a_stream_ending_before_any_row_is_truncation() {
        let err = decode(&grey_png_with_rows(0), 1 << 20).unwrap_err();
        assert!(matches!(err, DataError::Truncated { .. }), "{err}");
    }
}
