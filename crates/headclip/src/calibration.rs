//! Thresholds and verdicts (`headclip-spec.md`, "Thresholds and verdicts"): a [`Calibration`]
//! chosen on a validation set, saved as a small JSON file, and applied to new scores.
//!
//! - With labels, the image threshold is the one where F1 of the joint score is largest, and
//!   the pixel threshold the one where pixel F1 is largest over the images with masks; both are
//!   among the thresholds of scikit-learn's `precision_recall_curve`, a value positive when `>=`
//!   the threshold, equal F1s going to the lowest threshold.
//! - With normal images only, a quantile (0.99 by default, numpy's linear interpolation) of
//!   their joint scores and of all their map values.
//! - A verdict is `score >= threshold`; a predicted mask is the S×S map resized bilinearly to
//!   the image's size, then `>=` the pixel threshold.
//! - Normalised scores follow anomalib's min–max normalisation,
//!   `clip((x − t)/(max − min) + 0.5, 0, 1)`, so that the threshold reads 0.5.
//! - The file records the [`ScoreIdentity`] of the detector it was made with; applying it to
//!   a detector with another identity is refused, naming what differs.

use std::path::Path;

use headclip_data::datasets::{Category, Dataset};
use headclip_data::viz;
use headclip_metrics::{image_metrics, PixelAccumulator};
use serde::{Deserialize, Serialize};

use crate::detector::{Detection, Detector, ScoreIdentity};
use crate::eval::{self, CategoryDone, EvalObserver, EvalOptions, ObserverError, ScoredImage};

/// The normal-only method's default quantile.
pub const DEFAULT_QUANTILE: f64 = 0.99;

/// The file format's version.
pub const FORMAT_VERSION: u32 = 1;

/// How the thresholds were chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// Labelled images: the F1-maximising thresholds.
    F1Max,
    /// Normal images only: this quantile of their values.
    Quantile { quantile: f64 },
}

/// One threshold and the range of the calibration values it was chosen among (the
/// normalisation's `min` and `max`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// Positive when a value is `>=` it.
    pub threshold: f32,
    /// The smallest calibration value.
    pub min: f32,
    /// The largest calibration value.
    pub max: f32,
}

impl Threshold {
    /// anomalib's min–max normalisation, `clip((x − t)/(max − min) + 0.5, 0, 1)`: the threshold
    /// reads 0.5. A calibration set whose values were all equal has no range; there every value
    /// reads 1 at or above the threshold and 0 below (never NaN).
    pub fn normalise(&self, x: f32) -> f32 {
        let range = f64::from(self.max) - f64::from(self.min);
        if range <= 0.0 {
            return if x >= self.threshold { 1.0 } else { 0.0 };
        }
        let v = (f64::from(x) - f64::from(self.threshold)) / range + 0.5;
        v.clamp(0.0, 1.0) as f32
    }

    /// `x >= threshold`.
    pub fn positive(&self, x: f32) -> bool {
        x >= self.threshold
    }
}

/// What the calibration set held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Images scored.
    pub images: usize,
    /// Normal images.
    pub normal: usize,
    /// Anomalous images.
    pub anomalous: usize,
    /// Images whose maps went into the pixel threshold.
    pub pixel_images: usize,
}

/// A calibration file's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// [`FORMAT_VERSION`].
    pub format: u32,
    /// The engine's version that wrote it.
    pub headclip_version: String,
    /// How the thresholds were chosen.
    pub method: Method,
    /// The data set specs, as given.
    pub data: Vec<String>,
    /// What they held.
    pub counts: Counts,
    /// The image threshold, on the joint score.
    pub image: Threshold,
    /// The pixel threshold, on map values; absent when the set had no pixel ground truth (or,
    /// with labels, no anomalous pixel).
    pub pixel: Option<Threshold>,
    /// What the scores depend on.
    pub identity: ScoreIdentity,
}

/// Why a calibration could not be made, read or applied.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// The validation set cannot give a threshold.
    #[error("{0}")]
    Data(String),
    /// The detector's identity could not be computed.
    #[error("{0}")]
    Identity(String),
    /// Scoring the validation set failed.
    #[error(transparent)]
    Eval(#[from] eval::EvalError),
    /// The file could not be read or parsed.
    #[error("{}: {message}", path.display())]
    File {
        path: std::path::PathBuf,
        message: String,
    },
    /// The file was made with a detector whose scores differ from this one's.
    #[error(
        "{} was made with another model, so its thresholds do not apply to these scores:\n  {}\n\
         calibrate again with this model (headclip calibrate), or pass --force-calibration to \
         use it anyway",
        path.display(),
        differences.join("\n  ")
    )]
    Mismatch {
        path: std::path::PathBuf,
        differences: Vec<String>,
    },
}

/// What a calibration says about one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// `score >= image threshold`.
    pub anomalous: bool,
    /// The joint score normalised so that the threshold reads 0.5.
    pub normalised_score: f32,
    /// The map's largest value normalised with the pixel threshold, with one.
    pub normalised_map_max: Option<f32>,
    /// Pixels of the image (at its size) predicted anomalous, with a pixel threshold.
    pub anomalous_pixels: Option<u64>,
}

impl Calibration {
    /// Reads a calibration file.
    pub fn load(path: &Path) -> Result<Self, CalibrationError> {
        let file_error = |message: String| CalibrationError::File {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let calibration: Calibration = serde_json::from_str(&text)
            .map_err(|e| file_error(format!("not a headclip calibration file: {e}")))?;
        if calibration.format != FORMAT_VERSION {
            return Err(file_error(format!(
                "calibration format {} is not the one this version reads ({FORMAT_VERSION})",
                calibration.format
            )));
        }
        let finite =
            |t: &Threshold| t.threshold.is_finite() && t.min.is_finite() && t.max.is_finite();
        if !finite(&calibration.image) || calibration.pixel.as_ref().is_some_and(|p| !finite(p)) {
            return Err(file_error(
                "a threshold or range is not a finite number".into(),
            ));
        }
        Ok(calibration)
    }

    /// The file's bytes: pretty JSON with a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Refuses a calibration made with a detector of another identity, unless `force` (then
    /// the differences are only logged). `path` names the file in messages.
    pub fn check_identity(
        &self,
        detector_identity: &ScoreIdentity,
        path: &Path,
        force: bool,
    ) -> Result<(), CalibrationError> {
        let name = path.display().to_string();
        let differences = detector_identity.differences(&self.identity, &name);
        if differences.is_empty() {
            return Ok(());
        }
        if force {
            for d in &differences {
                tracing::warn!("--force-calibration: {d}");
            }
            return Ok(());
        }
        Err(CalibrationError::Mismatch {
            path: path.to_path_buf(),
            differences,
        })
    }

    /// The verdict on one detection.
    pub fn verdict(&self, detection: &Detection) -> Verdict {
        Verdict {
            anomalous: self.image.positive(detection.score),
            normalised_score: self.image.normalise(detection.score),
            normalised_map_max: self.pixel.map(|p| p.normalise(detection.map_max)),
            anomalous_pixels: self.pixel.map(|_| {
                self.predicted_mask(detection)
                    .map_or(0, |m| m.iter().map(|&v| u64::from(v)).sum())
            }),
        }
    }

    /// The predicted mask at the image's size (1 = anomalous), row-major `height × width`: the
    /// S×S map resized bilinearly to the image, then `>=` the pixel threshold. `None` without a
    /// pixel threshold.
    pub fn predicted_mask(&self, detection: &Detection) -> Option<Vec<u8>> {
        let pixel = self.pixel?;
        let resized = viz::resize_map(
            &detection.map,
            detection.side as usize,
            detection.width as usize,
            detection.height as usize,
        );
        Some(
            resized
                .iter()
                .map(|&v| u8::from(pixel.positive(v)))
                .collect(),
        )
    }
}

/// The `q` quantile of `values` with numpy's default (linear) interpolation: position
/// `q·(n − 1)` in sorted order, interpolated between its neighbours in f64. `values` is
/// reordered. `None` for no values.
pub fn quantile(values: &mut [f32], q: f64) -> Option<f32> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let position = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = position.floor() as usize;
    let frac = position - lo as f64;
    let (_, &mut low, above) = values.select_nth_unstable_by(lo, f32::total_cmp);
    let low = f64::from(low);
    if frac == 0.0 || above.is_empty() {
        return Some(low as f32);
    }
    let high = f64::from(above.iter().copied().fold(f32::INFINITY, f32::min));
    // numpy's _lerp: the form that is exact at the nearer end.
    let v = if frac >= 0.5 {
        high - (high - low) * (1.0 - frac)
    } else {
        low + (high - low) * frac
    };
    Some(v as f32)
}

/// How [`calibrate`] chooses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Choice {
    /// Labelled when the set has both classes, else the default quantile of its normal images.
    Auto,
    /// This quantile of the normal images' values, whatever else the set holds.
    Quantile(f64),
}

/// Collects what the thresholds are chosen from while the validation set is scored.
struct Collector<'o> {
    labelled: bool,
    scores: Vec<f32>,
    labels: Vec<bool>,
    /// Labelled: every image of a category with pixel ground truth.
    pixels: Option<PixelAccumulator>,
    /// Normal-only: every map value of the normal images.
    map_values: Vec<f32>,
    map_range: (f32, f32),
    pixel_images: usize,
    inner: &'o mut dyn EvalObserver,
}

impl Collector<'_> {
    fn add_map(&mut self, img: &ScoredImage<'_>) -> Result<(), ObserverError> {
        let map = &img.score.map;
        if self.labelled {
            if !img.category.pixel_metrics_defined() {
                return Ok(());
            }
            let side = img.score.side as usize;
            let zeros;
            let mask: &[u8] = match img.mask {
                Some(m) => &m.values,
                None => {
                    zeros = vec![0u8; map.len()];
                    &zeros
                }
            };
            self.pixels
                .get_or_insert_with(|| PixelAccumulator::new(side))
                .add(map, mask)?;
        } else if !img.sample.anomalous {
            self.map_values.extend_from_slice(map);
        } else {
            return Ok(());
        }
        let (lo, hi) = &mut self.map_range;
        for &v in map {
            *lo = lo.min(v);
            *hi = hi.max(v);
        }
        self.pixel_images += 1;
        Ok(())
    }
}

impl EvalObserver for Collector<'_> {
    fn image(&mut self, img: &ScoredImage<'_>) -> Result<(), ObserverError> {
        if self.labelled || !img.sample.anomalous {
            self.scores.push(img.score.score);
            self.labels.push(img.sample.anomalous);
        }
        self.add_map(img)?;
        self.inner.image(img)
    }

    fn category_done(&mut self, done: &CategoryDone<'_>) -> Result<(), ObserverError> {
        self.inner.category_done(done)
    }
}

/// Scores `datasets` with `detector` and chooses the thresholds (see the module's summary);
/// `data` names the sets in the file, `observer` sees every image (progress).
///
/// # Errors
/// A set without normal images (normal-only), or, labelled, without a threshold F1 can choose;
/// anything that stops the evaluation.
pub fn calibrate(
    detector: &Detector,
    datasets: &[Dataset],
    data: Vec<String>,
    choice: Choice,
    options: &EvalOptions,
    observer: &mut dyn EvalObserver,
) -> Result<Calibration, CalibrationError> {
    let identity = detector
        .score_identity()
        .map_err(|e| CalibrationError::Identity(e.to_string()))?;
    let all = || datasets.iter().flat_map(|d| &d.categories);
    let normal: usize = all().map(|c: &Category| c.num_normal()).sum();
    let anomalous: usize = all()
        .map(|c: &Category| c.samples.len() - c.num_normal())
        .sum();
    let labelled = matches!(choice, Choice::Auto) && normal > 0 && anomalous > 0;
    if normal == 0 && !labelled {
        return Err(CalibrationError::Data(
            "the calibration set holds no normal image: give labelled data (normal and \
             anomalous images) or normal images"
                .into(),
        ));
    }
    let mut collector = Collector {
        labelled,
        scores: Vec::new(),
        labels: Vec::new(),
        pixels: None,
        map_values: Vec::new(),
        map_range: (f32::INFINITY, f32::NEG_INFINITY),
        pixel_images: 0,
        inner: observer,
    };
    eval::evaluate(detector, datasets, options, &mut collector)?;
    let counts = Counts {
        images: normal + anomalous,
        normal,
        anomalous,
        pixel_images: collector.pixel_images,
    };
    let (method, image, pixel) = if labelled {
        let (image, pixel) = f1_thresholds(&mut collector)?;
        (Method::F1Max, image, pixel)
    } else {
        let q = match choice {
            Choice::Quantile(q) => q,
            Choice::Auto => DEFAULT_QUANTILE,
        };
        let (image, pixel) = quantile_thresholds(&mut collector, q)?;
        (Method::Quantile { quantile: q }, image, pixel)
    };
    Ok(Calibration {
        format: FORMAT_VERSION,
        headclip_version: env!("CARGO_PKG_VERSION").to_string(),
        method,
        data,
        counts,
        image,
        pixel,
        identity,
    })
}

fn range_of(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn f1_thresholds(
    c: &mut Collector<'_>,
) -> Result<(Threshold, Option<Threshold>), CalibrationError> {
    let metrics = image_metrics(&c.scores, &c.labels)
        .map_err(|e| CalibrationError::Data(format!("image scores: {e}")))?;
    let threshold = metrics.f1_threshold.ok_or_else(|| {
        CalibrationError::Data("no image threshold: the set needs both classes".into())
    })?;
    let (min, max) = range_of(&c.scores);
    let image = Threshold {
        threshold,
        min,
        max,
    };
    let pixel = c
        .pixels
        .take()
        .and_then(|acc| acc.finish().f1_threshold)
        .map(|threshold| Threshold {
            threshold,
            min: c.map_range.0,
            max: c.map_range.1,
        });
    if pixel.is_none() {
        tracing::warn!(
            "no pixel threshold: no image of the calibration set has an anomalous pixel in a mask"
        );
    }
    Ok((image, pixel))
}

fn quantile_thresholds(
    c: &mut Collector<'_>,
    q: f64,
) -> Result<(Threshold, Option<Threshold>), CalibrationError> {
    if !(0.0..=1.0).contains(&q) {
        return Err(CalibrationError::Data(format!(
            "quantile {q} is not between 0 and 1"
        )));
    }
    let (min, max) = range_of(&c.scores);
    let threshold = quantile(&mut c.scores, q)
        .ok_or_else(|| CalibrationError::Data("no normal image was scored".into()))?;
    let image = Threshold {
        threshold,
        min,
        max,
    };
    let pixel = quantile(&mut c.map_values, q).map(|threshold| Threshold {
        threshold,
        min: c.map_range.0,
        max: c.map_range.1,
    });
    Ok((image, pixel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_linearly_as_numpy() {
        // numpy.quantile([3, 1, 4, 1, 5, 9, 2, 6], q) for these q.
        let values = [3.0f32, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        for (q, want) in [(0.0, 1.0), (0.5, 3.5), (0.99, 8.79), (1.0, 9.0), (0.3, 2.1)] {
            let mut v = values;
            let got = quantile(&mut v, q).unwrap();
            assert!(
                (f64::from(got) - want).abs() < 1e-6,
                "q {q}: {got} vs {want}"
            );
        }
        assert_eq!(quantile(&mut [], 0.5), None);
        assert_eq!(quantile(&mut [0.25], 0.99), Some(0.25));
    }

    #[test]
    fn normalisation_is_anomalibs_min_max() {
        let t = Threshold {
            threshold: 0.6,
            min: 0.2,
            max: 1.0,
        };
        // clip((x − 0.6)/0.8 + 0.5, 0, 1)
        assert_eq!(t.normalise(0.6), 0.5);
        assert!((t.normalise(0.8) - 0.75).abs() < 1e-7);
        assert!((t.normalise(0.2) - 0.0).abs() < 1e-7);
        assert_eq!(t.normalise(1.5), 1.0);
        assert_eq!(t.normalise(-3.0), 0.0);
        let flat = Threshold {
            threshold: 0.4,
            min: 0.4,
            max: 0.4,
        };
        assert_eq!((flat.normalise(0.4), flat.normalise(0.39)), (1.0, 0.0));
        assert!(t.positive(0.6) && !t.positive(0.599_999_9));
    }
}
