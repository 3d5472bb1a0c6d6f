//! What a test reports beyond the threshold-free metrics: the thresholds where F1-max is
//! reached, counts and figures at calibrated thresholds, and rows per defect type.

use serde::Serialize;

use headclip_data::datasets::Category;
use headclip_metrics::{confusion_at, image_metrics, Confusion, ImageMetrics, MetricsError};

use super::ImageRecord;

/// Calibrated thresholds to report counts at (a value is positive when `>=`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Thresholds {
    /// On the joint score.
    pub image: f32,
    /// On map values at S×S, where the calibration has one.
    pub pixel: Option<f32>,
}

/// A confusion matrix with the precision, recall and F1 it gives (absent where undefined).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Figures {
    /// The counts.
    pub counts: Confusion,
    /// `tp / (tp + fp)`.
    pub precision: Option<f64>,
    /// `tp / (tp + fn)`.
    pub recall: Option<f64>,
    /// `2tp / (2tp + fp + fn)`.
    pub f1: Option<f64>,
}

impl From<Confusion> for Figures {
    fn from(counts: Confusion) -> Self {
        Figures {
            counts,
            precision: counts.precision(),
            recall: counts.recall(),
            f1: counts.f1(),
        }
    }
}

/// Image- and pixel-level figures at calibrated thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct AtThresholds {
    /// The thresholds.
    pub thresholds: Thresholds,
    /// Images.
    pub image: Figures,
    /// Pixels at S×S, where the category has pixel ground truth and the calibration a pixel
    /// threshold.
    pub pixel: Option<Figures>,
}

impl AtThresholds {
    /// Pools several categories' counts (a data set's row); `None` for none.
    pub fn pooled<'a>(all: impl IntoIterator<Item = &'a AtThresholds>) -> Option<AtThresholds> {
        let mut out: Option<(Thresholds, Confusion, Option<Confusion>)> = None;
        for a in all {
            let (_, image, pixel) = out.get_or_insert((a.thresholds, Confusion::default(), None));
            image.merge(&a.image.counts);
            if let Some(p) = &a.pixel {
                pixel
                    .get_or_insert_with(Confusion::default)
                    .merge(&p.counts);
            }
        }
        out.map(|(thresholds, image, pixel)| AtThresholds {
            thresholds,
            image: image.into(),
            pixel: pixel.map(Figures::from),
        })
    }
}

/// One defect type of a category (a layout that names them: MVTec AD's `test/<defect>/`),
/// against all the category's normal images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DefectResult {
    /// The defect type.
    pub name: String,
    /// Its images.
    pub anomalous: usize,
    /// The category's normal images, which every defect row is measured against.
    pub normal: usize,
    /// AUROC, AP, F1-max (and its threshold) over the normal images and this defect's.
    pub image: ImageMetrics,
    /// At the calibrated image threshold, over the same images.
    pub calibrated: Option<Figures>,
}

/// A row per named defect type, in order of first appearance; empty when the layout names
/// none. `records` are the category's samples' scores, in sample order.
pub fn defect_rows(
    category: &Category,
    records: &[ImageRecord],
    thresholds: Option<Thresholds>,
) -> Result<Vec<DefectResult>, MetricsError> {
    let mut names: Vec<&str> = Vec::new();
    for s in category.samples.iter().filter(|s| s.anomalous) {
        if let Some(d) = s.defect.as_deref() {
            if !names.contains(&d) {
                names.push(d);
            }
        }
    }
    let normal = records.iter().filter(|r| !r.anomalous).count();
    names
        .into_iter()
        .map(|name| {
            let (scores, labels): (Vec<f32>, Vec<bool>) = category
                .samples
                .iter()
                .zip(records)
                .filter(|(s, r)| !r.anomalous || s.defect.as_deref() == Some(name))
                .map(|(_, r)| (r.score, r.anomalous))
                .unzip();
            let calibrated = match thresholds {
                Some(t) => Some(confusion_at(&scores, &labels, t.image)?.into()),
                None => None,
            };
            Ok(DefectResult {
                name: name.to_string(),
                anomalous: labels.iter().filter(|&&l| l).count(),
                normal,
                image: image_metrics(&scores, &labels)?,
                calibrated,
            })
        })
        .collect()
}
