//! The one decode → pre-process stage: from a file, encoded bytes or decoded pixels to the
//! model's input. Every entry point (predict, test, serve, train, the Python package) goes
//! through [`Preprocessor::prepare`], so an image is read the same way wherever it comes from.

use std::path::PathBuf;

use super::{decode_rgb, normalize, read_file, resize_bicubic, sniff_format, DataError};
use super::{DecodeLimits, ImageFormat, Normalization, RgbImage};

/// Where an image comes from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// A file, read whole; errors name it.
    Path(PathBuf),
    /// Encoded bytes of any supported format (sniffed, never taken from a name).
    Bytes(Vec<u8>),
    /// Pixels already decoded.
    Decoded(RgbImage),
}

impl From<PathBuf> for ImageSource {
    fn from(path: PathBuf) -> Self {
        ImageSource::Path(path)
    }
}

impl From<Vec<u8>> for ImageSource {
    fn from(bytes: Vec<u8>) -> Self {
        ImageSource::Bytes(bytes)
    }
}

impl From<RgbImage> for ImageSource {
    fn from(image: RgbImage) -> Self {
        ImageSource::Decoded(image)
    }
}

/// An image ready for the model.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// `3 · S · S` normalised floats, CHW.
    pub pixels: Vec<f32>,
    /// The image's width as decoded.
    pub width: u32,
    /// The image's height as decoded.
    pub height: u32,
    /// The encoded format; `None` for decoded pixels.
    pub format: Option<ImageFormat>,
    /// The decoded image, when [`Preprocessor::prepare`] was asked to keep it (for overlays).
    pub original: Option<RgbImage>,
}

/// Decodes and pre-processes images for a model of side S.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocessor {
    /// The model's input side S.
    pub side: u32,
    /// Checked before anything is decoded.
    pub limits: DecodeLimits,
    /// The backbone's mean and std.
    pub normalization: Normalization,
}

impl Preprocessor {
    /// Decodes `source` (checking its header against the limits first), resizes it to S×S as
    /// PIL does and normalises it; keeps the decoded image when `keep_original` is set.
    ///
    /// # Errors
    /// The file cannot be read, or the bytes are not a supported image (errors from a path name
    /// the file).
    pub fn prepare(
        &self,
        source: ImageSource,
        keep_original: bool,
    ) -> Result<PreparedImage, DataError> {
        self.check_side()?;
        match source {
            ImageSource::Path(path) => {
                let bytes = read_file(&path)?;
                self.prepare_encoded(&bytes, keep_original)
                    .map_err(|error| DataError::File {
                        path,
                        error: Box::new(error),
                    })
            }
            ImageSource::Bytes(bytes) => self.prepare_encoded(&bytes, keep_original),
            ImageSource::Decoded(image) => {
                image.check()?;
                if image.width == 0 || image.height == 0 {
                    return Err(DataError::InvalidArgument(format!(
                        "a {}×{} image has no pixels",
                        image.width, image.height
                    )));
                }
                self.limits.check_size(image.width, image.height)?;
                Ok(self.finish(image, None, keep_original))
            }
        }
    }

    /// [`Preprocessor::prepare`] for encoded bytes the caller keeps (an HTTP body), without
    /// copying them into an [`ImageSource`].
    pub fn prepare_encoded(
        &self,
        bytes: &[u8],
        keep_original: bool,
    ) -> Result<PreparedImage, DataError> {
        self.check_side()?;
        let image = decode_rgb(bytes, &self.limits)?;
        Ok(self.finish(image, sniff_format(bytes), keep_original))
    }

    fn check_side(&self) -> Result<(), DataError> {
        if self.side == 0 {
            return Err(DataError::InvalidArgument("model side 0".into()));
        }
        Ok(())
    }

    fn finish(
        &self,
        image: RgbImage,
        format: Option<ImageFormat>,
        keep_original: bool,
    ) -> PreparedImage {
        PreparedImage {
            pixels: normalize(&resize_bicubic(&image, self.side), &self.normalization),
            width: image.width,
            height: image.height,
            format,
            original: keep_original.then_some(image),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::preprocess;

    fn checker(side: u32) -> RgbImage {
        let pixels = (0..side * side)
            .flat_map(|i| if i % 2 == 0 { [255u8; 3] } else { [0u8; 3] })
            .collect();
        RgbImage::new(side, side, pixels).unwrap()
    }

    #[test]
    fn decoded_pixels_skip_decoding_but_not_resizing() {
        let pre = Preprocessor {
            side: 4,
            limits: DecodeLimits::default(),
            normalization: Normalization::CLIP,
        };
        let img = checker(8);
        let prepared = pre.prepare(img.clone().into(), true).unwrap();
        assert_eq!(prepared.pixels, preprocess(&img, 4));
        assert_eq!(
            (prepared.width, prepared.height, prepared.format),
            (8, 8, None)
        );
        assert_eq!(prepared.original, Some(img));
    }

    #[test]
    fn path_errors_name_the_file_and_bad_pixels_are_refused() {
        let pre = Preprocessor {
            side: 4,
            limits: DecodeLimits::default(),
            normalization: Normalization::CLIP,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.png");
        std::fs::write(&path, b"hello").unwrap();
        let err = pre.prepare(path.clone().into(), false).unwrap_err();
        assert!(err.to_string().contains("notes.png"), "{err}");
        let bad = RgbImage {
            width: 2,
            height: 2,
            pixels: vec![0; 5],
        };
        assert!(pre.prepare(bad.into(), false).is_err());
    }
}
