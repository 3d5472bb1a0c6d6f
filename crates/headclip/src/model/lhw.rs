//! Learnable head weights (spec: "Learnable head weights", *ours*): `w_{l,h}` scales head `h`'s
//! value–value output in block `l ≥ l₀`.

use tch::{Kind, Tensor};

use super::config::{LhwForm, ResolvedConfig};
use super::params::HeadClipParams;
use crate::clip::layers_l2_normalize;

/// `w` for the DPAM block `block` (0-based from `l₀`), per image. `h` = `LN1(o_{l−1})` [B, N, D],
/// read only by the dynamic variant. → [B, H]
pub fn head_weights(
    config: &ResolvedConfig,
    params: &HeadClipParams,
    block: usize,
    h: &Tensor,
) -> Tensor {
    let b = h.size()[0];
    let theta = params.theta.get(block as i64); // [H]
    let heads = theta.size()[0];
    let theta = theta.unsqueeze(0).expand([b, heads], false);
    let logits = match (config.lhw_dynamic, &params.u) {
        (true, Some(u)) => {
            let c = layers_l2_normalize(&h.select(1, 0)).to_kind(u.kind()); // ĉ: [B, D]
            theta + c.matmul(&u.get(block as i64).tr()) // [B, H]
        }
        _ => theta,
    };
    match config.lhw_form {
        LhwForm::Softmax => logits.softmax(-1, Kind::Float) * heads as f64,
        LhwForm::Sigmoid => logits.sigmoid() * 2.0,
        LhwForm::Identity => logits,
    }
}
