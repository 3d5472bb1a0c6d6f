//! Pixel-level metrics over all pixels of a category, accumulated one image at a time.

use super::curve::{CompensatedSum, RocPr};
use super::label::label_into;
use super::sort::{f32_key, key_f32, radix_sort_by_key};
use super::{Confusion, MetricsError, PixelMetrics, ANOMALYCLIP_AUPRO_STEPS, AUPRO_FPR_LIMIT};

/// Collects anomaly maps and ground-truth masks of one category and computes its pixel-level
/// metrics (see [`PixelMetrics`]).
///
/// Memory: 4 bytes per normal pixel and 8 per anomalous pixel (its value and its region), plus
/// one label buffer of an image's size; [`PixelAccumulator::finish`] needs a scratch buffer as
/// large as the bigger of the two pixel sets while it sorts. Nothing is allocated per pixel.
#[derive(Debug, Clone)]
pub struct PixelAccumulator {
    height: usize,
    width: usize,
    images: usize,
    /// Order-preserving keys of the values of mask-0 pixels.
    normal: Vec<u32>,
    /// `key << 32 | region` for mask-nonzero pixels; `region` indexes `region_sizes`.
    anomalous: Vec<u64>,
    /// Pixel count of every region (8-connected component of a mask) seen so far.
    region_sizes: Vec<u32>,
    // Per-image scratch, reused.
    labels: Vec<u32>,
    local_sizes: Vec<u32>,
    stack: Vec<usize>,
}

impl PixelAccumulator {
    /// An accumulator for square `side × side` maps and masks.
    pub fn new(side: usize) -> Self {
        Self::with_shape(side, side)
    }

    /// An accumulator for row-major `height × width` maps and masks.
    pub fn with_shape(height: usize, width: usize) -> Self {
        Self {
            height,
            width,
            images: 0,
            normal: Vec::new(),
            anomalous: Vec::new(),
            region_sizes: Vec::new(),
            labels: Vec::new(),
            local_sizes: Vec::new(),
            stack: Vec::new(),
        }
    }

    /// Reserves room for `images` more images up front, so that the pixel store does not grow by
    /// doubling (which can transiently need twice its final size).
    pub fn reserve_images(&mut self, images: usize) {
        self.normal
            .reserve(images.saturating_mul(self.height * self.width));
    }

    /// Adds one image: its anomaly map and its mask, both row-major `height × width`. A mask
    /// pixel is anomalous when nonzero (masks are 0/1; 0/255 works the same). The mask's
    /// 8-connected regions are labelled here.
    ///
    /// # Errors
    /// [`MetricsError::LengthMismatch`] when a slice does not hold `height × width` values,
    /// [`MetricsError::NonFinite`] when the map holds NaN or an infinity. The accumulator is
    /// unchanged on error.
    pub fn add(&mut self, map: &[f32], mask: &[u8]) -> Result<(), MetricsError> {
        let n = self.height * self.width;
        if map.len() != n {
            return Err(MetricsError::LengthMismatch {
                what: "map",
                expected: n,
                got: map.len(),
            });
        }
        if mask.len() != n {
            return Err(MetricsError::LengthMismatch {
                what: "mask",
                expected: n,
                got: mask.len(),
            });
        }
        if let Some(index) = map.iter().position(|v| !v.is_finite()) {
            return Err(MetricsError::NonFinite { what: "map", index });
        }
        label_into(
            mask,
            self.height,
            self.width,
            &mut self.labels,
            &mut self.local_sizes,
            &mut self.stack,
        );
        // Region `k` of this image (labels are 1-based) becomes global region `offset + k - 1`.
        let offset = self.region_sizes.len();
        let anomalous_here: usize = self.local_sizes.iter().map(|&s| s as usize).sum();
        self.normal.reserve(n - anomalous_here);
        self.anomalous.reserve(anomalous_here);
        self.region_sizes.extend_from_slice(&self.local_sizes);
        for (&v, &label) in map.iter().zip(&self.labels) {
            let key = f32_key(v);
            if label == 0 {
                self.normal.push(key);
            } else {
                let region = (offset + label as usize - 1) as u64;
                debug_assert!(region <= u32::MAX as u64);
                self.anomalous.push((key as u64) << 32 | region);
            }
        }
        self.images += 1;
        Ok(())
    }

    /// Number of images added.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Number of pixels added.
    pub fn pixels(&self) -> usize {
        self.normal.len() + self.anomalous.len()
    }

    /// Number of anomalous regions (8-connected components over all masks) added.
    pub fn regions(&self) -> usize {
        self.region_sizes.len()
    }

    /// The pixel confusion matrix at `threshold` (a value is positive when `>=` it), over every
    /// pixel added so far.
    pub fn confusion_at(&self, threshold: f32) -> Confusion {
        let key = f32_key(threshold);
        let mut c = Confusion::default();
        let flagged_normal = self.normal.iter().filter(|&&k| k >= key).count() as u64;
        c.false_positives = flagged_normal;
        c.true_negatives = self.normal.len() as u64 - flagged_normal;
        let found = self
            .anomalous
            .iter()
            .filter(|&&x| (x >> 32) as u32 >= key)
            .count() as u64;
        c.true_positives = found;
        c.false_negatives = self.anomalous.len() as u64 - found;
        c
    }

    /// Computes the category's pixel metrics, consuming the accumulator.
    pub fn finish(self) -> PixelMetrics {
        let Self {
            mut normal,
            mut anomalous,
            region_sizes,
            ..
        } = self;
        radix_sort_by_key(&mut normal, |k| k);
        radix_sort_by_key(&mut anomalous, |x| (x >> 32) as u32);

        let (auroc, ap, (f1_max, f1_threshold), aupro_mvtec) =
            roc_pr_and_mvtec(&normal, &anomalous, &region_sizes);
        let aupro_anomalyclip = aupro_anomalyclip(&normal, &anomalous, &region_sizes);
        PixelMetrics {
            auroc,
            ap,
            f1_max,
            f1_threshold,
            aupro_anomalyclip,
            aupro_mvtec,
        }
    }
}

/// Trapezoidal area under a curve given point by point with non-decreasing `x`, starting at
/// `(0, 0)`, up to `x = limit`, with linear interpolation of the segment that crosses it (the
/// `trapezoid(x, y, x_max)` of MVTec AD's evaluation code).
struct LimitedTrapezoid {
    limit: f64,
    prev_x: f64,
    prev_y: f64,
    area: CompensatedSum,
    done: bool,
}

impl LimitedTrapezoid {
    fn new(limit: f64) -> Self {
        Self {
            limit,
            prev_x: 0.0,
            prev_y: 0.0,
            area: CompensatedSum::default(),
            done: false,
        }
    }

    #[inline]
    fn push(&mut self, x: f64, y: f64) {
        if self.done {
            return;
        }
        if x <= self.limit {
            self.area.add(0.5 * (y + self.prev_y) * (x - self.prev_x));
            self.prev_x = x;
            self.prev_y = y;
        } else {
            if self.prev_x < self.limit {
                let y_at = self.prev_y
                    + (y - self.prev_y) * (self.limit - self.prev_x) / (x - self.prev_x);
                self.area
                    .add(0.5 * (y_at + self.prev_y) * (self.limit - self.prev_x));
            }
            self.done = true;
        }
    }
}

/// AUROC, AP, (F1-max, its threshold) and MVTec AD's AUPRO from [`roc_pr_and_mvtec`].
type WalkMetrics = (
    Option<f64>,
    Option<f64>,
    (Option<f64>, Option<f32>),
    Option<f64>,
);

/// One walk over the distinct values, highest first, merging the two sorted pixel sets: ROC/PR
/// counts for AUROC, AP and F1-max, and MVTec AD's exact PRO curve (positive when `>=` the
/// threshold, PRO = Σ over covered region pixels of 1/region size, divided by the region count).
fn roc_pr_and_mvtec(normal: &[u32], anomalous: &[u64], region_sizes: &[u32]) -> WalkMetrics {
    let (n_normal, n_anomalous, n_regions) = (normal.len(), anomalous.len(), region_sizes.len());
    let mut curve = RocPr::new(n_anomalous as u64, n_normal as u64);
    let with_pro = n_normal > 0 && n_regions > 0;
    let inv_size: Vec<f64> = region_sizes.iter().map(|&s| 1.0 / s as f64).collect();
    let mut pro_sum = CompensatedSum::default();
    let mut trapezoid = LimitedTrapezoid::new(AUPRO_FPR_LIMIT);
    let anomalous_key = |x: u64| (x >> 32) as u32;

    let (mut i, mut j) = (n_normal, n_anomalous);
    let (mut tp, mut fp) = (0u64, 0u64);
    while i > 0 || j > 0 {
        let key = match (i > 0, j > 0) {
            (true, true) => normal[i - 1].max(anomalous_key(anomalous[j - 1])),
            (true, false) => normal[i - 1],
            _ => anomalous_key(anomalous[j - 1]),
        };
        while i > 0 && normal[i - 1] == key {
            fp += 1;
            i -= 1;
        }
        while j > 0 && anomalous_key(anomalous[j - 1]) == key {
            tp += 1;
            pro_sum.add(inv_size[anomalous[j - 1] as u32 as usize]);
            j -= 1;
        }
        curve.push(tp, fp, key);
        if with_pro {
            let fpr = fp as f64 / n_normal as f64;
            let pro = (pro_sum.value() / n_regions as f64).min(1.0);
            trapezoid.push(fpr, pro);
        }
    }
    let (auroc, ap, f1_max, f1_threshold) = curve.finish();
    let aupro_mvtec = with_pro.then(|| {
        trapezoid.push(1.0, 1.0);
        trapezoid.area.value() / AUPRO_FPR_LIMIT
    });
    (auroc, ap, (f1_max, f1_threshold), aupro_mvtec)
}

/// AnomalyCLIP's AUPRO: 200 thresholds `min + i·(max − min)/200` (in `f64`), positive when
/// `> threshold`, PRO the mean over regions of the covered fraction, points with FPR < 0.3 kept,
/// their FPRs rescaled min–max to [0, 1], trapezoidal area (`sklearn.metrics.auc`). Absent when
/// no normal pixel or no region exists, when fewer than two points are kept, or when the kept
/// FPRs are all equal (the rescaling divides 0 by 0 there).
fn aupro_anomalyclip(normal: &[u32], anomalous: &[u64], region_sizes: &[u32]) -> Option<f64> {
    if normal.is_empty() || region_sizes.is_empty() {
        return None;
    }
    let anomalous_value = |x: u64| key_f32((x >> 32) as u32) as f64;
    let value = |k: u32| key_f32(k) as f64;
    // Both sets are nonempty (a region has at least one pixel).
    let min = value(normal[0]).min(anomalous_value(anomalous[0]));
    let max = value(normal[normal.len() - 1]).max(anomalous_value(anomalous[anomalous.len() - 1]));
    let steps = ANOMALYCLIP_AUPRO_STEPS;
    let thresholds: Vec<f64> = (0..steps)
        .map(|i| min + (i as f64) * (max - min) / steps as f64)
        .collect();

    let n_normal = normal.len() as f64;
    let fprs: Vec<f64> = thresholds
        .iter()
        .map(|&t| {
            let at_most = normal.partition_point(|&k| value(k) <= t);
            (normal.len() - at_most) as f64 / n_normal
        })
        .collect();
    // FPR is non-increasing in the threshold, so the kept points are a suffix of indices.
    let kept: Vec<usize> = (0..steps).filter(|&i| fprs[i] < AUPRO_FPR_LIMIT).collect();
    if kept.len() < 2 {
        return None;
    }
    let fmin = kept.iter().map(|&i| fprs[i]).fold(f64::INFINITY, f64::min);
    let fmax = kept
        .iter()
        .map(|&i| fprs[i])
        .fold(f64::NEG_INFINITY, f64::max);
    if fmax <= fmin {
        return None;
    }

    // Per-region covered counts, growing as the threshold falls.
    let mut covered = vec![0u32; region_sizes.len()];
    let mut pros = vec![0.0f64; steps];
    let mut j = anomalous.len();
    for i in (kept[0]..steps).rev() {
        let t = thresholds[i];
        while j > 0 && anomalous_value(anomalous[j - 1]) > t {
            covered[anomalous[j - 1] as u32 as usize] += 1;
            j -= 1;
        }
        let mut sum = CompensatedSum::default();
        for (&c, &s) in covered.iter().zip(region_sizes) {
            sum.add(c as f64 / s as f64);
        }
        pros[i] = sum.value() / region_sizes.len() as f64;
    }

    let x = |i: usize| (fprs[i] - fmin) / (fmax - fmin);
    let mut area = 0.0;
    for w in kept.windows(2) {
        let (a, b) = (w[0], w[1]);
        // x falls with the index; sklearn's auc flips the sign of such a curve's area.
        area += (x(a) - x(b)) * (pros[a] + pros[b]) / 2.0;
    }
    Some(area)
}
