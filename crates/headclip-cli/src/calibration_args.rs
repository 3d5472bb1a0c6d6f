//! `--calibration FILE` and `--force-calibration`, shared by `predict`, `test` and `serve`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use headclip::calibration::Calibration;
use headclip::detector::Detector;

#[derive(Args, Debug, Clone, Default)]
pub struct CalibrationArgs {
    /// A calibration file from `headclip calibrate`: verdicts (score ≥ threshold), predicted
    /// masks and normalised scores (the threshold reads 0.5).
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Use the calibration even where it was made with another model (other weights,
    /// parameters, image size, precision, references or class names), which it otherwise
    /// refuses.
    #[arg(long, requires = "calibration")]
    pub force_calibration: bool,
}

impl CalibrationArgs {
    /// The calibration, checked against the detector's score identity; `None` without one.
    pub fn load(&self, detector: &Detector) -> Result<Option<Calibration>> {
        let Some(path) = &self.calibration else {
            return Ok(None);
        };
        let calibration = Calibration::load(path)?;
        let identity = detector
            .score_identity()
            .context("cannot compute the model's identity to check the calibration against")?;
        calibration.check_identity(&identity, path, self.force_calibration)?;
        let pixel = calibration
            .pixel
            .map_or_else(|| "none".to_string(), |p| p.threshold.to_string());
        tracing::info!(
            "calibration {}: image threshold {}, pixel threshold {pixel}",
            path.display(),
            calibration.image.threshold
        );
        Ok(Some(calibration))
    }
}
