//! Images and masks from bytes to model input, reproducing PIL's pre-processing.
//!
//! The pipeline of the spec's "Pre-processing" section:
//! 1. [`decode_rgb`]: the format comes from the bytes, never the file name; pixels become 8-bit
//!    RGB as PIL's `convert("RGB")` makes them (grey replicated, palette expanded, alpha dropped
//!    without compositing, CMYK converted, 16-bit reduced to its high byte). The header's size is
//!    checked against [`DecodeLimits`] before anything is decoded.
//! 2. [`resize_bicubic`]: PIL's antialiased `Image.resize((S, S), BICUBIC)`, bit-exact with
//!    Pillow 13.
//! 3. [`normalize`]: scale to [0, 1], normalise with the backbone's mean and std (CLIP's unless
//!    its config names others, see [`Normalization`]), lay out as CHW.
//!
//! [`preprocess`] chains 2 and 3, and [`Preprocessor::prepare`] all three for a file, encoded
//! bytes or decoded pixels: the stage every entry point shares. Masks go through
//! [`decode_mask`]. The `read_*` helpers take a path and name it in their errors.
//!
//! JPEGs decode with libjpeg-turbo's arithmetic (see `jpeg.rs`), so they match PIL too. Nothing
//! here depends on libtorch.

mod decode;
mod jpeg;
mod mask;
mod png;
mod prepare;
mod resize;

use std::fmt;
use std::path::{Path, PathBuf};

pub use mask::Mask;
pub use prepare::{ImageSource, PreparedImage, Preprocessor};

/// CLIP's per-channel mean, for RGB in [0, 1].
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation, for RGB in [0, 1].
// The spec's digits, verbatim, though f32 keeps fewer.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Per-channel mean and standard deviation for RGB in [0, 1]: CLIP's, or what a checkpoint's
/// config names (OpenCLIP's `preprocess_cfg`, Hugging Face's `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// OpenAI CLIP's constants.
    pub const CLIP: Normalization = Normalization {
        mean: CLIP_MEAN,
        std: CLIP_STD,
    };
}

impl Default for Normalization {
    fn default() -> Self {
        Self::CLIP
    }
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel (HWC).
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width · height · 3` bytes.
    pub pixels: Vec<u8>,
}

impl fmt::Debug for RgbImage {
    // Pixels are megabytes: show the size, not the bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RgbImage {{ {}×{}, {} bytes }}",
            self.width,
            self.height,
            self.pixels.len()
        )
    }
}

impl RgbImage {
    /// Wraps pixels, checking that their number matches the size.
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self, DataError> {
        let img = Self {
            width,
            height,
            pixels,
        };
        img.check()?;
        Ok(img)
    }

    /// Whether the pixels match the size.
    pub fn check(&self) -> Result<(), DataError> {
        let want = self.width as usize * self.height as usize * 3;
        if self.pixels.len() != want {
            return Err(DataError::InvalidArgument(format!(
                "{}×{} RGB image needs {want} bytes, has {}",
                self.width,
                self.height,
                self.pixels.len()
            )));
        }
        Ok(())
    }

    fn assert_consistent(&self) {
        if let Err(e) = self.check() {
            panic!("{e}");
        }
    }
}

/// Limits applied before decoding, against decompression bombs and files that make the
/// decoder work far beyond their size. Each is checked from the file's structure (header,
/// JPEG markers) before any pixel is decoded; build with `..DecodeLimits::default()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest `width · height` accepted, read from the header before any decoding.
    pub max_pixels: u64,
    /// Most JPEG scans accepted. Progressive encoders write about 10 (libjpeg's default
    /// script: 10 for colour, 6 for grey); a file with thousands is an attack.
    pub max_scans: u32,
    /// Most 8×8 blocks the JPEG scans may visit, summed over scans: the entropy decoder's
    /// work. Other formats' work is bounded by `max_pixels` and the memory it implies.
    pub max_block_scans: u64,
}

impl DecodeLimits {
    /// Refuses a width × height over `max_pixels`, for encoded headers and decoded pixels alike.
    pub fn check_size(&self, width: u32, height: u32) -> Result<(), DataError> {
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(DataError::TooLarge {
                width,
                height,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }
}

impl Default for DecodeLimits {
    /// 64 megapixels: ten times the largest image in the published benchmarks. 100 scans:
    /// ten times libjpeg's progressive script. 32 Mi block-scans: 2.3 times what libjpeg's
    /// progressive script visits on the largest accepted image (64 MP, 4:4:4 colour: 3 Mi
    /// blocks, 14 Mi block-scans); a baseline image visits each block once.
    fn default() -> Self {
        Self {
            max_pixels: 64 * 1024 * 1024,
            max_scans: 100,
            max_block_scans: 32 * 1024 * 1024,
        }
    }
}

/// What decoding an image will cost, read from its structure without decoding: what a server
/// can admit or refuse before giving the work a thread. See [`decode_cost`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeCost {
    /// The format the bytes announce.
    pub format: ImageFormat,
    /// Width from the header.
    pub width: u32,
    /// Height from the header.
    pub height: u32,
    /// JPEG scans (1 for the other formats).
    pub scans: u32,
    /// 8×8 blocks visited summed over scans, for JPEG; for the other formats, the pixels in
    /// blocks of 64, so that the figure compares across formats.
    pub block_scans: u64,
}

/// An image format recognised from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// PNG, any bit depth and colour type.
    Png,
    /// JPEG (baseline, extended or progressive, Huffman-coded, 8-bit).
    Jpeg,
    /// GIF (first frame).
    Gif,
    /// Windows bitmap.
    Bmp,
    /// TIFF (first page).
    Tiff,
    /// WebP.
    WebP,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Png => "PNG",
            Self::Jpeg => "JPEG",
            Self::Gif => "GIF",
            Self::Bmp => "BMP",
            Self::Tiff => "TIFF",
            Self::WebP => "WebP",
        })
    }
}

/// Why an image or mask could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// No bytes at all.
    #[error("empty file (0 bytes), not an image")]
    Empty,
    /// The bytes start like no supported image format.
    #[error("not an image: the file looks like {looks_like}")]
    UnknownFormat {
        /// What the bytes look like instead: "text", "a ZIP archive", "unknown binary"...
        looks_like: &'static str,
    },
    /// The header declares more pixels than [`DecodeLimits::max_pixels`]; nothing was decoded.
    #[error(
        "image is {width}×{height} pixels, over the limit of {max_pixels} pixels; refused \
         before decoding (raise DecodeLimits::max_pixels to accept it)"
    )]
    TooLarge {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The limit in force.
        max_pixels: u64,
    },
    /// The file's structure asks more decoding work than [`DecodeLimits`] allows; nothing was
    /// decoded.
    #[error(
        "image needs {needed} {what}, over the limit of {max}; refused before decoding (raise \
         DecodeLimits::{limit} to accept it)"
    )]
    TooMuchWork {
        /// What is counted: "JPEG scans", "8×8 block visits (blocks × scans)".
        what: &'static str,
        /// The [`DecodeLimits`] field in force.
        limit: &'static str,
        /// What the file asks.
        needed: u64,
        /// The limit's value.
        max: u64,
    },
    /// The data ends before the image does.
    #[error("truncated {format} data: {detail}")]
    Truncated {
        /// The format the bytes announced.
        format: ImageFormat,
        /// What was missing.
        detail: String,
    },
    /// The data breaks its format.
    #[error("corrupt {format} data: {detail}")]
    Corrupt {
        /// The format the bytes announced.
        format: ImageFormat,
        /// What is wrong.
        detail: String,
    },
    /// A valid file of a variant that is not supported (e.g. arithmetic-coded JPEG).
    #[error("unsupported {format} variant: {detail}")]
    Unsupported {
        /// The format the bytes announced.
        format: ImageFormat,
        /// Which variant.
        detail: String,
    },
    /// A caller's argument is unusable (e.g. side 0, pixels not matching the size).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Encoding an image failed.
    #[error("cannot encode PNG: {0}")]
    Encode(String),
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file was read but its content failed; `error` says how.
    #[error("{}: {error}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The decoding error.
        error: Box<DataError>,
    },
}

/// Recognises the image format from the magic bytes (file names lie).
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    decode::sniff(bytes)
}

/// What bytes that are no image look like ("text", "a PDF", "HTML", "unknown binary"...), for
/// messages.
pub(crate) fn looks_like(bytes: &[u8]) -> &'static str {
    decode::looks_like(bytes)
}

/// Whether the bytes start like a supported image format (nothing is decoded).
pub fn is_image(bytes: &[u8]) -> bool {
    decode::sniff(bytes).is_some()
}

/// Reads the format and pixel size from the header alone.
pub fn image_dimensions(bytes: &[u8]) -> Result<(ImageFormat, u32, u32), DataError> {
    decode::dimensions(bytes)
}

/// Reads what decoding `bytes` will cost from their structure alone (header; for JPEG, a pass
/// over the markers that decodes nothing, linear in the file's length), and checks it against
/// `limits`: the error is the one [`decode_rgb`] would give before decoding. A server can call
/// it to refuse or admit an upload before handing it to a decoding thread.
pub fn decode_cost(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodeCost, DataError> {
    decode::decode_cost(bytes, limits)
}

/// Decodes any supported image to 8-bit RGB, as PIL's `convert("RGB")` does.
///
/// Refuses images larger than `limits`, or asking more work, before decoding. Never panics on bad input: empty,
/// truncated, corrupt or non-image bytes give a [`DataError`] naming the problem.
pub fn decode_rgb(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DataError> {
    decode::decode_rgb(bytes, limits)
}

fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn in_file<T>(path: &Path, r: Result<T, DataError>) -> Result<T, DataError> {
    r.map_err(|e| DataError::File {
        path: path.to_path_buf(),
        error: Box::new(e),
    })
}

/// [`decode_rgb`] on a file; errors name the file.
pub fn read_rgb(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, DataError> {
    let bytes = read_file(path)?;
    in_file(path, decode_rgb(&bytes, limits))
}

/// Resizes to `side`×`side` exactly as PIL's `resize((side, side), Image.BICUBIC)` does
/// (Pillow 13, whose pass order differs from older releases for some shapes); an image already
/// that size is returned unchanged.
///
/// # Panics
/// If `side` is 0 or the pixels do not match the image's size.
pub fn resize_bicubic(img: &RgbImage, side: u32) -> RgbImage {
    img.assert_consistent();
    assert!(side > 0, "resize side must be positive");
    let pixels = resize::resample(
        &img.pixels,
        (img.width as usize, img.height as usize),
        3,
        (side as usize, side as usize),
        resize::Filter::Bicubic,
    );
    RgbImage {
        width: side,
        height: side,
        pixels,
    }
}

/// Scales to [0, 1] and normalises with `norm`; returns CHW floats, `3 · height · width` of them.
///
/// # Panics
/// If the pixels do not match the image's size.
pub fn normalize(img: &RgbImage, norm: &Normalization) -> Vec<f32> {
    img.assert_consistent();
    let n = img.width as usize * img.height as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, px) in img.pixels.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + i] = (f32::from(px[c]) / 255.0 - norm.mean[c]) / norm.std[c];
        }
    }
    out
}

/// [`normalize`] with CLIP's constants.
///
/// # Panics
/// As [`normalize`].
pub fn normalize_clip(img: &RgbImage) -> Vec<f32> {
    normalize(img, &Normalization::CLIP)
}

/// The model input for a decoded image: [`resize_bicubic`] then [`normalize_clip`].
///
/// # Panics
/// As [`resize_bicubic`].
pub fn preprocess(img: &RgbImage, side: u32) -> Vec<f32> {
    normalize_clip(&resize_bicubic(img, side))
}

/// Decodes a ground-truth mask and resizes it to `side`×`side` (see the spec's "Mask" rule).
///
/// Any format and depth, decoded as grey (PIL's `convert("L")`; 16-bit grey stays 16-bit). A
/// sample is anomalous when it is at least half the type's range (≥ 128, or ≥ 32768 for 16-bit),
/// which also removes JPEG noise; but when the mask's maximum is below half range (a label map
/// such as VisA's 0, 1, 2…) every non-zero sample is. The 0/255 result is resized with PIL's
/// bilinear and kept where > 127.
pub fn decode_mask(bytes: &[u8], side: u32, limits: &DecodeLimits) -> Result<Mask, DataError> {
    mask::decode_mask(bytes, side, limits)
}

/// Whether a mask marks no pixel anomalous (all below the [`decode_mask`] rule's threshold),
/// before resizing. Decodes the whole mask.
pub(crate) fn is_empty_mask(bytes: &[u8], limits: &DecodeLimits) -> Result<bool, DataError> {
    mask::is_empty_mask(bytes, limits)
}

/// [`decode_mask`] on a file; errors name the file.
pub fn read_mask(path: &Path, side: u32, limits: &DecodeLimits) -> Result<Mask, DataError> {
    let bytes = read_file(path)?;
    in_file(path, decode_mask(&bytes, side, limits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_is_chw() {
        let img = RgbImage::new(2, 1, vec![0, 128, 255, 255, 255, 255]).unwrap();
        let t = normalize_clip(&img);
        assert_eq!(t.len(), 6);
        assert!((t[0] - (0.0 - CLIP_MEAN[0]) / CLIP_STD[0]).abs() < 1e-6);
        assert!((t[1] - (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]).abs() < 1e-6);
        assert!((t[2] - (128.0 / 255.0 - CLIP_MEAN[1]) / CLIP_STD[1]).abs() < 1e-6);
        assert!((t[4] - (1.0 - CLIP_MEAN[2]) / CLIP_STD[2]).abs() < 1e-6);
    }

    #[test]
    fn same_size_is_not_resampled() {
        let img = RgbImage::new(2, 2, (0..12).collect()).unwrap();
        assert_eq!(resize_bicubic(&img, 2), img);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
    }
}
