//! The vision tower with HeadCLIP's two attention paths (spec: "Image encoder").
//!
//! Blocks before the DPAM start are ordinary. From block `l₀` on, each block also attends
//! value-to-value with the same weights, `z'_h = softmax(v_h v_hᵀ/√d) v_h`, and adds
//! `W_O·concat_h(w_{l,h} z'_h) + b_O` to a second residual stream `s` that starts from `o_{l₀−1}`
//! and never feeds a later block. Read-out layers give patch tokens from `s` (or `o` before `l₀`).

use tch::{Device, Kind, Tensor};

use super::checkpoint::{CheckpointError, StateDict};
use super::config::VisionConfig;
use super::layers::{attend, l2_normalize, load, load_f32, Block, LayerNorm};

pub struct VisionTransformer {
    pub config: VisionConfig,
    conv1: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    pub blocks: Vec<Block>,
    ln_post: LayerNorm,
    proj: Tensor,
}

/// How the two-path blocks run.
#[derive(Debug, Clone)]
pub struct DpamOptions {
    /// `l₀`, 1-based: the first block with the value–value path.
    pub start: usize,
    /// Read-out layers, 1-based, ascending.
    pub readout: Vec<usize>,
    /// Also scale the original path's heads (`lhw_paths = both`).
    pub weight_original_path: bool,
    /// Apply `ln_post` to the global token (standard CLIP) rather than AnomalyCLIP's plain token.
    pub global_ln_post: bool,
}

pub struct VisionOutput {
    /// `g`, L2-normalised: [B, E].
    pub global: Tensor,
    /// `F_l` per read-out layer in `readout` order, L2-normalised, CLS first: [B, N, E].
    pub patch_features: Vec<Tensor>,
}

/// Raw outputs of the blocks.
pub struct Trunk {
    /// `o_L[CLS]`: [B, D]
    pub global_token: Tensor,
    /// Tokens of each read-out layer (`s_l`, or `o_l` before `l₀`): [B, N, D]
    pub readout_tokens: Vec<Tensor>,
    /// Per two-path block, the unweighted value–value output `z'`: [B, H, N, d] (if kept).
    pub vv: Vec<Tensor>,
    /// Per two-path block, `LN1(o_{l−1})[CLS]`: [B, D] (if kept).
    pub ln1_cls: Vec<Tensor>,
}

impl Trunk {
    /// Joins the trunks of consecutive parts of a batch, in order.
    pub fn cat(parts: &[Trunk]) -> Trunk {
        let join = |pick: &dyn Fn(&Trunk) -> &Tensor| {
            Tensor::cat(&parts.iter().map(pick).collect::<Vec<_>>(), 0)
        };
        let first = &parts[0];
        Trunk {
            global_token: join(&|t| &t.global_token),
            readout_tokens: (0..first.readout_tokens.len())
                .map(|i| join(&|t| &t.readout_tokens[i]))
                .collect(),
            vv: (0..first.vv.len()).map(|i| join(&|t| &t.vv[i])).collect(),
            ln1_cls: (0..first.ln1_cls.len())
                .map(|i| join(&|t| &t.ln1_cls[i]))
                .collect(),
        }
    }
}

/// Head weights for one DPAM block: given the block's index from `l₀` (0-based) and
/// `LN1(o_{l−1})` [B, N, D], returns `w` [B, H], or `None` for all ones.
pub type HeadWeightFn<'a> = dyn Fn(usize, &Tensor) -> Option<Tensor> + 'a;

impl VisionTransformer {
    pub fn new(
        state: &StateDict,
        config: &VisionConfig,
        embed_dim: i64,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        let (w, p, g) = (config.width, config.patch, config.pretrained_grid);
        let blocks = (0..config.layers)
            .map(|i| {
                Block::new(
                    state,
                    &format!("visual.transformer.resblocks.{i}"),
                    w,
                    config.heads,
                    config.activation,
                    device,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            config: config.clone(),
            conv1: load(state, "visual.conv1.weight", &[w, 3, p, p], device)?,
            class_embedding: load_f32(state, "visual.class_embedding", &[w], device)?,
            positional_embedding: load_f32(
                state,
                "visual.positional_embedding",
                &[g * g + 1, w],
                device,
            )?,
            ln_pre: LayerNorm::new(state, "visual.ln_pre", w, device)?,
            blocks,
            ln_post: LayerNorm::new(state, "visual.ln_post", w, device)?,
            proj: load_f32(state, "visual.proj", &[w, embed_dim], device)?,
        })
    }

    /// The positional embedding for a `grid`×`grid` input: the patch part resized bilinearly
    /// (align_corners false) when the grid differs from the pretrained one; CLS kept. [N, D]
    fn positional_embedding(&self, grid: i64) -> Tensor {
        let g0 = self.config.pretrained_grid;
        if grid == g0 {
            return self.positional_embedding.shallow_clone();
        }
        let d = self.config.width;
        let cls = self.positional_embedding.narrow(0, 0, 1);
        let patch = self
            .positional_embedding
            .narrow(0, 1, g0 * g0)
            .view([1, g0, g0, d])
            .permute([0, 3, 1, 2]);
        let patch = patch.upsample_bilinear2d([grid, grid], false, None, None);
        let patch = patch.permute([0, 2, 3, 1]).reshape([grid * grid, d]);
        Tensor::cat(&[cls, patch], 0)
    }

    /// images: [B, 3, S, S] (normalised), S a multiple of the patch size.
    pub fn forward(
        &self,
        images: &Tensor,
        opts: &DpamOptions,
        head_weights: &HeadWeightFn,
    ) -> VisionOutput {
        let trunk = self.trunk(images, opts, head_weights, false);
        VisionOutput {
            global: self.project_global(&trunk.global_token, opts.global_ln_post),
            patch_features: trunk
                .readout_tokens
                .iter()
                .map(|t| self.project_patch(t))
                .collect(),
        }
    }

    /// The blocks, returning the raw tokens. With `keep_vv`, also what the value–value path's
    /// gradient needs: each two-path block's unweighted `z'` and `LN1(o_{l−1})`'s CLS token.
    pub fn trunk(
        &self,
        images: &Tensor,
        opts: &DpamOptions,
        head_weights: &HeadWeightFn,
        keep_vv: bool,
    ) -> Trunk {
        let mut o = self.embed(images); // [B, N, D]
        let mut s: Option<Tensor> = None;
        let mut trunk = Trunk {
            global_token: Tensor::new(),
            readout_tokens: Vec::with_capacity(opts.readout.len()),
            vv: Vec::new(),
            ln1_cls: Vec::new(),
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let layer = i + 1;
            if layer < opts.start {
                o = block.forward(&o, false);
            } else {
                let keep = keep_vv.then_some(&mut trunk);
                let (o_next, s_next) =
                    self.two_path_block(layer, &o, s.as_ref(), opts, head_weights, keep);
                (o, s) = (o_next, Some(s_next));
            }
            if opts.readout.contains(&layer) {
                let tokens = s.as_ref().unwrap_or(&o).shallow_clone();
                trunk.readout_tokens.push(tokens);
            }
        }
        trunk.global_token = o.select(1, 0);
        trunk
    }

    /// Patch embedding, CLS token, positional embedding and `ln_pre`: `o_0` [B, N, D].
    pub fn embed(&self, images: &Tensor) -> Tensor {
        let images = images.to_kind(self.conv1.kind());
        let b = images.size()[0];
        let d = self.config.width;
        // The stride-p, p×p patch convolution as one matmul over the non-overlapping patches:
        // oneDNN's convolution allocates and faults in fresh scratch memory on every call.
        let (p, side) = (self.config.patch, images.size()[3]);
        let grid = side / p;
        let patches = images
            .view([b, 3, grid, p, grid, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, grid * grid, 3 * p * p]); // [B, G², 3p²]
        let x = patches
            .matmul(&self.conv1.view([d, 3 * p * p]).tr())
            .to_kind(Kind::Float); // [B, G², D]
        let cls = self
            .class_embedding
            .view([1, 1, d])
            .expand([b, 1, d], false);
        let x = Tensor::cat(&[cls, x], 1) + self.positional_embedding(grid);
        self.ln_pre.forward(&x)
    }

    /// Two-path block `layer` (1-based, ≥ l₀): `(o_{l−1}, s_{l−1}) → (o_l, s_l)`, where `s`
    /// starts from `o_{l₀−1}` (pass `None` at `l₀`). With `keep`, records the block's `z'` and
    /// `LN1(o_{l−1})[CLS]` there.
    pub fn two_path_block(
        &self,
        layer: usize,
        o: &Tensor,
        s: Option<&Tensor>,
        opts: &DpamOptions,
        head_weights: &HeadWeightFn,
        keep: Option<&mut Trunk>,
    ) -> (Tensor, Tensor) {
        let block = &self.blocks[layer - 1];
        let b = o.size()[0];
        let h = block.ln_1.forward(o);
        let (q, k, v) = block.attn.qkv(&h);
        let w = head_weights(layer - opts.start, &h)
            .map(|w| w.view([b, block.attn.heads, 1, 1]).to_kind(v.kind()));
        let z_vv = attend(&v, &v, &v, false); // [B, H, N, d]
        if let Some(trunk) = keep {
            trunk.vv.push(z_vv.shallow_clone());
            trunk.ln1_cls.push(h.select(1, 0));
        }
        let z_vv = match &w {
            Some(w) => z_vv * w,
            None => z_vv,
        };
        let s = s.unwrap_or(o) + block.attn.merge(&z_vv);
        let z = attend(&q, &k, &v, false);
        let z = match (&w, opts.weight_original_path) {
            (Some(w), true) => z * w,
            _ => z,
        };
        let o = block.mlp_residual(&(o + block.attn.merge(&z)));
        (o, s)
    }

    /// `g = o_L[CLS]·proj` (after `ln_post` if asked), L2-normalised. [B, D] → [B, E]
    pub fn project_global(&self, token: &Tensor, ln_post: bool) -> Tensor {
        let token = if ln_post {
            self.ln_post.forward(token)
        } else {
            token.shallow_clone()
        };
        l2_normalize(&token.matmul(&self.proj))
    }

    /// `F_l = ln_post(tokens)·proj`, L2-normalised per token. [B, N, D] → [B, N, E]
    pub fn project_patch(&self, tokens: &Tensor) -> Tensor {
        l2_normalize(&self.ln_post.forward(tokens).matmul(&self.proj))
    }

    pub fn kind(&self) -> Kind {
        self.conv1.kind()
    }
}
