//! ROC and precision–recall summaries from the cumulative confusion counts at each distinct
//! threshold, and the image-level entry point.

use super::sort::{f32_key, key_f32};
use super::{ImageMetrics, MetricsError};

/// Neumaier's compensated sum: long sums of small terms stay accurate to a few ulps.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CompensatedSum {
    sum: f64,
    compensation: f64,
}

impl CompensatedSum {
    #[inline]
    pub(crate) fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    #[inline]
    pub(crate) fn value(&self) -> f64 {
        self.sum + self.compensation
    }
}

/// AUROC, AP and F1-max from a walk over the distinct thresholds in descending order.
///
/// `push(tp, fp)` takes the numbers of positives and negatives scoring `>=` the next threshold
/// (cumulative, non-decreasing). The curve starts at `(0, 0)` implicitly and must end at
/// `(positives, negatives)`, which the walks in this module guarantee.
#[derive(Debug, Clone)]
pub(crate) struct RocPr {
    positives: u64,
    negatives: u64,
    prev_tp: u64,
    prev_fp: u64,
    /// Twice the un-normalised ROC area: Σ Δfp · (tp + tp_prev), exact in integers.
    roc_area2: u128,
    ap: CompensatedSum,
    /// The F1-max point so far: `(tp, fp, threshold key)`.
    best: Option<(u64, u64, u32)>,
}

impl RocPr {
    pub(crate) fn new(positives: u64, negatives: u64) -> Self {
        Self {
            positives,
            negatives,
            prev_tp: 0,
            prev_fp: 0,
            roc_area2: 0,
            ap: CompensatedSum::default(),
            best: None,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, tp: u64, fp: u64, key: u32) {
        debug_assert!(tp >= self.prev_tp && fp >= self.prev_fp);
        let dfp = fp - self.prev_fp;
        let dtp = tp - self.prev_tp;
        self.roc_area2 += dfp as u128 * (tp + self.prev_tp) as u128;
        if tp > 0 {
            // precision_recall_curve's point at this threshold: P = tp/(tp+fp), R = tp/positives.
            let precision = tp as f64 / (tp + fp) as f64;
            if dtp > 0 {
                // (R_n − R_{n−1}) · P_n
                self.ap.add(dtp as f64 / self.positives as f64 * precision);
            }
            // Thresholds fall as the walk goes on: `>=` hands a tie in F1 to the lowest
            // threshold, as numpy's argmax does over sklearn's ascending thresholds.
            let better = match self.best {
                Some((btp, bfp, _)) => {
                    f1_cmp(tp, fp, btp, bfp, self.positives) != std::cmp::Ordering::Less
                }
                None => true,
            };
            if better {
                self.best = Some((tp, fp, key));
            }
        }
        self.prev_tp = tp;
        self.prev_fp = fp;
    }

    /// `(auroc, ap, f1_max, f1_threshold)`, all absent unless both classes are present.
    pub(crate) fn finish(&self) -> (Option<f64>, Option<f64>, Option<f64>, Option<f32>) {
        if self.positives == 0 || self.negatives == 0 {
            return (None, None, None, None);
        }
        debug_assert_eq!(
            (self.prev_tp, self.prev_fp),
            (self.positives, self.negatives)
        );
        let denom = 2 * self.positives as u128 * self.negatives as u128;
        let auroc = self.roc_area2 as f64 / denom as f64;
        // 2PR/(P+R) simplifies to 2tp/(tp + fp + positives): one rounding.
        let (f1_max, threshold) = match self.best {
            Some((tp, fp, key)) => (
                (2 * tp) as f64 / (tp + fp + self.positives) as f64,
                key_f32(key),
            ),
            None => (0.0, f32::NAN),
        };
        (
            Some(auroc),
            Some(self.ap.value()),
            Some(f1_max),
            threshold.is_finite().then_some(threshold),
        )
    }
}

/// Compares the F1 of two points exactly: `2a/(a + b + P)` against `2c/(c + d + P)` by cross
/// multiplication in integers, so that equal F1s are seen as ties whatever rounding would say.
fn f1_cmp(a: u64, b: u64, c: u64, d: u64, positives: u64) -> std::cmp::Ordering {
    let left = a as u128 * (c + d + positives) as u128;
    let right = c as u128 * (a + b + positives) as u128;
    left.cmp(&right)
}

/// Scores and labels pair up one to one, and every score is finite.
pub(crate) fn check_scores(scores: &[f32], labels: &[bool]) -> Result<(), MetricsError> {
    if scores.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            what: "labels",
            expected: scores.len(),
            got: labels.len(),
        });
    }
    if let Some(index) = scores.iter().position(|s| !s.is_finite()) {
        return Err(MetricsError::NonFinite {
            what: "scores",
            index,
        });
    }
    Ok(())
}

/// Image-level AUROC, AP and F1-max of `scores` against `labels` (`true` = anomalous), exactly
/// as scikit-learn's `roc_auc_score`, `average_precision_score` and the maximum F1 over
/// `precision_recall_curve` compute them: every distinct score is a threshold, a sample is
/// predicted anomalous when its score is `>=` the threshold, tied scores move together, the ROC
/// area is the trapezoid rule and AP is Σ (R_n − R_{n−1}) P_n without interpolation.
///
/// Empty input or a single class gives all three absent (scikit-learn raises there). Constant
/// scores with both classes are defined, as in scikit-learn: AUROC 0.5, AP the fraction of
/// positives, F1-max `2π/(1 + π)` for that fraction `π`.
///
/// # Errors
/// [`MetricsError::LengthMismatch`] when the slices differ in length,
/// [`MetricsError::NonFinite`] when a score is NaN or infinite (scikit-learn rejects those too).
pub fn image_metrics(scores: &[f32], labels: &[bool]) -> Result<ImageMetrics, MetricsError> {
    check_scores(scores, labels)?;
    let mut pairs: Vec<(u32, bool)> = scores
        .iter()
        .zip(labels)
        .map(|(&s, &l)| (f32_key(s), l))
        .collect();
    pairs.sort_unstable_by_key(|p| std::cmp::Reverse(p.0));
    let positives = labels.iter().filter(|&&l| l).count() as u64;
    let negatives = labels.len() as u64 - positives;
    let mut curve = RocPr::new(positives, negatives);
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut i = 0;
    while i < pairs.len() {
        let key = pairs[i].0;
        while i < pairs.len() && pairs[i].0 == key {
            if pairs[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        curve.push(tp, fp, key);
    }
    let (auroc, ap, f1_max, f1_threshold) = curve.finish();
    Ok(ImageMetrics {
        auroc,
        ap,
        f1_max,
        f1_threshold,
    })
}
