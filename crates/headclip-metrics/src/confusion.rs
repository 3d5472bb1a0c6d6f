//! Counts at one fixed threshold (a calibrated one): the confusion matrix and the precision,
//! recall and F1 it gives.

use serde::{Deserialize, Serialize};

use super::curve::check_scores;
use super::MetricsError;

/// Predictions against labels at one threshold; a value is predicted positive when `>=` it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Confusion {
    /// Anomalous, predicted anomalous.
    pub true_positives: u64,
    /// Normal, predicted anomalous.
    pub false_positives: u64,
    /// Normal, predicted normal.
    pub true_negatives: u64,
    /// Anomalous, predicted normal.
    pub false_negatives: u64,
}

impl Confusion {
    /// Counts one prediction.
    #[inline]
    pub fn add(&mut self, predicted: bool, actual: bool) {
        match (predicted, actual) {
            (true, true) => self.true_positives += 1,
            (true, false) => self.false_positives += 1,
            (false, false) => self.true_negatives += 1,
            (false, true) => self.false_negatives += 1,
        }
    }

    /// Adds another matrix's counts.
    pub fn merge(&mut self, other: &Confusion) {
        self.true_positives += other.true_positives;
        self.false_positives += other.false_positives;
        self.true_negatives += other.true_negatives;
        self.false_negatives += other.false_negatives;
    }

    /// `tp / (tp + fp)`; absent when nothing is predicted anomalous.
    pub fn precision(&self) -> Option<f64> {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// `tp / (tp + fn)`; absent when nothing is anomalous.
    pub fn recall(&self) -> Option<f64> {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    /// `2tp / (2tp + fp + fn)`, the harmonic mean of precision and recall (0 when either is 0);
    /// absent when nothing is anomalous or predicted so.
    pub fn f1(&self) -> Option<f64> {
        ratio(
            2 * self.true_positives,
            2 * self.true_positives + self.false_positives + self.false_negatives,
        )
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// The confusion matrix of `scores >= threshold` against `labels` (`true` = anomalous).
///
/// # Errors
/// [`MetricsError::LengthMismatch`] when the slices differ in length,
/// [`MetricsError::NonFinite`] when a score is NaN or infinite.
pub fn confusion_at(
    scores: &[f32],
    labels: &[bool],
    threshold: f32,
) -> Result<Confusion, MetricsError> {
    check_scores(scores, labels)?;
    let mut confusion = Confusion::default();
    for (&s, &l) in scores.iter().zip(labels) {
        confusion.add(s >= threshold, l);
    }
    Ok(confusion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_ties_at_the_threshold_positive() {
        let c = confusion_at(&[0.1, 0.5, 0.5, 0.9], &[false, false, true, true], 0.5).unwrap();
        assert_eq!(
            c,
            Confusion {
                true_positives: 2,
                false_positives: 1,
                true_negatives: 1,
                false_negatives: 0
            }
        );
        assert_eq!(c.precision(), Some(2.0 / 3.0));
        assert_eq!(c.recall(), Some(1.0));
        assert_eq!(c.f1(), Some(0.8));
    }

    #[test]
    fn undefined_ratios_are_absent() {
        let c = confusion_at(&[0.1, 0.2], &[false, false], 0.5).unwrap();
        assert_eq!((c.precision(), c.recall(), c.f1()), (None, None, None));
        assert!(confusion_at(&[f32::NAN], &[true], 0.5).is_err());
    }
}
