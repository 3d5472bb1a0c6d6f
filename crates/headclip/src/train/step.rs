//! One training step's loss and gradients.
//!
//! With head weights on the value–value path only (`lhw_paths = vv`), a block's weights reach
//! the output only through the stream `s`, which is a sum:
//! `s_l = s_{l₀−1} + Σ_{j ≤ l} (W_O,j · concat_h(w_{j,h} z'_{j,h}) + b_O,j)`.
//! So `∂L/∂w_{j,h} = Σ_b,n ⟨(Σ_{l ∈ R, l ≥ j} ∂L/∂s_l) W_O,j |_h , z'_{j,h}⟩`: the image trunk runs
//! once without autograd, keeping each block's `z'`, and autograd only runs from the read-out
//! tokens onwards (and through the text tower for the prompts). With `lhw_paths = both` the
//! weights change the trunk itself, and autograd runs through all of it; with gradient
//! checkpointing the two-path blocks run once without autograd, keeping only each block's input
//! streams, and are run again one at a time, last first, to back-propagate through each.

use tch::{Kind, Tensor};

use super::loss::{global_loss, joint_loss, pixel_loss, LossTerms};
use crate::clip::{Clip, ClipTokenizer, DpamOptions, HeadWeightFn, Trunk, VisionTransformer};
use crate::model::prompts::learned_text_features;
use crate::model::scoring::upsampled_probabilities;
use crate::model::{head_weights, HeadClipParams, LhwPaths, ResolvedConfig};

/// A batch on the model's device.
pub struct Batch {
    /// Normalised images: [B, 3, S, S]
    pub images: Tensor,
    /// 1 = anomalous: [B] int64
    pub labels: Tensor,
    /// 0/1 masks (all 0 for normal images and for images without one): [B, S, S] f32
    pub masks: Tensor,
    /// Per image, whether its mask is ground truth (its data set has masks; a normal image's is
    /// then empty). The pixel terms are computed over these images only (the spec's mixed data).
    pub mask_known: Vec<bool>,
}

impl Batch {
    /// The rows whose masks are ground truth, as an index tensor on the batch's device.
    fn masked_rows(&self) -> Option<Tensor> {
        let rows: Vec<i64> = (0i64..)
            .zip(&self.mask_known)
            .filter_map(|(i, &known)| known.then_some(i))
            .collect();
        (!rows.is_empty()).then(|| Tensor::from_slice(&rows).to_device(self.masks.device()))
    }
}

/// Which loss terms are used.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossSelection {
    pub global: bool,
    pub pixel: bool,
    /// Weight of the binary cross-entropy of the joint anomaly score (0: the term is off, as in
    /// the AnomalyCLIP protocol).
    #[serde(default)]
    pub joint_weight: f64,
}

impl Default for LossSelection {
    fn default() -> Self {
        Self {
            global: true,
            pixel: true,
            joint_weight: 0.0,
        }
    }
}

/// A batch's loss terms as tensors (scalars), `total` being what is back-propagated.
pub struct BatchLoss {
    pub ce: Tensor,
    pub focal: Tensor,
    pub dice: Tensor,
    pub joint: Tensor,
    pub total: Tensor,
}

impl BatchLoss {
    fn terms(&self) -> LossTerms {
        LossTerms {
            total: self.total.double_value(&[]),
            ce: self.ce.double_value(&[]),
            focal: self.focal.double_value(&[]),
            dice: self.dice.double_value(&[]),
            joint: self.joint.double_value(&[]),
        }
    }
}

/// The trainable tensors of `params`, in a fixed order (names as in the parameters file).
pub fn trainable(params: &HeadClipParams) -> Vec<(String, &Tensor)> {
    let mut out: Vec<(String, &Tensor)> = vec![
        ("prompt.ctx_pos".into(), &params.ctx_pos),
        ("prompt.ctx_neg".into(), &params.ctx_neg),
    ];
    out.extend(
        params
            .deep
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("prompt.deep.{i}"), t)),
    );
    out.push(("lhw.theta".into(), &params.theta));
    if let Some(u) = &params.u {
        out.push(("lhw.u".into(), u));
    }
    out
}

/// Computes the batch loss and leaves the gradients in the trainable tensors' `.grad()`
/// (which must require grad; they are zeroed first). `gradient_checkpointing` matters with
/// `lhw_paths = both` only: it trades one more forward pass of the two-path blocks for keeping
/// one block's activations at a time instead of the whole trunk's.
pub fn loss_and_gradients(
    clip: &Clip,
    tokenizer: &ClipTokenizer,
    config: &ResolvedConfig,
    params: &HeadClipParams,
    batch: &Batch,
    terms: LossSelection,
    gradient_checkpointing: bool,
) -> Result<LossTerms, crate::clip::TokenizeError> {
    for (_, t) in trainable(params) {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let opts = DpamOptions {
        start: config.dpam_start,
        readout: config.readout.clone(),
        weight_original_path: config.lhw_paths == LhwPaths::Both,
        global_ln_post: config.global_ln_post,
    };
    let target = LossTarget {
        text: learned_text_features(&clip.text, tokenizer, params)?, // [2, E], with grad
        vision: &clip.vision,
        batch,
        terms,
        config,
    };
    let weights = |block: usize, h: &Tensor| Some(head_weights(config, params, block, h));
    let loss = match (config.lhw_paths, gradient_checkpointing) {
        (LhwPaths::Both, true) => {
            checkpointed_both_paths(&clip.vision, &opts, &weights, &batch.images, &target)
        }
        (LhwPaths::Both, false) => {
            let trunk = clip.vision.trunk(&batch.images, &opts, &weights, false);
            let global = clip
                .vision
                .project_global(&trunk.global_token, opts.global_ln_post);
            let loss = target.loss(&global, &trunk.readout_tokens);
            loss.total.backward();
            loss
        }
        (LhwPaths::Vv, _) => value_value_path(&target, &opts, &weights, params),
    };
    Ok(loss.terms())
}

/// What a batch's loss is computed against: the text features (with grad), the images' labels
/// and masks, and the terms in use.
struct LossTarget<'a> {
    text: Tensor,
    vision: &'a VisionTransformer,
    batch: &'a Batch,
    terms: LossSelection,
    config: &'a ResolvedConfig,
}

impl LossTarget<'_> {
    /// The batch loss from the global feature and the read-out tokens.
    fn loss(&self, global: &Tensor, readout: &[Tensor]) -> BatchLoss {
        let (text, batch, terms) = (&self.text, self.batch, self.terms);
        let zero = || Tensor::zeros([], (Kind::Float, text.device()));
        let side = batch.masks.size()[1];
        let ce = if terms.global {
            global_loss(global, text, &batch.labels)
        } else {
            zero()
        };
        let probabilities: Vec<Tensor> = if terms.pixel || terms.joint_weight > 0.0 {
            readout
                .iter()
                .map(|tokens| {
                    upsampled_probabilities(&self.vision.project_patch(tokens), text, side)
                })
                .collect()
        } else {
            Vec::new()
        };
        let (mut focal, mut dice) = (zero(), zero());
        if let Some(rows) = batch.masked_rows().filter(|_| terms.pixel) {
            let masks = batch.masks.index_select(0, &rows);
            for p in &probabilities {
                let (f, d) = pixel_loss(&p.index_select(0, &rows), &masks);
                focal += f;
                dice += d;
            }
        }
        let joint = if terms.joint_weight > 0.0 {
            joint_loss(global, text, &probabilities, &batch.labels, self.config)
        } else {
            zero()
        };
        let total = &ce + &focal + &dice + &joint * terms.joint_weight;
        BatchLoss {
            ce,
            focal,
            dice,
            joint,
            total,
        }
    }
}

/// `lhw_paths = vv`: the trunk without autograd, keeping `z'` per two-path block; autograd from
/// the read-out tokens on; then the head weights' gradients from the stream's sums (module doc).
fn value_value_path(
    target: &LossTarget,
    opts: &DpamOptions,
    weights: &HeadWeightFn,
    params: &HeadClipParams,
) -> BatchLoss {
    let (vision, images) = (target.vision, &target.batch.images);
    let (trunk, global) = {
        let _guard = tch::no_grad_guard();
        // On the CPU one image at a time, as in inference (`HeadClip::score` says why).
        let parts: Vec<Trunk> = images
            .split(crate::model::forward_chunk(images, images.device()), 0)
            .iter()
            .map(|images| vision.trunk(images, opts, weights, true))
            .collect();
        let trunk = Trunk::cat(&parts);
        let global = vision.project_global(&trunk.global_token, opts.global_ln_post);
        (trunk, global)
    };
    let leaves: Vec<Tensor> = trunk
        .readout_tokens
        .iter()
        .map(|t| t.detach().set_requires_grad(true))
        .collect();
    let loss = target.loss(&global, &leaves);
    loss.total.backward();
    let terms = target.terms;
    // Without the pixel and joint terms nothing reads the value–value stream: θ gets no
    // gradient.
    if terms.pixel || terms.joint_weight > 0.0 {
        let grads = head_weight_gradients(vision, target.config, &trunk, &leaves);
        backpropagate_head_weights(target.config, params, &trunk, &grads);
    }
    loss
}

/// `∂L/∂w` per two-path block ([B, H], `None` for blocks before the first read-out), from
/// suffix sums of the read-out gradients.
fn head_weight_gradients(
    vision: &VisionTransformer,
    config: &ResolvedConfig,
    trunk: &Trunk,
    leaves: &[Tensor],
) -> Vec<Option<Tensor>> {
    let blocks = &vision.blocks[config.dpam_start - 1..];
    let mut suffix: Option<Tensor> = None;
    let mut grads: Vec<Option<Tensor>> = (0..blocks.len()).map(|_| None).collect();
    for j in (0..blocks.len()).rev() {
        let layer = config.dpam_start + j;
        if let Some(r) = config.readout.iter().position(|&l| l == layer) {
            let g = leaves[r].grad();
            suffix = Some(match suffix.take() {
                Some(s) => s + g,
                None => g,
            });
        }
        let Some(grad_s) = &suffix else { continue };
        // In fp32 whatever precision the trunk ran in (`--precision bf16` trains mixed).
        let z = trunk.vv[j].to_kind(Kind::Float); // [B, H, N, d]
        let (b, h, n, d) = z.size4().expect("z' is [B, H, N, d]");
        let out_proj = blocks[j].attn.out_proj_weight().to_kind(Kind::Float);
        let grad_concat = grad_s.matmul(&out_proj); // [B, N, H·d]
        let grad_z = grad_concat.view([b, n, h, d]).transpose(1, 2);
        grads[j] = Some((grad_z * &z).sum_dim_intlist([2, 3].as_slice(), false, Kind::Float));
    }
    grads
}

/// The chain rule from `w` to θ (and U) through the tiny graph of the head-weight function.
fn backpropagate_head_weights(
    config: &ResolvedConfig,
    params: &HeadClipParams,
    trunk: &Trunk,
    grads: &[Option<Tensor>],
) {
    let mut surrogate: Option<Tensor> = None;
    for (j, grad) in grads.iter().enumerate() {
        let Some(grad) = grad else { continue };
        let h_cls = trunk.ln1_cls[j].unsqueeze(1); // the function reads h[:, 0]
        let w = head_weights(config, params, j, &h_cls);
        let term = (w * grad).sum(Kind::Float);
        surrogate = Some(match surrogate.take() {
            Some(s) => s + term,
            None => term,
        });
    }
    if let Some(s) = surrogate.filter(Tensor::requires_grad) {
        s.backward();
    }
}

/// `lhw_paths = both` with gradient checkpointing.
///
/// Blocks before `l₀` depend on no trainable tensor and run without autograd. The two-path
/// blocks run without autograd too, keeping their input streams `(o_{l−1}, s_{l−1})`; the loss
/// back-propagates to the read-out tokens and `o_L`; then each block, last first, runs again with
/// autograd from its saved inputs, and `Σ⟨∂L/∂o_l, o_l⟩ + ⟨∂L/∂s_l, s_l⟩` back-propagates through
/// it alone, leaving its share of the head-weight gradients and the gradients of its inputs.
fn checkpointed_both_paths(
    vision: &VisionTransformer,
    opts: &DpamOptions,
    weights: &HeadWeightFn,
    images: &Tensor,
    target: &LossTarget,
) -> BatchLoss {
    let layers = vision.blocks.len();
    let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
    let mut readout: Vec<Tensor> = Vec::with_capacity(opts.readout.len());
    // inputs[j] = (o, s) entering two-path block l₀ + j.
    let mut inputs: Vec<(Tensor, Option<Tensor>)> = Vec::new();
    let o_last = {
        let _guard = tch::no_grad_guard();
        let mut o = vision.embed(images);
        let mut s: Option<Tensor> = None;
        for layer in 1..=layers {
            if layer < opts.start {
                o = vision.blocks[layer - 1].forward(&o, false);
            } else {
                inputs.push((o.shallow_clone(), s.as_ref().map(Tensor::shallow_clone)));
                let (o_next, s_next) =
                    vision.two_path_block(layer, &o, s.as_ref(), opts, weights, None);
                (o, s) = (o_next, Some(s_next));
            }
            if opts.readout.contains(&layer) {
                readout.push(leaf(s.as_ref().unwrap_or(&o)));
            }
        }
        leaf(&o)
    };
    let global = vision.project_global(&o_last.select(1, 0), opts.global_ln_post);
    let result = target.loss(&global, &readout);
    result.total.backward();

    let mut grad_o = o_last.grad();
    let mut grad_s: Option<Tensor> = None;
    for layer in (opts.start..=layers).rev() {
        if let Some(r) = opts.readout.iter().position(|&l| l == layer) {
            let g = readout[r].grad();
            grad_s = Some(match grad_s.take() {
                Some(acc) => acc + g,
                None => g,
            });
        }
        let (o_in, s_in) = &inputs[layer - opts.start];
        let (o_in, s_in) = (leaf(o_in), s_in.as_ref().map(leaf));
        let (o_out, s_out) =
            vision.two_path_block(layer, &o_in, s_in.as_ref(), opts, weights, None);
        let mut surrogate = (&o_out * &grad_o).sum(Kind::Float);
        if let Some(g) = &grad_s {
            surrogate += (s_out * g).sum(Kind::Float);
        }
        surrogate.backward();
        grad_o = o_in.grad();
        grad_s = s_in.map(|s| s.grad());
    }
    result
}
