//! The training loss of the AnomalyCLIP protocol (spec: "Training"), computed as AnomalyCLIP's
//! code computes it: cross-entropy on the global score, and per read-out layer a focal loss on
//! the two-class map plus two Dice terms.

use tch::{Kind, Reduction, Tensor};

use crate::model::scoring::{two_class_probabilities, TAU};

/// Loss terms of one batch (the focal and Dice terms summed over read-out layers).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossTerms {
    pub total: f64,
    pub ce: f64,
    pub focal: f64,
    pub dice: f64,
}

const SMOOTH: f64 = 1e-5;

/// Focal loss (γ = 2, no class weights) of probabilities `p` [B, 2, S, S] against a 0/1 mask
/// [B, S, S]: one-hot target clamped to [1e-5, 1 − 1e-5], `p_t = Σ target·p + 1e-5`,
/// `−(1 − p_t)^γ log p_t`, mean over all pixels.
pub fn focal_loss(p: &Tensor, mask: &Tensor) -> Tensor {
    let one_hot = Tensor::stack(&[1.0 - mask, mask.shallow_clone()], 1).clamp(SMOOTH, 1.0 - SMOOTH);
    let pt = (one_hot * p).sum_dim_intlist(1, false, Kind::Float) + SMOOTH;
    let miss: Tensor = (-&pt + 1.0).square();
    (-(miss * pt.log())).mean(Kind::Float)
}

/// `1 − (2·Σ p·y + 1)/(Σ p + Σ y + 1)` per image, mean over the batch. p, target: [B, S, S]
pub fn dice_loss(p: &Tensor, target: &Tensor) -> Tensor {
    let b = p.size()[0];
    let (p, y) = (p.reshape([b, -1]), target.reshape([b, -1]));
    let inter = (&p * &y).sum_dim_intlist(1, false, Kind::Float);
    let denom =
        p.sum_dim_intlist(1, false, Kind::Float) + y.sum_dim_intlist(1, false, Kind::Float) + 1.0;
    let dice: Tensor = (inter * 2.0 + 1.0) / denom;
    (-dice + 1.0).mean(Kind::Float)
}

/// Cross-entropy of `[g·t_n, g·t_a]/τ` against labels [B] (int64 0/1), mean over the batch.
pub fn global_loss(global: &Tensor, text: &Tensor, labels: &Tensor) -> Tensor {
    let logits = global.matmul(&text.tr()) / TAU;
    logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0)
}

/// Focal and Dice terms of one read-out layer. features: [B, N, E] (CLS first), text: [2, E],
/// masks: [B, S, S] → (focal, dice)
pub fn pixel_loss(features: &Tensor, text: &Tensor, masks: &Tensor) -> (Tensor, Tensor) {
    let side = masks.size()[1];
    let n = features.size()[1] - 1;
    let grid = (n as f64).sqrt().round() as i64;
    let p = two_class_probabilities(&features.narrow(1, 1, n), text); // [B, G², 2]
    let p = p.permute([0, 2, 1]).reshape([-1, 2, grid, grid]);
    let p = p.upsample_bilinear2d([side, side], false, None, None);
    let focal = focal_loss(&p, masks);
    let dice = dice_loss(&p.select(1, 1), masks) + dice_loss(&p.select(1, 0), &(1.0 - masks));
    (focal, dice)
}
