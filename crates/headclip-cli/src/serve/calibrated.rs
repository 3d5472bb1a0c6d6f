//! `serve --calibration FILE`: the calibration checked against the loaded model, and what the
//! API and the page add with it (normalised scores, the calibrated threshold).

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use headclip::calibration::{Calibration, Method};
use headclip::detector::{Detection, ScoreIdentity};
use serde_json::{json, Value};

/// A calibration file read at start.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub calibration: Calibration,
    /// `--force-calibration`.
    pub force: bool,
}

impl Loaded {
    /// Refuses a calibration made with another model (unless forced).
    pub fn check(&self, identity: Option<&Result<ScoreIdentity, String>>) -> Result<()> {
        let identity = identity
            .ok_or_else(|| anyhow!("the model's identity was not computed"))?
            .as_ref()
            .map_err(|e| anyhow!("cannot compute the model's identity: {e}"))?;
        self.calibration
            .check_identity(identity, &self.path, self.force)?;
        Ok(())
    }

    /// What `/healthz` says about it.
    pub fn summary(&self) -> Value {
        let c = &self.calibration;
        let method = match c.method {
            Method::F1Max => json!({"kind": "f1_max"}),
            Method::Quantile { quantile } => json!({"kind": "quantile", "quantile": quantile}),
        };
        json!({
            "file": self.path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "image_threshold": c.image.threshold,
            "pixel_threshold": c.pixel.map(|p| p.threshold),
            "method": method,
            "images": c.counts.images,
        })
    }

    /// The fields a detection's result gains: the calibrated verdict and the normalised score.
    pub fn add_to(&self, result: &mut Value, detection: &Detection) {
        let v = self.calibration.verdict(detection);
        result["calibrated_threshold"] = json!(self.calibration.image.threshold);
        result["calibrated_anomalous"] = json!(v.anomalous);
        result["normalised_score"] = json!(v.normalised_score);
        if let Some(n) = v.anomalous_pixels {
            result["anomalous_pixels"] = json!(n);
        }
    }
}
