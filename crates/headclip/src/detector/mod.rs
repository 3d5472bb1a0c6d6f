//! The inspection pipeline every entry point uses: a [`Detector`] is built once from a
//! [`ModelSpec`] and turns images (files, encoded bytes, decoded pixels) into one [`Detection`]
//! each: the joint, global and pixel scores, the S×S map and its statistics, and on request
//! what an overlay needs. `predict`, `test`, `serve`, `bench` and the Python package call it;
//! none of them decodes or scores an image on its own.
//!
//! Decoding and pre-processing are the [`Preprocessor`]'s (crate `headclip-data`, no libtorch);
//! scoring is the model's. [`Detector::detect_stream`] runs both with decoding workers ahead of
//! the model and batches in between; [`Detector::prepare`] and [`Detector::score`] are the two
//! halves for callers that schedule them themselves (the HTTP service decodes on its request
//! threads and scores on the model's).
//!
//! ```no_run
//! use headclip::detector::{Detector, ModelSpec};
//! use headclip_data::images::ImageSource;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spec = ModelSpec {
//!     params: Some("headclip-params.safetensors".into()),
//!     ..ModelSpec::new("ViT-L-14-336px.pt")
//! };
//! let detector = Detector::load(&spec)?;
//! // A path, encoded bytes (ImageSource::Bytes) or decoded pixels (ImageSource::Decoded).
//! let d = detector.detect(ImageSource::Path("part.png".into()), false)?;
//! println!("{} (map max {})", d.score, d.map_max);
//! # Ok(())
//! # }
//! ```

mod identity;
mod load;
mod references;
mod spec;
mod stream;

use std::panic::AssertUnwindSafe;

use headclip_data::images::{
    DataError, DecodeLimits, ImageFormat, ImageSource, PreparedImage, Preprocessor, RgbImage,
};
use headclip_data::viz;
use tch::Tensor;

use crate::model::{HeadClip, ImageScore, PromptMode};

pub use identity::{IdentityError, ScoreIdentity};
pub use load::{
    cpu_has_fast_bf16_matmul, effective_precision, load_clip, LoadError, ENV_FORCE_CPU_BF16,
};
pub use references::{BankOrigin, FewShotSummary, ReferenceRecord, BANK_KEY};
pub use spec::{parse_device, ModelSpec, Precision, References, DEFAULT_BANK_CAP, DEFAULT_BETA};
pub use stream::{StreamFailure, StreamOptions, StreamStats};

/// One image's result.
#[derive(Debug, Clone)]
pub struct Detection {
    /// The joint anomaly score `s`.
    pub score: f32,
    /// `s_g`, from the global feature.
    pub global_score: f32,
    /// `s_p`, the mean of the top fraction of the smoothed map.
    pub pixel_score: f32,
    /// The smoothed anomaly map, `side × side`, row-major, values in [0, 1].
    pub map: Vec<f32>,
    /// The model's side S.
    pub side: u32,
    /// The map's largest value.
    pub map_max: f32,
    /// The map's mean.
    pub map_mean: f32,
    /// The image's width as decoded.
    pub width: u32,
    /// The image's height as decoded.
    pub height: u32,
    /// The encoded format; `None` for decoded pixels.
    pub format: Option<ImageFormat>,
    /// The decoded image, when it was kept for an overlay.
    pub original: Option<RgbImage>,
}

impl Detection {
    fn new(score: ImageScore, image: PreparedImage, side: u32) -> Result<Self, DetectError> {
        let finite = |v: f32| v.is_finite();
        if !(finite(score.score) && finite(score.global_score) && finite(score.pixel_score)) {
            return Err(DetectError::NonFinite("score"));
        }
        if !score.map.iter().copied().all(finite) {
            return Err(DetectError::NonFinite("anomaly map"));
        }
        let (map_max, map_mean) = map_statistics(&score.map);
        Ok(Self {
            score: score.score,
            global_score: score.global_score,
            pixel_score: score.pixel_score,
            map: score.map,
            side,
            map_max,
            map_mean,
            width: image.width,
            height: image.height,
            format: image.format,
            original: image.original,
        })
    }

    /// The map over the image at its own size, on the fixed [0, 1] colour scale; `None` when
    /// the image was not kept.
    pub fn overlay(&self) -> Option<RgbImage> {
        let original = self.original.as_ref()?;
        Some(viz::overlay(original, &self.map, self.side as usize))
    }
}

/// The largest value and the mean (accumulated in f64) of a map.
fn map_statistics(map: &[f32]) -> (f32, f32) {
    let max = map.iter().copied().fold(f32::MIN, f32::max);
    let mean = map.iter().map(|&v| f64::from(v)).sum::<f64>() / map.len().max(1) as f64;
    (max, mean as f32)
}

/// Why one image has no result.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// It could not be read or decoded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model computed NaN or infinity (broken weights or parameters): never a verdict.
    #[error("the model computed a non-finite {0} (NaN or infinite weights or parameters?)")]
    NonFinite(&'static str),
    /// The model itself failed (a libtorch error).
    #[error("the model failed: {0}")]
    Model(String),
}

/// What a loaded model is, for logs and health checks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// CLIP's architecture, e.g. `ViT-B/16`.
    pub model: String,
    /// The side S images are resized to.
    pub image_size: u32,
    /// `learned` or `training_free`.
    pub mode: PromptMode,
    /// Where the model runs, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// The towers' precision.
    pub precision: String,
}

/// HeadCLIP with its pre-processing: the inspection pipeline.
pub struct Detector {
    model: HeadClip,
    preprocessor: Preprocessor,
    spec: ModelSpec,
    few_shot: Option<FewShotSummary>,
}

impl Detector {
    /// A detector around a model already built (tests, and callers that build CLIP
    /// themselves); `spec` records what it was built from, except its references and class
    /// name, which [`Detector::set_references`] and [`Detector::set_class_name`] apply.
    pub fn from_model(model: HeadClip, spec: ModelSpec) -> Self {
        let preprocessor = Preprocessor {
            side: model.image_size() as u32,
            limits: DecodeLimits::default(),
            normalization: model.clip.config.normalization,
        };
        Self {
            model,
            preprocessor,
            spec: ModelSpec {
                references: None,
                ..spec
            },
            few_shot: None,
        }
    }

    /// Sets the limits checked before an image is decoded.
    pub fn with_limits(mut self, limits: DecodeLimits) -> Self {
        self.preprocessor.limits = limits;
        self
    }

    /// The model underneath.
    pub fn model(&self) -> &HeadClip {
        &self.model
    }

    /// What the detector was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The side S of the maps.
    pub fn side(&self) -> u32 {
        self.preprocessor.side
    }

    /// The decode and pre-process stage.
    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    /// What the model is.
    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            model: self.model.clip.config.name(),
            image_size: self.side(),
            mode: self.model.mode,
            device: device_name(self.model.device()),
            precision: self.spec.precision.to_string(),
        }
    }

    /// Decodes and pre-processes one image (no model involved; safe to call from any thread
    /// that may use the preprocessor).
    pub fn prepare(
        &self,
        source: ImageSource,
        keep_original: bool,
    ) -> Result<PreparedImage, DataError> {
        self.preprocessor.prepare(source, keep_original)
    }

    /// Scores prepared images together, one result each, in order.
    pub fn score(&self, images: Vec<PreparedImage>) -> Vec<Result<Detection, DetectError>> {
        if images.is_empty() {
            return Vec::new();
        }
        let side = self.side();
        let s = i64::from(side);
        let mut flat = Vec::with_capacity(images.len() * images[0].pixels.len());
        for image in &images {
            flat.extend_from_slice(&image.pixels);
        }
        let batch = Tensor::from_slice(&flat).view([images.len() as i64, 3, s, s]);
        drop(flat);
        // libtorch reports its errors as panics through tch; one must not take the caller down.
        let scored = std::panic::catch_unwind(AssertUnwindSafe(|| self.model.score(&batch)));
        let scores = match scored {
            Ok(scores) if scores.len() == images.len() => scores,
            Ok(scores) => {
                let message = format!("{} results for {} images", scores.len(), images.len());
                return images
                    .iter()
                    .map(|_| Err(DetectError::Model(message.clone())))
                    .collect();
            }
            Err(panic) => {
                let message = panic_message(&panic);
                return images
                    .iter()
                    .map(|_| Err(DetectError::Model(message.clone())))
                    .collect();
            }
        };
        scores
            .into_iter()
            .zip(images)
            .map(|(score, image)| Detection::new(score, image, side))
            .collect()
    }

    /// Decodes, pre-processes and scores one image.
    pub fn detect(
        &self,
        source: ImageSource,
        keep_original: bool,
    ) -> Result<Detection, DetectError> {
        let image = self.prepare(source, keep_original)?;
        self.score(vec![image])
            .pop()
            .unwrap_or_else(|| Err(DetectError::Model("no result".into())))
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}

/// `cpu`, `cuda:0`, ….
pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_statistics_accumulate_in_f64() {
        let mut map = vec![0.1f32; 1 << 20];
        map[7] = 0.9;
        let (max, mean) = map_statistics(&map);
        assert_eq!(max, 0.9);
        let want =
            (f64::from(0.1f32) * ((1 << 20) - 1) as f64 + f64::from(0.9f32)) / (1 << 20) as f64;
        // Summed in f32, 2^20 values of 0.1 drift by about 1e-3.
        assert!((f64::from(mean) - want).abs() < 1e-7, "{mean} vs {want}");
    }
}
