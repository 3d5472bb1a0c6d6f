//! What a detector's scores depend on, recorded so that a calibration (thresholds chosen on
//! these scores) is only ever applied to the same scores.

use serde::{Deserialize, Serialize};

use super::Detector;
use crate::clip::find_checkpoint;
use crate::model::PromptMode;
use crate::weights::{self, WeightsError};

/// Everything that moves a score: two detectors with equal identities give the same scores for
/// the same image (up to the device's rounding).
///
/// The few-shot fields (`references`, `beta`, `class_name`) are empty for a zero-shot,
/// class-agnostic detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreIdentity {
    /// sha256 of the CLIP checkpoint file.
    pub weights_sha256: String,
    /// sha256 of HeadCLIP's parameters file; `None` in training-free mode.
    pub params_sha256: Option<String>,
    /// CLIP's architecture, e.g. `ViT-L/14@336px` (for messages; the config hash decides).
    pub architecture: String,
    /// sha256 of the backbone's computed config: shapes, head widths, activations, the
    /// mean and std images are normalised with.
    pub backbone_config_sha256: String,
    /// sha256 of HeadCLIP's resolved options: read-out layers, λ, k, σ, head-weight form.
    pub scoring_config_sha256: String,
    /// The side S.
    pub image_size: u32,
    /// The towers' precision (`fp32`, `bf16`, `fp16`).
    pub precision: String,
    /// The few-shot references' sha256, sorted.
    #[serde(default)]
    pub references: Vec<String>,
    /// The few-shot fusion weight β; `None` without references.
    #[serde(default)]
    pub beta: Option<f64>,
    /// The object's name in the training-free prompts; `None` for "object" and for learned
    /// prompts, which ignore it.
    #[serde(default)]
    pub class_name: Option<String>,
}

/// Why a detector's identity could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{0}")]
    Checkpoint(String),
}

impl ScoreIdentity {
    /// One line per field that differs, `"<field>: <this> here, <other> in <other_name>"`;
    /// empty when the identities are equal.
    pub fn differences(&self, other: &ScoreIdentity, other_name: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |field: &str, here: String, there: String| {
            if here != there {
                out.push(format!("{field}: {here} here, {there} in {other_name}"));
            }
        };
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        check(
            "weights sha256",
            self.weights_sha256.clone(),
            other.weights_sha256.clone(),
        );
        check(
            "parameters sha256",
            opt(&self.params_sha256),
            opt(&other.params_sha256),
        );
        check(
            "architecture",
            self.architecture.clone(),
            other.architecture.clone(),
        );
        check(
            "backbone config sha256",
            self.backbone_config_sha256.clone(),
            other.backbone_config_sha256.clone(),
        );
        check(
            "scoring options sha256",
            self.scoring_config_sha256.clone(),
            other.scoring_config_sha256.clone(),
        );
        check(
            "image size",
            self.image_size.to_string(),
            other.image_size.to_string(),
        );
        check("precision", self.precision.clone(), other.precision.clone());
        check(
            "references",
            format!("{:?}", self.references),
            format!("{:?}", other.references),
        );
        check(
            "beta",
            format!("{:?}", self.beta),
            format!("{:?}", other.beta),
        );
        check("class name", opt(&self.class_name), opt(&other.class_name));
        out
    }
}

impl Detector {
    /// What this detector's scores depend on. Hashes the weights and parameters files through
    /// [`weights::sha256_file_cached`] (a large checkpoint is hashed once, then remembered).
    pub fn score_identity(&self) -> Result<ScoreIdentity, IdentityError> {
        let spec = self.spec();
        let checkpoint =
            find_checkpoint(&spec.weights).map_err(|e| IdentityError::Checkpoint(e.to_string()))?;
        let params_sha256 = match &spec.params {
            Some(path) => Some(weights::sha256_file_cached(path, None)?),
            None => None,
        };
        let model = self.model();
        let clip = &model.clip.config;
        // The normalisation is not serialised with the config; its Debug form is exact.
        let backbone = format!(
            "{}|{:?}",
            serde_json::to_string(clip).unwrap_or_default(),
            clip.normalization
        );
        let scoring = serde_json::to_string(&model.config).unwrap_or_default();
        Ok(ScoreIdentity {
            weights_sha256: weights::sha256_file_cached(&checkpoint, None)?,
            params_sha256,
            architecture: clip.name(),
            backbone_config_sha256: sha256_text(&backbone),
            scoring_config_sha256: sha256_text(&scoring),
            image_size: self.side(),
            precision: spec.precision.to_string(),
            references: self.reference_identities(),
            beta: self.few_shot().map(|f| f.beta),
            // Normalised (`metal_nut` and `metal nut` prompt alike); learned prompts ignore it.
            class_name: match model.mode {
                PromptMode::TrainingFree if spec.class_name.is_some() => {
                    Some(model.object_word.clone())
                }
                _ => None,
            },
        })
    }

    /// The references' sha256, sorted: the bank's nearest-neighbour search does not depend on
    /// their order, names or whether they came from a folder or a saved bank.
    fn reference_identities(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .few_shot()
            .map(|f| f.references.iter().map(|r| r.sha256.clone()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

fn sha256_text(text: &str) -> String {
    weights::sha256_reader(text.as_bytes()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> ScoreIdentity {
        ScoreIdentity {
            weights_sha256: "a".repeat(64),
            params_sha256: None,
            architecture: "ViT-B/16".into(),
            backbone_config_sha256: "b".repeat(64),
            scoring_config_sha256: "c".repeat(64),
            image_size: 224,
            precision: "fp32".into(),
            references: Vec::new(),
            beta: None,
            class_name: None,
        }
    }

    #[test]
    fn differences_name_each_field_that_differs() {
        let here = identity();
        assert!(here.differences(&identity(), "cal.json").is_empty());
        let other = ScoreIdentity {
            image_size: 518,
            class_name: Some("bottle".into()),
            ..identity()
        };
        let diffs = here.differences(&other, "cal.json");
        assert_eq!(
            diffs,
            [
                "image size: 224 here, 518 in cal.json",
                "class name: none here, bottle in cal.json"
            ]
        );
    }
}
