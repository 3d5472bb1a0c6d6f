//! Architecture read off a checkpoint's tensor shapes, never off its file name.

use super::checkpoint::{CheckpointError, StateDict};

/// Vision tower: `layers` blocks of `width` with `heads` heads, `patch`×`patch` patches, and a
/// positional embedding made for a `pretrained_grid`² grid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VisionConfig {
    pub width: i64,
    pub layers: usize,
    pub heads: i64,
    pub patch: i64,
    pub pretrained_grid: i64,
}

/// Text tower.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TextConfig {
    pub width: i64,
    pub layers: usize,
    pub heads: i64,
    pub context_length: i64,
    pub vocab_size: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClipConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub embed_dim: i64,
}

/// OpenAI's loader fixes the head size at 64.
const HEAD_SIZE: i64 = 64;

impl ClipConfig {
    pub fn infer(state: &StateDict) -> Result<Self, CheckpointError> {
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
        let vision_layers = state.count_blocks("visual.transformer.resblocks.");
        let text_width = state.shape("ln_final.weight")?[0];
        let text_projection = state.shape("text_projection")?;
        if text_projection.len() != 2 || text_projection[0] != text_width {
            return Err(CheckpointError::shape(
                "text_projection",
                "[text width, embed]",
                &text_projection,
            ));
        }
        let token_embedding = state.shape("token_embedding.weight")?;
        let context = state.shape("positional_embedding")?;
        let config = Self {
            vision: VisionConfig {
                width,
                layers: vision_layers,
                heads: width / HEAD_SIZE,
                patch,
                pretrained_grid: grid,
            },
            text: TextConfig {
                width: text_width,
                layers: state.count_blocks("transformer.resblocks."),
                heads: text_width / HEAD_SIZE,
                context_length: context[0],
                vocab_size: token_embedding[0],
            },
            embed_dim: text_projection[1],
        };
        if config.vision.layers == 0 || config.text.layers == 0 {
            return Err(CheckpointError::NotClip(
                "no transformer blocks found (visual.transformer.resblocks.* / transformer.resblocks.*)".into(),
            ));
        }
        if config.vision.heads == 0 || config.text.heads == 0 {
            return Err(CheckpointError::NotClip(format!(
                "widths {} (vision) and {} (text) give no 64-wide heads",
                width, text_width
            )));
        }
        Ok(config)
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
