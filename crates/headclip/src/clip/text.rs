//! The causal text tower. It reads token embeddings rather than ids, so that learned prompt
//! vectors can stand in for template words, and it overwrites the first tokens before some
//! blocks with deep prompts (spec: "Text encoder and prompts").

use tch::{Device, Tensor};

use super::checkpoint::{CheckpointError, StateDict};
use super::config::TextConfig;
use super::layers::{l2_normalize, load, load_f32, Block, LayerNorm};

pub struct TextTransformer {
    pub config: TextConfig,
    token_embedding: Tensor,
    positional_embedding: Tensor,
    blocks: Vec<Block>,
    ln_final: LayerNorm,
    projection: Tensor,
}

/// Deep prompts overwrite token positions 1…4.
pub const DEEP_PROMPT_TOKENS: i64 = 4;

impl TextTransformer {
    pub fn new(
        state: &StateDict,
        config: &TextConfig,
        embed_dim: i64,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        let w = config.width;
        let blocks = (0..config.layers)
            .map(|i| {
                Block::new(
                    state,
                    &format!("transformer.resblocks.{i}"),
                    w,
                    config.heads,
                    config.activation,
                    device,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            config: config.clone(),
            token_embedding: load(
                state,
                "token_embedding.weight",
                &[config.vocab_size, w],
                device,
            )?,
            positional_embedding: load_f32(
                state,
                "positional_embedding",
                &[config.context_length, w],
                device,
            )?,
            blocks,
            ln_final: LayerNorm::new(state, "ln_final", w, device)?,
            projection: load_f32(state, "text_projection", &[w, embed_dim], device)?,
        })
    }

    /// ids: [B, C] int64 → [B, C, W]
    pub fn embed_tokens(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(
            &self.token_embedding,
            &ids.to_device(self.token_embedding.device()),
            -1,
            false,
            false,
        )
    }

    /// Runs the tower on token embeddings `x` [B, C, W]; the feature is read at `eot` [B]
    /// (each sequence's EOT index). `deep[i]` [4, W] replaces positions 1…4 before block `i + 2`
    /// (1-based). Returns L2-normalised features [B, E].
    ///
    /// Attention is causal, so tokens after the last EOT cannot change any EOT feature: the
    /// sequences are cut there (never before the deep prompts' positions), which makes short
    /// prompts several times cheaper (a learned prompt uses about 20 of the 77 positions).
    pub fn encode_embeddings(&self, x: &Tensor, eot: &Tensor, deep: &[Tensor]) -> Tensor {
        let b = x.size()[0];
        let used = (eot.max().int64_value(&[]) + 1).max(1 + DEEP_PROMPT_TOKENS);
        let c = x.size()[1].min(used);
        let x = x.narrow(1, 0, c);
        let mut x = x + self.positional_embedding.narrow(0, 0, c);
        for (i, block) in self.blocks.iter().enumerate() {
            if i >= 1 && i <= deep.len() {
                let prompt = deep[i - 1]
                    .to_kind(x.kind())
                    .unsqueeze(0)
                    .expand([b, DEEP_PROMPT_TOKENS, self.config.width], false);
                x = Tensor::cat(
                    &[
                        x.narrow(1, 0, 1),
                        prompt,
                        x.narrow(1, 1 + DEEP_PROMPT_TOKENS, c - 1 - DEEP_PROMPT_TOKENS),
                    ],
                    1,
                );
            }
            x = block.forward(&x, true);
        }
        let x = self.ln_final.forward(&x);
        let rows = Tensor::arange(b, (tch::Kind::Int64, x.device()));
        let at_eot = x.index(&[Some(rows), Some(eot.to_device(x.device()))]); // [B, W]
        l2_normalize(&at_eot.matmul(&self.projection))
    }

    /// Plain CLIP text encoding of token ids [B, C]; EOT is the largest id, as in OpenAI's code.
    pub fn encode_tokens(&self, ids: &Tensor) -> Tensor {
        let eot = ids.argmax(-1, false);
        self.encode_embeddings(&self.embed_tokens(ids), &eot, &[])
    }

    pub fn device(&self) -> Device {
        self.token_embedding.device()
    }

    /// Text blocks available for deep prompts (`n_deep + 1 ≤ layers`).
    pub fn layers(&self) -> usize {
        self.blocks.len()
    }
}
