//! HeadCLIP on top of a frozen CLIP: learned (or ensemble) text features, learnable head weights
//! on the value–value path, anomaly maps and the joint anomaly score.

mod config;
pub mod fewshot;
mod lhw;
mod params;
pub mod prompts;
pub mod scoring;

pub use config::{
    check_image_size, default_layers, ConfigError, HeadClipConfig, LhwForm, LhwPaths,
    ResolvedConfig,
};
pub use fewshot::MemoryBank;
pub use lhw::head_weights;
pub(crate) use params::serialize_f32;
pub use params::{HeadClipParams, ParamsError, CONFIG_KEY, DEFAULT_DEEP_PROMPTS};

use std::sync::atomic::{AtomicI64, Ordering};

use tch::{Device, Kind, Tensor};

use crate::clip::{Clip, ClipTokenizer, DpamOptions, TokenizeError, VisionOutput};

/// Where the text features came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptMode {
    Learned,
    TrainingFree,
}

impl std::fmt::Display for PromptMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PromptMode::Learned => "learned prompts",
            PromptMode::TrainingFree => "training-free prompt ensemble",
        })
    }
}

/// One image's result.
#[derive(Debug, Clone)]
pub struct ImageScore {
    /// The joint anomaly score `s`.
    pub score: f32,
    /// `s_g`, from the global feature.
    pub global_score: f32,
    /// `s_p`, the mean of the top fraction of the smoothed map.
    pub pixel_score: f32,
    /// The smoothed anomaly map, S×S, row-major, values in [0, 1].
    pub map: Vec<f32>,
}

/// Raw batch outputs before smoothing, for callers that need the per-layer maps.
pub struct BatchOutput {
    /// `s_g` per image: [B]
    pub global_score: Tensor,
    /// `M_l` per read-out layer: [B, R, S, S]
    pub layer_maps: Tensor,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error("{0}")]
    Invalid(String),
}

/// Images per forward pass on the CPU, in inference and in the training trunk, unless
/// [`set_cpu_chunk`] says otherwise (see [`HeadClip::score`]).
pub const CPU_CHUNK: i64 = 1;

static CPU_CHUNK_SETTING: AtomicI64 = AtomicI64::new(CPU_CHUNK);

/// Sets how many images go through a forward pass at once on the CPU, for the whole process
/// (like libtorch's thread count). Tests use it to push real batches through the model;
/// benchmarks to compare chunk sizes. Values below 1 mean 1.
pub fn set_cpu_chunk(images: i64) {
    CPU_CHUNK_SETTING.store(images.max(1), Ordering::Relaxed);
}

/// How many of `images` [B, ..] go through a model on `device` at once: the CPU chunk on the
/// CPU, the whole batch elsewhere.
pub fn forward_chunk(images: &Tensor, device: Device) -> i64 {
    if device == Device::Cpu {
        CPU_CHUNK_SETTING.load(Ordering::Relaxed)
    } else {
        images.size()[0].max(1)
    }
}

pub struct HeadClip {
    pub clip: Clip,
    pub config: ResolvedConfig,
    pub params: Option<HeadClipParams>,
    pub mode: PromptMode,
    /// `[t_n, t_a]`: [2, E]
    pub text_features: Tensor,
    /// The object word of the training-free prompt ensemble (`object`, or a class name).
    pub object_word: String,
    /// Few-shot references, fused into the map when present.
    pub few_shot: Option<FewShot>,
}

/// A memory bank and the weight β of its map in the fused one.
#[derive(Debug)]
pub struct FewShot {
    pub bank: MemoryBank,
    /// `M' = (1 − β)·M + β·M_fs`.
    pub beta: f64,
}

/// The object word of the training-free prompts for a class name: underscores read as spaces
/// (`metal_nut` → `metal nut`), runs of blanks as one; `object` without a name.
pub fn object_word(class_name: Option<&str>) -> String {
    let words: Vec<&str> = class_name
        .unwrap_or("")
        .split(|c: char| c == '_' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        "object".into()
    } else {
        words.join(" ")
    }
}

impl HeadClip {
    /// With learned parameters (already checked against the backbone by
    /// [`HeadClipParams::load`]), or without them in the training-free mode.
    pub fn new(
        clip: Clip,
        params: Option<HeadClipParams>,
        config: ResolvedConfig,
    ) -> Result<Self, ModelError> {
        Self::with_class_name(clip, params, config, None)
    }

    /// As [`HeadClip::new`], with the object's class name in the training-free prompt ensemble
    /// (learned prompts are object-agnostic and ignore it).
    pub fn with_class_name(
        clip: Clip,
        params: Option<HeadClipParams>,
        config: ResolvedConfig,
        class_name: Option<&str>,
    ) -> Result<Self, ModelError> {
        let device = clip.text.device();
        let tokenizer = ClipTokenizer::new();
        let params = params.map(|p| p.to_device(device));
        if let Some(p) = &params {
            if p.deep.len() + 1 > clip.text.layers() {
                return Err(ModelError::Invalid(format!(
                    "{} deep prompts need {} text blocks, the text tower has {}",
                    p.deep.len(),
                    p.deep.len() + 1,
                    clip.text.layers()
                )));
            }
        }
        let object_word = object_word(class_name);
        let text_features = {
            let _guard = tch::no_grad_guard();
            match &params {
                Some(p) => prompts::learned_text_features(&clip.text, &tokenizer, p)?,
                None => prompts::ensemble_text_features(&clip.text, &tokenizer, &object_word)?,
            }
        };
        let mode = if params.is_some() {
            PromptMode::Learned
        } else {
            PromptMode::TrainingFree
        };
        Ok(Self {
            clip,
            config,
            params,
            mode,
            text_features,
            object_word,
            few_shot: None,
        })
    }

    /// Sets the class name of the training-free prompt ensemble, re-encoding its text features
    /// when the object word changes; with learned prompts nothing changes.
    pub fn set_class_name(&mut self, class_name: Option<&str>) -> Result<(), ModelError> {
        let word = object_word(class_name);
        if self.mode == PromptMode::Learned || word == self.object_word {
            return Ok(());
        }
        self.text_features =
            prompts::ensemble_text_features(&self.clip.text, &ClipTokenizer::new(), &word)?;
        self.object_word = word;
        Ok(())
    }

    /// The memory bank of normalised reference images [K, 3, S, S], computed exactly as the
    /// zero-shot map's features, one forward chunk at a time.
    pub fn memory_bank(&self, references: &Tensor) -> MemoryBank {
        let _guard = tch::no_grad_guard();
        let parts: Vec<MemoryBank> = references
            .split(forward_chunk(references, self.device()), 0)
            .iter()
            .map(|part| MemoryBank::from_features(&self.image_features(part).patch_features))
            .collect();
        MemoryBank::concat(&parts)
    }

    pub fn device(&self) -> Device {
        self.clip.text.device()
    }

    pub fn image_size(&self) -> i64 {
        self.config.image_size
    }

    pub fn dpam_options(&self) -> DpamOptions {
        DpamOptions {
            start: self.config.dpam_start,
            readout: self.config.readout.clone(),
            weight_original_path: self.config.lhw_paths == LhwPaths::Both,
            global_ln_post: self.config.global_ln_post,
        }
    }

    /// Global scores and per-layer maps for a batch of normalised images [B, 3, S, S]; with
    /// few-shot references, the per-layer maps are the fused ones.
    pub fn forward(&self, images: &Tensor, text_features: &Tensor) -> BatchOutput {
        let features = self.image_features(images);
        let side = images.size()[3];
        let out = self.maps_from_features(&features, text_features, side);
        match &self.few_shot {
            Some(fs) => {
                let patches: Vec<Tensor> = features
                    .patch_features
                    .iter()
                    .map(|f| f.to_kind(Kind::Float))
                    .collect();
                let distances = fewshot::distance_maps(&patches, &fs.bank, side);
                BatchOutput {
                    layer_maps: fewshot::fuse(&out.layer_maps, &distances, fs.beta),
                    global_score: out.global_score,
                }
            }
            None => out,
        }
    }

    /// The vision tower with this model's DPAM options and head weights: `g` and every `F_l`,
    /// in the towers' precision.
    pub fn image_features(&self, images: &Tensor) -> VisionOutput {
        // The patch embedding casts the images to the towers' precision.
        let images = images.to_device(self.device());
        let weights = |block: usize, h: &Tensor| {
            self.params
                .as_ref()
                .map(|p| head_weights(&self.config, p, block, h))
        };
        self.clip
            .vision
            .forward(&images, &self.dpam_options(), &weights)
    }

    /// Global scores and per-layer maps at `side`×`side` from a batch's image features.
    pub fn maps_from_features(
        &self,
        out: &VisionOutput,
        text_features: &Tensor,
        side: i64,
    ) -> BatchOutput {
        // Scores and maps in fp32 whatever precision the towers ran in.
        let text = text_features.to_kind(Kind::Float);
        let global = out.global.to_kind(Kind::Float);
        let features: Vec<Tensor> = out
            .patch_features
            .iter()
            .map(|f| f.to_kind(Kind::Float))
            .collect();
        let global_score = scoring::two_class_probabilities(&global, &text).select(1, 1);
        let layer_maps = scoring::layer_maps(&features, &text, side);
        BatchOutput {
            global_score,
            layer_maps,
        }
    }

    /// Scores a batch of normalised images [B, 3, S, S] (no autograd).
    ///
    /// On the CPU the batch is computed one image at a time: glibc serves allocations over
    /// 32 MB with fresh zero-filled pages on every call, and a batch's activations pass that
    /// size (ViT-B/16 at S = 512: 1.63 s per image at batch 8 against 1.26 s one at a time in
    /// fp32, 0.90 against 0.42 s in bf16); one image's stay under it.
    pub fn score(&self, images: &Tensor) -> Vec<ImageScore> {
        let _guard = tch::no_grad_guard();
        images
            .split(forward_chunk(images, self.device()), 0)
            .iter()
            .flat_map(|part| {
                tracing::debug!("forward pass of {} images", part.size()[0]);
                self.smooth_and_score(&self.forward(part, &self.text_features))
            })
            .collect()
    }

    /// Smoothing and the joint score, on the model's device; the maps then come to the CPU.
    pub fn smooth_and_score(&self, out: &BatchOutput) -> Vec<ImageScore> {
        let _guard = tch::no_grad_guard();
        let (maps, pixel) = scoring::smoothed_map_and_pixel_score(
            &out.layer_maps,
            self.config.smoothing_sigma,
            self.config.jas_top_fraction,
        ); // [B, S, S], [B]
        let (b, side) = (maps.size()[0], maps.size()[1]);
        let to_vec = |t: &Tensor| -> Vec<f32> {
            Vec::try_from(
                &t.to_kind(Kind::Float)
                    .to_device(Device::Cpu)
                    .contiguous()
                    .view([-1]),
            )
            .unwrap_or_default()
        };
        let (global, pixel, flat) = (to_vec(&out.global_score), to_vec(&pixel), to_vec(&maps));
        let plane = (side * side) as usize;
        (0..b as usize)
            .map(|i| ImageScore {
                score: scoring::joint_score(global[i], pixel[i], self.config.jas_lambda),
                global_score: global[i],
                pixel_score: pixel[i],
                map: flat[i * plane..(i + 1) * plane].to_vec(),
            })
            .collect()
    }
}
