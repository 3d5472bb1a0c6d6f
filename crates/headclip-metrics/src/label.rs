//! 8-connected component labelling of binary masks, as `skimage.measure.label(mask,
//! connectivity=2)` does: every nonzero pixel belongs to exactly one region, two nonzero pixels
//! that touch by an edge or a corner share a region, and regions are numbered from 1 in the
//! raster order of their first pixel (0 is background).

/// The regions of one mask.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Components {
    /// Row-major, one entry per pixel: 0 for background, `1..=sizes.len()` for a region.
    pub labels: Vec<u32>,
    /// Pixel count of region `k + 1` at index `k`.
    pub sizes: Vec<u32>,
}

impl Components {
    /// Number of regions.
    pub fn count(&self) -> usize {
        self.sizes.len()
    }
}

/// Labels the 8-connected regions of the nonzero pixels of a row-major `height × width` mask.
///
/// # Panics
/// When `mask.len() != height * width`.
pub fn connected_components(mask: &[u8], height: usize, width: usize) -> Components {
    let mut out = Components::default();
    let mut stack = Vec::new();
    label_into(
        mask,
        height,
        width,
        &mut out.labels,
        &mut out.sizes,
        &mut stack,
    );
    out
}

/// [`connected_components`] into caller-owned buffers, so that labelling many masks reuses the
/// same memory. `labels` and `sizes` are overwritten; `stack` is scratch.
pub(crate) fn label_into(
    mask: &[u8],
    height: usize,
    width: usize,
    labels: &mut Vec<u32>,
    sizes: &mut Vec<u32>,
    stack: &mut Vec<usize>,
) {
    let n = height * width;
    assert_eq!(
        mask.len(),
        n,
        "mask has {} pixels, expected {height}×{width}",
        mask.len()
    );
    labels.clear();
    labels.resize(n, 0);
    sizes.clear();
    stack.clear();
    for start in 0..n {
        if mask[start] == 0 || labels[start] != 0 {
            continue;
        }
        sizes.push(0);
        let label = sizes.len() as u32;
        labels[start] = label;
        stack.push(start);
        let mut size = 0u32;
        while let Some(p) = stack.pop() {
            size += 1;
            let (y, x) = (p / width, p % width);
            let y0 = y.saturating_sub(1);
            let y1 = (y + 1).min(height - 1);
            let x0 = x.saturating_sub(1);
            let x1 = (x + 1).min(width - 1);
            for ny in y0..=y1 {
                let row = ny * width;
                for nx in x0..=x1 {
                    let q = row + nx;
                    if mask[q] != 0 && labels[q] == 0 {
                        labels[q] = label;
                        stack.push(q);
                    }
                }
            }
        }
        *sizes.last_mut().expect("pushed above") = size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagonal_touch_is_one_region() {
        #[rustfmt::skip]
        let mask = [
            1, 0, 0, 0,
            0, 1, 0, 1,
            0, 0, 0, 1,
            1, 1, 0, 0,
        ];
        let c = connected_components(&mask, 4, 4);
        assert_eq!(c.sizes, vec![2, 2, 2]);
        #[rustfmt::skip]
        let expected = vec![
            1, 0, 0, 0,
            0, 1, 0, 2,
            0, 0, 0, 2,
            3, 3, 0, 0,
        ];
        assert_eq!(c.labels, expected);
    }

    #[test]
    fn empty_and_full() {
        assert_eq!(connected_components(&[], 0, 0).count(), 0);
        assert_eq!(connected_components(&[0; 6], 2, 3).count(), 0);
        let c = connected_components(&[255; 6], 3, 2);
        assert_eq!(c.sizes, vec![6]);
    }
}
