//! Ground-truth masks: decode as grey, binarise, resize with PIL's bilinear, binarise again.

use super::decode::{decode_grey, Grey};
use super::resize::{resample, Filter};
use super::{DataError, DecodeLimits};

/// A ground-truth mask resized to the model's input side.
#[derive(Clone, PartialEq, Eq)]
pub struct Mask {
    /// Side `S` of the square mask.
    pub side: u32,
    /// `S·S` values, row-major: 1 where anomalous, 0 elsewhere.
    pub values: Vec<u8>,
    /// Width of the mask file, so callers can warn when it differs from its image's.
    pub original_width: u32,
    /// Height of the mask file.
    pub original_height: u32,
}

impl std::fmt::Debug for Mask {
    // Values are S² bytes: show the counts, not the bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Mask {{ side: {}, anomalous: {}, original: {}×{} }}",
            self.side,
            self.values.iter().filter(|&&v| v != 0).count(),
            self.original_width,
            self.original_height
        )
    }
}

/// Anomalous samples of a raw mask: at least half the type's range, or any non-zero value when
/// the whole mask stays below half range (a label map such as VisA's 0, 1, 2…, or a 0/1 mask).
fn binarise(g: &Grey) -> Vec<u8> {
    let half = g.max_value / 2 + 1;
    let max = g.values.iter().copied().max().unwrap_or(0);
    let threshold = if max < half { 1 } else { half };
    g.values
        .iter()
        .map(|&v| if v >= threshold { 255 } else { 0 })
        .collect()
}

/// Whether a mask marks no pixel anomalous by the rule of [`binarise`], judged on the raw
/// mask: a region too small to survive resizing still makes it non-empty.
pub(crate) fn is_empty_mask(bytes: &[u8], limits: &DecodeLimits) -> Result<bool, DataError> {
    let g = decode_grey(bytes, limits)?;
    Ok(binarise(&g).iter().all(|&v| v == 0))
}

/// Decodes a mask file of any supported format and depth and resizes it to `side`×`side`.
pub(crate) fn decode_mask(
    bytes: &[u8],
    side: u32,
    limits: &DecodeLimits,
) -> Result<Mask, DataError> {
    if side == 0 {
        return Err(DataError::InvalidArgument(
            "mask side must be positive".into(),
        ));
    }
    let g = decode_grey(bytes, limits)?;
    let bin = binarise(&g);
    let s = side as usize;
    let resized = resample(
        &bin,
        (g.width as usize, g.height as usize),
        1,
        (s, s),
        Filter::Bilinear,
    );
    Ok(Mask {
        side,
        values: resized.into_iter().map(|v| u8::from(v > 127)).collect(),
        original_width: g.width,
        original_height: g.height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(values: Vec<u16>, max_value: u16) -> Grey {
        Grey {
            width: values.len() as u32,
            height: 1,
            values,
            max_value,
        }
    }

    #[test]
    fn thresholds_follow_the_type_range() {
        assert_eq!(
            binarise(&grey(vec![0, 127, 128, 255], 255)),
            [0, 0, 255, 255]
        );
        assert_eq!(
            binarise(&grey(vec![0, 32767, 32768, 65535], u16::MAX)),
            [0, 0, 255, 255]
        );
    }

    #[test]
    fn label_maps_count_every_nonzero_value() {
        assert_eq!(binarise(&grey(vec![0, 1, 2, 0], 255)), [0, 255, 255, 0]);
        assert_eq!(binarise(&grey(vec![0, 300, 0], u16::MAX)), [0, 255, 0]);
        assert_eq!(binarise(&grey(vec![0, 0], 255)), [0, 0]);
    }
}
