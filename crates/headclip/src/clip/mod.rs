//! CLIP: the frozen backbone. Tokenizer, text and vision transformers, and the checkpoint
//! formats users hold. The vision transformer already carries HeadCLIP's value–value path,
//! because it shares the blocks' weights; what the paths are weighted with comes from
//! [`crate::model`].

mod backbone_config;
mod checkpoint;
mod config;
mod flops;
mod layers;
mod random;
mod text;
mod tokenizer;
mod vision;

pub use backbone_config::{
    find_checkpoint, paired_config, read_rules, rules_for_checkpoint, ConfigFileError,
};
pub use checkpoint::{load_state_dict, CheckpointError, CheckpointFormat, StateDict};
pub use config::{
    Activation, BackboneRules, ClipConfig, Dim, Heads, RulesSource, TextConfig, TowerRules,
    VisionConfig,
};
pub use flops::{workload_flops, WorkloadFlops, WorkloadShape};
pub use layers::l2_normalize as layers_l2_normalize;
pub use random::{
    random_clip, random_clip_digests, random_clip_safetensors, random_clip_specs,
    random_state_dict, seeded_tensor, Init, RandomClipShape, TensorSpec, RANDOM_MARKER,
    RANDOM_SHAPES,
};
pub use text::TextTransformer;
pub use tokenizer::{ClipTokenizer, TokenizeError, CONTEXT_LENGTH};
pub use vision::{DpamOptions, HeadWeightFn, Trunk, VisionOutput, VisionTransformer};

use tch::Device;

/// A loaded CLIP model: both towers, frozen.
pub struct Clip {
    pub config: ClipConfig,
    pub vision: VisionTransformer,
    pub text: TextTransformer,
}

impl Clip {
    /// Builds CLIP from a state dict in OpenAI's key layout under OpenAI's rules, moving the
    /// weights to `device`.
    pub fn from_state_dict(state: &StateDict, device: Device) -> Result<Self, CheckpointError> {
        Self::from_state_dict_with(state, &BackboneRules::openai(), device)
    }

    /// Builds CLIP from a state dict and the rules its config gives.
    pub fn from_state_dict_with(
        state: &StateDict,
        rules: &BackboneRules,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        crate::runtime::prepare();
        let config = ClipConfig::infer_with(state, rules)?;
        let vision = VisionTransformer::new(state, &config.vision, config.embed_dim, device)?;
        let text = TextTransformer::new(state, &config.text, config.embed_dim, device)?;
        Ok(Self {
            config,
            vision,
            text,
        })
    }
}
