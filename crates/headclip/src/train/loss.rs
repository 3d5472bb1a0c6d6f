//! The training loss of the AnomalyCLIP protocol (spec: "Training"), computed as AnomalyCLIP's
//! code computes it: cross-entropy on the global score, and per read-out layer a focal loss on
//! the two-class map plus two Dice terms; optionally (*ours*) a binary cross-entropy of the
//! joint anomaly score, so that the score the user ranks images by is trained too.

use tch::{Kind, Reduction, Tensor};

use crate::model::scoring::{
    layer_map, smoothed_map_and_pixel_score, two_class_probabilities, TAU,
};
use crate::model::ResolvedConfig;

/// Loss terms of one batch (the focal and Dice terms summed over read-out layers; `joint` before
/// its weight, 0 when the joint term is off).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossTerms {
    pub total: f64,
    pub ce: f64,
    pub focal: f64,
    pub dice: f64,
    #[serde(default)]
    pub joint: f64,
}

impl LossTerms {
    /// Term-wise sum, for an epoch's running totals.
    pub fn accumulate(&mut self, other: &LossTerms) {
        self.total += other.total;
        self.ce += other.ce;
        self.focal += other.focal;
        self.dice += other.dice;
        self.joint += other.joint;
    }

    /// Term-wise mean of `n` accumulated batches.
    pub fn mean_of(&self, n: usize) -> LossTerms {
        let k = n as f64;
        LossTerms {
            total: self.total / k,
            ce: self.ce / k,
            focal: self.focal / k,
            dice: self.dice / k,
            joint: self.joint / k,
        }
    }
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

/// Focal and Dice terms of one read-out layer from its upsampled probabilities p [B, 2, S, S]
/// and the masks [B, S, S] → (focal, dice)
pub fn pixel_loss(p: &Tensor, masks: &Tensor) -> (Tensor, Tensor) {
    let focal = focal_loss(p, masks);
    let dice = dice_loss(&p.select(1, 1), masks) + dice_loss(&p.select(1, 0), &(1.0 - masks));
    (focal, dice)
}

/// Binary cross-entropy of the joint anomaly score against the labels [B] (int64 0/1), mean over
/// the batch. The score is computed as at inference: `s = (1 − λ)·s_g + λ·s_p`, with `s_g` from
/// the global feature [B, E] and `s_p` the mean of the top fraction of the smoothed mean map of the
/// read-out layers' upsampled probabilities (each [B, 2, S, S]).
pub fn joint_loss(
    global: &Tensor,
    text: &Tensor,
    probabilities: &[Tensor],
    labels: &Tensor,
    config: &ResolvedConfig,
) -> Tensor {
    let global_score = two_class_probabilities(global, text).select(1, 1); // [B]
    let maps: Vec<Tensor> = probabilities.iter().map(layer_map).collect();
    let (_, pixel_score) = smoothed_map_and_pixel_score(
        &Tensor::stack(&maps, 1),
        config.smoothing_sigma,
        config.jas_top_fraction,
    );
    let pixel_score = pixel_score.to_kind(Kind::Float);
    let score = global_score * (1.0 - config.jas_lambda) + pixel_score * config.jas_lambda;
    score.binary_cross_entropy::<Tensor>(&labels.to_kind(Kind::Float), None, Reduction::Mean)
}
