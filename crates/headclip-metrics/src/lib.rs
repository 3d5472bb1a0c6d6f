//! # headclip-metrics
//!
//! Image- and pixel-level metrics of the evaluation protocol (`headclip-spec.md`, "Evaluation"),
//! exact: no binning, every distinct value is a threshold, ties move together.
//!
//! - [`image_metrics`]: AUROC, AP and F1-max over (score, label) pairs, as scikit-learn's
//!   `roc_auc_score`, `average_precision_score` and the maximum F1 over `precision_recall_curve`.
//! - [`PixelAccumulator`]: the same three over all pixels of a category, plus AUPRO with
//!   integration limit FPR 0.3 in both variants the spec defines ([`PixelMetrics`]), fed one
//!   (map, mask) pair at a time.
//! - [`confusion_at`]: the [`Confusion`] matrix, precision, recall and F1 at one fixed
//!   threshold (a calibrated one); [`PixelAccumulator::confusion_at`] the same over pixels.
//! - [`connected_components`]: the 8-connected regions AUPRO is defined over
//!   (`skimage.measure.label(mask, connectivity=2)`).
//!
//! A metric that is undefined for its input (one class only, no input, no anomalous region,
//! too few AUPRO points) is `None`: report it as absent, never as zero. No result is NaN.
//!
//! Parity with scikit-learn / scikit-image is tested against fixtures made by
//! `reference/gen_metric_fixtures.py` (`tests/metrics.rs`).
//!
//! Written by hand because they must match those libraries bit for bit on ties and limits.
//! This crate must not depend on images, models or files: it takes numbers and labels.

mod confusion;
mod curve;
mod label;
mod pixel;
mod sort;

pub use confusion::{confusion_at, Confusion};
pub use curve::image_metrics;
pub use label::{connected_components, Components};
pub use pixel::PixelAccumulator;

use serde::{Deserialize, Serialize};

/// Integration limit of both AUPRO variants: the curve is integrated over FPR ∈ [0, 0.3].
pub const AUPRO_FPR_LIMIT: f64 = 0.3;

/// Number of thresholds of AnomalyCLIP's AUPRO: `min + i·(max − min)/200`, `i = 0..200`.
pub const ANOMALYCLIP_AUPRO_STEPS: usize = 200;

/// Image-level metrics of one category; `None` where undefined (see [`image_metrics`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ImageMetrics {
    /// Area under the ROC curve (trapezoid over distinct thresholds).
    pub auroc: Option<f64>,
    /// Average precision, Σ (R_n − R_{n−1}) P_n over distinct thresholds, no interpolation.
    pub ap: Option<f64>,
    /// Maximum over distinct thresholds of 2PR/(P + R) (0 where P + R = 0).
    pub f1_max: Option<f64>,
    /// The threshold where `f1_max` is reached, one of `precision_recall_curve`'s (a score is
    /// positive when `>=` it); of thresholds with equal F1 (compared exactly), the lowest.
    pub f1_threshold: Option<f32>,
}

/// Pixel-level metrics of one category, from [`PixelAccumulator::finish`].
///
/// `auroc`, `ap` and `f1_max` are absent unless both normal and anomalous pixels exist. Both
/// AUPROs are absent unless at least one normal pixel and one anomalous region exist.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PixelMetrics {
    /// Pixel AUROC over all pixels of the category.
    pub auroc: Option<f64>,
    /// Pixel AP over all pixels of the category.
    pub ap: Option<f64>,
    /// Pixel F1-max over all pixels of the category.
    pub f1_max: Option<f64>,
    /// The map value where `f1_max` is reached (positive when `>=`; ties to the lowest).
    pub f1_threshold: Option<f32>,
    /// AnomalyCLIP's AUPRO, the one the zero-shot tables use: thresholds
    /// `min + i·(max − min)/200` for `i = 0..200` computed in `f64` from the category's extreme
    /// values, a pixel positive when its value is `>` the threshold, PRO = mean over all regions
    /// of the category of the covered fraction, FPR over all normal pixels; points with
    /// FPR < 0.3 kept, their FPRs rescaled min–max to [0, 1], trapezoidal area. Also absent when
    /// fewer than two points are kept or their FPRs are all equal (constant maps, for one).
    pub aupro_anomalyclip: Option<f64>,
    /// MVTec AD's exact AUPRO: every distinct value a threshold (positive when `>=`), the
    /// (FPR, PRO) curve from (0, 0) to (1, 1) integrated over FPR ∈ [0, 0.3] with linear
    /// interpolation at 0.3, divided by 0.3.
    pub aupro_mvtec: Option<f64>,
}

/// Inputs the metrics cannot be computed from at all (as opposed to degenerate but valid inputs,
/// whose metrics are `None`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// A slice does not have the length its counterpart or the declared shape requires.
    #[error("{what} has {got} values, expected {expected}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A score or map value is NaN or infinite.
    #[error("{what} holds a non-finite value at index {index}")]
    NonFinite { what: &'static str, index: usize },
}
