//! Every option of the spec, as stored in a parameters file's `headclip.config` metadata. Fields
//! left out mean the spec's defaults; backbone-dependent defaults are filled in by [`resolve`].
//!
//! [`resolve`]: HeadClipConfig::resolve

use serde::{Deserialize, Serialize};

use crate::clip::ClipConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LhwForm {
    /// `w_l = H · softmax(θ_l)`, θ initialised to 0.
    #[default]
    Softmax,
    /// `w = 2σ(θ)`.
    Sigmoid,
    /// `w = θ`, initialised to 1.
    Identity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LhwPaths {
    /// Head weights scale the value–value path only.
    #[default]
    Vv,
    /// Also the original path (changes the global feature).
    Both,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeadClipConfig {
    /// Read-out layers, 1-based. Default: {6,12,18,24} for 24 layers, {3,6,9,12} for 12.
    pub readout: Option<Vec<usize>>,
    /// `l₀`, the first two-path block. Default: 6 for 24 layers, 4 for 12.
    pub dpam_start: Option<usize>,
    pub lhw_form: LhwForm,
    pub lhw_paths: LhwPaths,
    pub lhw_dynamic: bool,
    /// λ of the joint score `(1 − λ)·s_g + λ·s_p`.
    pub jas_lambda: f64,
    /// k: `s_p` is the mean of the `max(1, ⌈k·S²⌉)` largest smoothed-map values.
    pub jas_top_fraction: f64,
    /// Input side S. Default: 518 for patch 14, else the multiple of P nearest to 518.
    pub image_size: Option<i64>,
    /// Apply `ln_post` to the global token (standard CLIP) instead of AnomalyCLIP's plain token.
    pub global_ln_post: bool,
    /// sha256 of the CLIP file the parameters were trained with.
    pub clip_sha256: Option<String>,
    /// σ of the Gaussian smoothing of the anomaly map, in pixels at S×S.
    pub smoothing_sigma: f64,
}

impl Default for HeadClipConfig {
    fn default() -> Self {
        Self {
            readout: None,
            dpam_start: None,
            lhw_form: LhwForm::Softmax,
            lhw_paths: LhwPaths::Vv,
            lhw_dynamic: false,
            jas_lambda: 0.5,
            jas_top_fraction: 0.01,
            image_size: None,
            global_ln_post: false,
            clip_sha256: None,
            smoothing_sigma: 4.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("image size {size} is not a multiple of the patch size {patch} (try {suggestion})")]
    ImageSize {
        size: i64,
        patch: i64,
        suggestion: i64,
    },
    #[error(
        "image size {size} is outside [{patch}, {max}] (one patch to {max} pixels, a multiple \
         of the patch size {patch})"
    )]
    ImageSizeRange { size: i64, patch: i64, max: i64 },
    #[error("invalid option: {0}")]
    Invalid(String),
}

/// A configuration with every backbone-dependent default filled in and checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedConfig {
    pub readout: Vec<usize>,
    pub dpam_start: usize,
    pub lhw_form: LhwForm,
    pub lhw_paths: LhwPaths,
    pub lhw_dynamic: bool,
    pub jas_lambda: f64,
    pub jas_top_fraction: f64,
    pub image_size: i64,
    pub global_ln_post: bool,
    pub smoothing_sigma: f64,
}

impl ResolvedConfig {
    /// Rows of θ: one per two-path block.
    pub fn lhw_rows(&self, layers: usize) -> usize {
        layers + 1 - self.dpam_start
    }
}

/// Default `l₀` and read-out layers for a vision depth: the spec's values for 24 and 12 layers,
/// otherwise the same proportions.
pub fn default_layers(layers: usize) -> (usize, Vec<usize>) {
    let start = match layers {
        24 => 6,
        12 => 4,
        n => (n / 3).max(1),
    };
    let mut readout: Vec<usize> = (1..=4).map(|q| (layers * q / 4).max(1)).collect();
    readout.dedup();
    (start, readout)
}

/// The largest input side S: a few thousand pixels. (S = 65536 asked for 12.7 GB before the
/// first layer and aborted; the model's defaults are 224 to 518.)
pub const MAX_IMAGE_SIZE: i64 = 2048;
/// The largest smoothing σ, in pixels at S×S: its kernel spans 4σ on each side, so 64 already
/// covers half of a 518-pixel map. Below [`MIN_SMOOTHING_SIGMA`] only 0 (no smoothing) is valid:
/// σ = 1e-300 squared is 0, and the kernel is 0/0.
pub const MAX_SMOOTHING_SIGMA: f64 = 64.0;
pub const MIN_SMOOTHING_SIGMA: f64 = 0.01;

impl HeadClipConfig {
    /// Every field checked against its range (the read-out layers and `dpam_start` within the
    /// backbone's depth, the image side a multiple of its patch) and the backbone's defaults
    /// filled in. An error names the field and its range.
    pub fn resolve(&self, clip: &ClipConfig) -> Result<ResolvedConfig, ConfigError> {
        let layers = clip.vision.layers;
        let (default_start, default_readout) = default_layers(layers);
        let dpam_start = self.dpam_start.unwrap_or(default_start);
        let mut readout = self.readout.clone().unwrap_or(default_readout);
        readout.sort_unstable();
        readout.dedup();
        if dpam_start == 0 || dpam_start > layers {
            return Err(ConfigError::Invalid(format!(
                "dpam_start {dpam_start} is outside 1..={layers} (the backbone's blocks)"
            )));
        }
        if readout.is_empty() || readout.iter().any(|&l| l == 0 || l > layers) {
            return Err(ConfigError::Invalid(format!(
                "readout {readout:?} must be one or more layers in 1..={layers} (the backbone's blocks)"
            )));
        }
        if !(0.0..=1.0).contains(&self.jas_lambda) {
            return Err(ConfigError::Invalid(format!(
                "jas_lambda {} is outside [0, 1]",
                self.jas_lambda
            )));
        }
        if !(self.jas_top_fraction > 0.0 && self.jas_top_fraction <= 1.0) {
            return Err(ConfigError::Invalid(format!(
                "jas_top_fraction {} is outside (0, 1]",
                self.jas_top_fraction
            )));
        }
        let sigma = self.smoothing_sigma;
        if !(sigma == 0.0 || (MIN_SMOOTHING_SIGMA..=MAX_SMOOTHING_SIGMA).contains(&sigma)) {
            return Err(ConfigError::Invalid(format!(
                "smoothing_sigma {sigma} is outside [{MIN_SMOOTHING_SIGMA}, {MAX_SMOOTHING_SIGMA}] \
                 (or 0 for no smoothing)"
            )));
        }
        if let Some(sha) = &self.clip_sha256 {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid(format!(
                    "clip_sha256 {:?} is not a sha256 (64 hexadecimal digits)",
                    sha.chars().take(80).collect::<String>()
                )));
            }
        }
        let image_size = self.image_size.unwrap_or_else(|| clip.default_image_size());
        check_image_size(image_size, clip.vision.patch)
            .map_err(|e| ConfigError::Invalid(format!("image_size: {e}")))?;
        Ok(ResolvedConfig {
            readout,
            dpam_start,
            lhw_form: self.lhw_form,
            lhw_paths: self.lhw_paths,
            lhw_dynamic: self.lhw_dynamic,
            jas_lambda: self.jas_lambda,
            jas_top_fraction: self.jas_top_fraction,
            image_size,
            global_ln_post: self.global_ln_post,
            smoothing_sigma: self.smoothing_sigma,
        })
    }
}

/// An image side S: from one patch to [`MAX_IMAGE_SIZE`] (rounded down to the patch), and a
/// multiple of the patch.
pub fn check_image_size(size: i64, patch: i64) -> Result<(), ConfigError> {
    let max = (MAX_IMAGE_SIZE / patch).max(1) * patch;
    if !(patch..=max).contains(&size) {
        return Err(ConfigError::ImageSizeRange { size, patch, max });
    }
    if size % patch != 0 {
        let suggestion = ((size as f64 / patch as f64).round() as i64).max(1) * patch;
        return Err(ConfigError::ImageSize {
            size,
            patch,
            suggestion,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_defaults_for_12_and_24_layers() {
        assert_eq!(default_layers(24), (6, vec![6, 12, 18, 24]));
        assert_eq!(default_layers(12), (4, vec![3, 6, 9, 12]));
    }

    #[test]
    fn missing_fields_mean_defaults() {
        let c: HeadClipConfig = serde_json::from_str(r#"{"lhw_form": "sigmoid"}"#).unwrap();
        assert_eq!(c.lhw_form, LhwForm::Sigmoid);
        assert_eq!(c.jas_lambda, 0.5);
        assert_eq!(c.jas_top_fraction, 0.01);
        assert_eq!(c.lhw_paths, LhwPaths::Vv);
    }

    #[test]
    fn image_size_must_be_a_multiple_of_the_patch() {
        let err = check_image_size(500, 14).unwrap_err().to_string();
        assert!(err.contains("not a multiple of the patch size 14"), "{err}");
        assert!(err.contains("try 504"), "{err}");
        assert!(check_image_size(518, 14).is_ok());
    }

    #[test]
    fn image_size_is_bounded() {
        for size in [1 << 40, 65536, 2058, 0, -14, 7] {
            let err = check_image_size(size, 14).unwrap_err().to_string();
            assert!(err.contains("outside [14, 2044]"), "{size}: {err}");
        }
        assert!(check_image_size(2044, 14).is_ok());
        assert!(check_image_size(14, 14).is_ok());
    }
}
