//! The pieces both towers are made of: pre-LN residual blocks with multi-head attention and an
//! MLP (QuickGELU or exact GELU, as the checkpoint's config says), in OpenAI's parameter layout (`nn.MultiheadAttention`'s fused `in_proj`).
//!
//! Reduced precision works like PyTorch's autocast: the linear layers, the convolution and the
//! attention run in the checkpoint's `kind` (bf16, fp16), while the residual stream, the layer
//! norms, the embeddings and the final projections stay in fp32. A bf16 residual stream would
//! round every block's sum to 8 significant bits, and at the scores' temperature (1/0.07) that
//! error reaches the anomaly maps.

use tch::{Device, Kind, Tensor};

use super::checkpoint::{CheckpointError, StateDict};
use super::config::Activation;

/// A tensor in the checkpoint's precision (`state.kind`).
pub(crate) fn load(
    state: &StateDict,
    key: &str,
    shape: &[i64],
    device: Device,
) -> Result<Tensor, CheckpointError> {
    load_as(state, key, shape, device, state.kind)
}

/// A tensor kept in fp32 whatever precision the linear layers run in.
pub(crate) fn load_f32(
    state: &StateDict,
    key: &str,
    shape: &[i64],
    device: Device,
) -> Result<Tensor, CheckpointError> {
    load_as(state, key, shape, device, Kind::Float)
}

fn load_as(
    state: &StateDict,
    key: &str,
    shape: &[i64],
    device: Device,
    kind: Kind,
) -> Result<Tensor, CheckpointError> {
    Ok(state
        .get_shaped(key, shape)?
        .to_device(device)
        .to_kind(kind)
        .set_requires_grad(false))
}

pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
}

impl LayerNorm {
    pub fn new(
        state: &StateDict,
        prefix: &str,
        dim: i64,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        Ok(Self {
            weight: load_f32(state, &format!("{prefix}.weight"), &[dim], device)?,
            bias: load_f32(state, &format!("{prefix}.bias"), &[dim], device)?,
            dim,
        })
    }

    /// Always in fp32. x: [.., D]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.to_kind(Kind::Float).layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            1e-5,
            true,
        )
    }
}

pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(
        state: &StateDict,
        prefix: &str,
        out: i64,
        inp: i64,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        Ok(Self {
            weight: load(state, &format!("{prefix}.weight"), &[out, inp], device)?,
            bias: load(state, &format!("{prefix}.bias"), &[out], device)?,
        })
    }

    /// In the weights' precision. x: [.., in] → [.., out]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.to_kind(self.weight.kind())
            .linear(&self.weight, Some(&self.bias))
    }

    /// `α·x·Wᵀ + bias`, with α applied inside the matrix product, where it costs nothing.
    /// x: [.., in] → [.., out]
    fn forward_scaled(&self, x: &Tensor, alpha: f64, bias: &Tensor) -> Tensor {
        let x = x.to_kind(self.weight.kind());
        let mut shape = x.size();
        let (inp, out) = (shape[shape.len() - 1], self.weight.size()[0]);
        let y = bias.view([1, 1, out]).baddbmm(
            &x.reshape([1, -1, inp]),
            &self.weight.tr().unsqueeze(0),
            1.0,
            alpha,
        );
        *shape.last_mut().expect("[.., in]") = out;
        y.view(shape.as_slice())
    }
}

/// Multi-head attention weights; the attention itself is left to the caller, because HeadCLIP's
/// blocks attend twice (q·k and v·v) with the same projections.
pub struct Attention {
    in_proj: Linear,
    out_proj: Linear,
    pub heads: i64,
}

impl Attention {
    /// `x`: [B, N, D] → (q, k, v), each [B, H, N, d].
    pub fn qkv(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (b, n, d) = x.size3().expect("[B, N, D]");
        let split = |t: Tensor| t.view([b, n, self.heads, d / self.heads]).transpose(1, 2);
        let qkv = self.in_proj.forward(x).chunk(3, -1);
        let mut it = qkv.into_iter();
        let (q, k, v) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        (split(q), split(k), split(v))
    }

    /// `W_O`: [D, D] (output features × concatenated heads).
    pub fn out_proj_weight(&self) -> &Tensor {
        &self.out_proj.weight
    }

    /// `z`: [B, H, N, d] → W_O·concat_h(z_h) + b_O: [B, N, D].
    pub fn merge(&self, z: &Tensor) -> Tensor {
        let (b, h, n, d) = z.size4().expect("[B, H, N, d]");
        self.out_proj
            .forward(&z.transpose(1, 2).reshape([b, n, h * d]))
    }
}

/// softmax(a bᵀ / √d) v, per head. a, b, v: [B, H, N, d].
pub fn attend(a: &Tensor, b: &Tensor, v: &Tensor, causal: bool) -> Tensor {
    Tensor::scaled_dot_product_attention(a, b, v, None::<Tensor>, 0.0, causal, None, false)
}

/// QuickGELU's slope: `x·σ(1.702x)`.
const QUICK_GELU_SCALE: f64 = 1.702;

pub struct Mlp {
    c_fc: Linear,
    activation: Activation,
    c_proj: Linear,
    /// `1.702·b_fc` where QuickGELU runs fused, in fp32 (see [`Mlp::forward`]).
    fused_quick_gelu_bias: Option<Tensor>,
}

impl Mlp {
    fn new(c_fc: Linear, activation: Activation, c_proj: Linear) -> Self {
        let fused = activation == Activation::QuickGelu && c_fc.weight.kind() == Kind::Float;
        let fused_quick_gelu_bias = fused.then(|| &c_fc.bias * QUICK_GELU_SCALE);
        Self {
            c_fc,
            activation,
            c_proj,
            fused_quick_gelu_bias,
        }
    }

    /// `c_proj(act(c_fc(x)))`. In fp32, QuickGELU runs as `silu(1.702·h)/1.702` with both
    /// scales inside the matrix products, so the activation is one in-place pass over the
    /// block's widest tensor instead of three passes and three allocations. In bf16 and fp16 the
    /// scaled bias and product would round once more (a bf16 training step's focal loss went
    /// from 0.6% to 2% off fp32's), so there the activation keeps its own form.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(bias) = &self.fused_quick_gelu_bias {
            let mut h = self.c_fc.forward_scaled(x, QUICK_GELU_SCALE, bias);
            let h = if h.requires_grad() {
                h.silu()
            } else {
                h.silu_()
            };
            return self
                .c_proj
                .forward_scaled(&h, 1.0 / QUICK_GELU_SCALE, &self.c_proj.bias);
        }
        match self.activation {
            Activation::QuickGelu => self.c_proj.forward(&quick_gelu(self.c_fc.forward(x))),
            Activation::Gelu => {
                let mut h = self.c_fc.forward(x);
                let h = if h.requires_grad() {
                    h.gelu("none")
                } else {
                    h.gelu_("none")
                };
                self.c_proj.forward(&h)
            }
        }
    }
}

/// `h·σ(1.702·h)`, in place unless a gradient flows through `h` (autograd needs the input).
fn quick_gelu(mut h: Tensor) -> Tensor {
    if h.requires_grad() {
        return &h * (&h * QUICK_GELU_SCALE).sigmoid();
    }
    let gate = (&h * QUICK_GELU_SCALE).sigmoid_();
    h.g_mul_(&gate)
}

/// One pre-LN residual block: `o ← o + MHA(LN1(o))`, then `o ← o + MLP(LN2(o))`.
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn new(
        state: &StateDict,
        prefix: &str,
        width: i64,
        heads: i64,
        activation: Activation,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        Ok(Self {
            ln_1: LayerNorm::new(state, &format!("{prefix}.ln_1"), width, device)?,
            attn: Attention {
                in_proj: Linear {
                    weight: load(
                        state,
                        &format!("{prefix}.attn.in_proj_weight"),
                        &[3 * width, width],
                        device,
                    )?,
                    bias: load(
                        state,
                        &format!("{prefix}.attn.in_proj_bias"),
                        &[3 * width],
                        device,
                    )?,
                },
                out_proj: Linear::new(
                    state,
                    &format!("{prefix}.attn.out_proj"),
                    width,
                    width,
                    device,
                )?,
                heads,
            },
            ln_2: LayerNorm::new(state, &format!("{prefix}.ln_2"), width, device)?,
            mlp: Mlp::new(
                Linear::new(
                    state,
                    &format!("{prefix}.mlp.c_fc"),
                    4 * width,
                    width,
                    device,
                )?,
                activation,
                Linear::new(
                    state,
                    &format!("{prefix}.mlp.c_proj"),
                    width,
                    4 * width,
                    device,
                )?,
            ),
        })
    }

    /// The ordinary block. x: [B, N, D].
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let (q, k, v) = self.attn.qkv(&self.ln_1.forward(x));
        let x = x + self.attn.merge(&attend(&q, &k, &v, causal));
        &x + self.mlp.forward(&self.ln_2.forward(&x))
    }

    /// The MLP half of the block, for callers that did the attention half themselves.
    pub fn mlp_residual(&self, x: &Tensor) -> Tensor {
        x + self.mlp.forward(&self.ln_2.forward(x))
    }
}

/// L2-normalises along the last dimension.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1], true).clamp_min(1e-12)
}
