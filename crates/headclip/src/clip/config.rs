//! Architecture read off a checkpoint's tensor shapes, never off its file name, completed by
//! the facts shapes do not tell (head width, MLP activation, normalisation): those come from the
//! checkpoint's config ([`super::backbone_config`]), or from OpenAI's rules where it has none.

use std::path::{Path, PathBuf};

use headclip_data::images::Normalization;

use super::checkpoint::{CheckpointError, StateDict};

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x·σ(1.702x)`, as OpenAI's CLIP was trained with.
    QuickGelu,
    /// Exact GELU, `x·Φ(x)` (erf), as OpenCLIP's LAION models were trained with.
    Gelu,
}

/// Vision tower: `layers` blocks of `width` with `heads` heads, `patch`×`patch` patches, and a
/// positional embedding made for a `pretrained_grid`² grid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VisionConfig {
    pub width: i64,
    pub layers: usize,
    pub heads: i64,
    pub patch: i64,
    pub pretrained_grid: i64,
    pub activation: Activation,
}

/// Text tower.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TextConfig {
    pub width: i64,
    pub layers: usize,
    pub heads: i64,
    pub context_length: i64,
    pub vocab_size: i64,
    pub activation: Activation,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClipConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub embed_dim: i64,
    /// The mean and std images are normalised with.
    #[serde(skip)]
    pub normalization: Normalization,
    /// Where head widths, activations and normalisation came from.
    pub rules: RulesSource,
}

/// How a tower's head count is stated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heads {
    /// Each head this wide (OpenAI's rule, OpenCLIP's `vision_cfg.head_width`).
    Width(i64),
    /// This many heads (OpenCLIP's `text_cfg.heads`, Hugging Face's `num_attention_heads`).
    Count(i64),
}

/// What the shapes do not tell about one tower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TowerRules {
    pub heads: Heads,
    /// The config key the head rule came from, for error messages.
    pub heads_key: String,
    pub activation: Activation,
}

/// A size that a tensor shape fixes; a config stating it is checked against the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    VisionWidth,
    VisionLayers,
    VisionMlpWidth,
    Patch,
    PretrainedSide,
    TextWidth,
    TextLayers,
    TextMlpWidth,
    ContextLength,
    VocabSize,
    EmbedDim,
}

/// Where the rules came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RulesSource {
    /// No config: OpenAI's rules (64-wide heads, QuickGELU, CLIP's mean and std) were assumed.
    OpenAiAssumed,
    /// These config files, with their sha256.
    Config { files: Vec<(PathBuf, String)> },
}

impl RulesSource {
    /// One line for logs and errors: the files and their digests, or that none was read.
    pub fn describe(&self) -> String {
        self.list(|path| path.display().to_string())
    }

    /// What a training run records: the files' names (not their folders, so that a moved copy
    /// still resumes) and digests, or that none was read.
    pub fn provenance(&self) -> String {
        self.list(|path| {
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        })
    }

    fn list(&self, name: impl Fn(&Path) -> String) -> String {
        match self {
            RulesSource::OpenAiAssumed => "no config (OpenAI's rules assumed)".into(),
            RulesSource::Config { files } => files
                .iter()
                .map(|(path, sha)| format!("{} (sha256 {sha})", name(path)))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Everything a checkpoint's shapes do not tell.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneRules {
    pub vision: TowerRules,
    pub text: TowerRules,
    pub normalization: Normalization,
    /// Sizes the config states (key, value), to be checked against the tensors.
    pub declared: Vec<(String, Dim, i64)>,
    pub source: RulesSource,
}

/// OpenAI's loader fixes the head size at 64.
const OPENAI_HEAD_WIDTH: i64 = 64;

impl BackboneRules {
    /// OpenAI's rules, for checkpoints without a config: 64-wide heads and QuickGELU in both
    /// towers, CLIP's normalisation.
    pub fn openai() -> Self {
        let tower = |name: &str| TowerRules {
            heads: Heads::Width(OPENAI_HEAD_WIDTH),
            heads_key: format!("OpenAI's {OPENAI_HEAD_WIDTH}-wide {name} heads"),
            activation: Activation::QuickGelu,
        };
        Self {
            vision: tower("vision"),
            text: tower("text"),
            normalization: Normalization::CLIP,
            declared: Vec::new(),
            source: RulesSource::OpenAiAssumed,
        }
    }
}

/// The sizes the tensors fix.
struct Shapes {
    vision_width: i64,
    vision_layers: usize,
    patch: i64,
    grid: i64,
    text_width: i64,
    text_layers: usize,
    context_length: i64,
    vocab_size: i64,
    embed_dim: i64,
    vision_mlp: i64,
    text_mlp: i64,
}

impl Shapes {
    fn read(state: &StateDict) -> Result<Self, CheckpointError> {
        let conv = state.shape("visual.conv1.weight")?;
        if conv.len() != 4 || conv[1] != 3 || conv[2] != conv[3] {
            return Err(CheckpointError::shape(
                "visual.conv1.weight",
                "[width, 3, P, P]",
                &conv,
            ));
        }
        let (width, patch) = (conv[0], conv[2]);
        let pos = state.shape("visual.positional_embedding")?;
        let grid = ((pos[0] - 1) as f64).sqrt().round() as i64;
        if pos.len() != 2 || grid * grid + 1 != pos[0] || pos[1] != width {
            return Err(CheckpointError::shape(
                "visual.positional_embedding",
                "[grid² + 1, width]",
                &pos,
            ));
        }
        let text_width = state.shape("ln_final.weight")?[0];
        let text_projection = state.shape("text_projection")?;
        if text_projection.len() != 2 || text_projection[0] != text_width {
            return Err(CheckpointError::shape(
                "text_projection",
                "[text width, embed]",
                &text_projection,
            ));
        }
        let shapes = Self {
            vision_width: width,
            vision_layers: state.count_blocks("visual.transformer.resblocks."),
            patch,
            grid,
            text_width,
            text_layers: state.count_blocks("transformer.resblocks."),
            context_length: state.shape("positional_embedding")?[0],
            vocab_size: state.shape("token_embedding.weight")?[0],
            embed_dim: text_projection[1],
            vision_mlp: mlp_width(state, "visual.transformer.resblocks.0"),
            text_mlp: mlp_width(state, "transformer.resblocks.0"),
        };
        if shapes.vision_layers == 0 || shapes.text_layers == 0 {
            return Err(CheckpointError::NotClip(
                "no transformer blocks found (visual.transformer.resblocks.* / transformer.resblocks.*)".into(),
            ));
        }
        Ok(shapes)
    }

    fn get(&self, dim: Dim) -> i64 {
        match dim {
            Dim::VisionWidth => self.vision_width,
            Dim::VisionLayers => self.vision_layers as i64,
            Dim::VisionMlpWidth => self.vision_mlp,
            Dim::Patch => self.patch,
            Dim::PretrainedSide => self.patch * self.grid,
            Dim::TextWidth => self.text_width,
            Dim::TextLayers => self.text_layers as i64,
            Dim::TextMlpWidth => self.text_mlp,
            Dim::ContextLength => self.context_length,
            Dim::VocabSize => self.vocab_size,
            Dim::EmbedDim => self.embed_dim,
        }
    }
}

/// The hidden width of a block's MLP (0 when the block lacks it; building the block names it).
fn mlp_width(state: &StateDict, block: &str) -> i64 {
    state
        .shape(&format!("{block}.mlp.c_fc.weight"))
        .map_or(0, |s| s[0])
}

/// The head count `rules` give a tower of `width`, refused when the width does not split.
fn head_count(width: i64, tower: &str, rules: &TowerRules) -> Result<i64, String> {
    let (heads, head_width) = match rules.heads {
        Heads::Width(w) => (width / w, w),
        Heads::Count(h) => (h, width / h),
    };
    if heads * head_width != width {
        return Err(format!(
            "{}: the {tower} width {width} does not split into {} heads",
            rules.heads_key,
            match rules.heads {
                Heads::Width(w) => format!("{w}-wide"),
                Heads::Count(h) => h.to_string(),
            }
        ));
    }
    Ok(heads)
}

/// Checks that the tensors are a CLIP checkpoint this engine can build, before any rule applies.
pub(crate) fn check_shapes(state: &StateDict) -> Result<(), CheckpointError> {
    Shapes::read(state).map(|_| ())
}

impl ClipConfig {
    /// The architecture under OpenAI's rules, for checkpoints without a config.
    pub fn infer(state: &StateDict) -> Result<Self, CheckpointError> {
        Self::infer_with(state, &BackboneRules::openai())
    }

    /// The architecture from the tensors' shapes and `rules`; a size the config states that the
    /// tensors contradict, or a width its heads do not split, is refused with the reason.
    pub fn infer_with(state: &StateDict, rules: &BackboneRules) -> Result<Self, CheckpointError> {
        let shapes = Shapes::read(state)?;
        let contradiction = |message: String| CheckpointError::Config {
            config: rules.source.describe(),
            message,
        };
        for (key, dim, stated) in &rules.declared {
            let actual = shapes.get(*dim);
            if actual != *stated {
                return Err(contradiction(format!(
                    "{key} is {stated}, but the checkpoint's tensors give {actual}"
                )));
            }
        }
        let vision_heads =
            head_count(shapes.vision_width, "vision", &rules.vision).map_err(contradiction)?;
        let text_heads =
            head_count(shapes.text_width, "text", &rules.text).map_err(contradiction)?;
        Ok(Self {
            vision: VisionConfig {
                width: shapes.vision_width,
                layers: shapes.vision_layers,
                heads: vision_heads,
                patch: shapes.patch,
                pretrained_grid: shapes.grid,
                activation: rules.vision.activation,
            },
            text: TextConfig {
                width: shapes.text_width,
                layers: shapes.text_layers,
                heads: text_heads,
                context_length: shapes.context_length,
                vocab_size: shapes.vocab_size,
                activation: rules.text.activation,
            },
            embed_dim: shapes.embed_dim,
            normalization: rules.normalization,
            rules: rules.source.clone(),
        })
    }

    /// A short name like `ViT-B/16` (with `@336px` when the pretrained grid says so).
    pub fn name(&self) -> String {
        let size = match (self.vision.width, self.vision.layers) {
            (768, 12) => "B",
            (1024, 24) => "L",
            (1280, 32) => "H",
            _ => "custom",
        };
        let res = self.vision.patch * self.vision.pretrained_grid;
        let suffix = if res == 224 {
            String::new()
        } else {
            format!("@{res}px")
        };
        format!("ViT-{size}/{}{suffix}", self.vision.patch)
    }

    /// The spec's default input side: 518 for patch 14, otherwise the multiple of the patch size
    /// nearest to 518.
    pub fn default_image_size(&self) -> i64 {
        let p = self.vision.patch;
        ((518.0 / p as f64).round() as i64).max(1) * p
    }
}
