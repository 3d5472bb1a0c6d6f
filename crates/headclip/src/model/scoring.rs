//! From features to scores (spec: "Scores"): per-layer two-class pixel maps, their mean,
//! Gaussian smoothing as scipy does it, the global score and the joint anomaly score.

use tch::{Kind, Tensor};

/// Temperature τ of every two-class softmax.
pub const TAU: f64 = 0.07;

/// `softmax([x·t_n, x·t_a]/τ)`. x: [..., E], text: [2, E] → [..., 2]
pub fn two_class_probabilities(x: &Tensor, text: &Tensor) -> Tensor {
    (x.matmul(&text.tr()) / TAU).softmax(-1, Kind::Float)
}

/// The two-class probabilities `[p_n, p_a]` of one read-out layer's patch tokens, on their
/// G×G grid upsampled bilinearly to S×S. features: [B, N, E] with CLS first → [B, 2, S, S]
pub fn upsampled_probabilities(features: &Tensor, text: &Tensor, side: i64) -> Tensor {
    let n = features.size()[1] - 1;
    let grid = (n as f64).sqrt().round() as i64;
    let p = two_class_probabilities(&features.narrow(1, 1, n), text); // [B, G², 2]
    let p = p.permute([0, 2, 1]).reshape([-1, 2, grid, grid]);
    p.upsample_bilinear2d([side, side], false, None, None)
}

/// `M_l = (p_a + 1 − p_n)/2` from one layer's upsampled probabilities. p: [B, 2, S, S] → [B, S, S]
pub fn layer_map(p: &Tensor) -> Tensor {
    (p.select(1, 1) + 1.0 - p.select(1, 0)) / 2.0
}

/// `M_l` per read-out layer, upsampled to S×S.
/// features: per layer [B, N, E] with CLS first → [B, R, S, S]
pub fn layer_maps(features: &[Tensor], text: &Tensor, side: i64) -> Tensor {
    let maps: Vec<Tensor> = features
        .iter()
        .map(|f| layer_map(&upsampled_probabilities(f, text, side)))
        .collect();
    Tensor::stack(&maps, 1)
}

/// scipy.ndimage.gaussian_filter's kernel: radius `int(4σ + 0.5)`, normalised.
fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as i64;
    let weights: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
        .collect();
    let sum: f64 = weights.iter().sum();
    weights.iter().map(|w| w / sum).collect()
}

/// scipy's "reflect" border (d c b a | a b c d), for any offset.
fn reflect(i: i64, n: i64) -> usize {
    let period = 2 * n;
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - 1 - m }) as usize
}

/// Separable Gaussian smoothing of maps [B, S, S], as `scipy.ndimage.gaussian_filter(map, sigma)`
/// does with its defaults (axis 0 first, "reflect" borders), on the maps' device. σ = 0 returns
/// the maps unchanged.
pub fn gaussian_smooth(maps: &Tensor, sigma: f64) -> Tensor {
    if sigma == 0.0 {
        return maps.shallow_clone();
    }
    let kernel = gaussian_kernel(sigma);
    let radius = (kernel.len() / 2) as i64;
    let (b, side) = (maps.size()[0], maps.size()[1]);
    let device = maps.device();
    // Border handling by gathering reflected indices, then a 1-D convolution along the axis.
    let index: Vec<i64> = (-radius..side + radius)
        .map(|i| reflect(i, side) as i64)
        .collect();
    let index = Tensor::from_slice(&index).to_device(device);
    let weights: Vec<f32> = kernel.iter().map(|&w| w as f32).collect();
    let weights = Tensor::from_slice(&weights)
        .view([1, 1, -1])
        .to_device(device)
        .to_kind(maps.kind());
    let along_last = |x: &Tensor| -> Tensor {
        let padded = x.index_select(2, &index); // [B, S, S + 2r]
        padded
            .reshape([-1, 1, side + 2 * radius])
            .conv1d(&weights, None::<Tensor>, [1], [0], [1], 1)
            .reshape([b, side, side])
    };
    let vertical = along_last(&maps.transpose(1, 2)).transpose(1, 2);
    along_last(&vertical.contiguous())
}

/// Mean of the `max(1, ⌈k·n⌉)` largest values of each map. maps: [B, …] → [B] (f64)
pub fn top_fraction_mean(maps: &Tensor, fraction: f64) -> Tensor {
    let b = maps.size()[0];
    let flat = maps.reshape([b, -1]);
    let n = flat.size()[1];
    let k = ((fraction * n as f64).ceil() as i64).clamp(1, n.max(1));
    let (top, _) = flat.topk(k, -1, true, false);
    top.to_kind(Kind::Double).mean_dim(-1, false, Kind::Double)
}

/// The anomaly map and the pixel score from the per-layer maps [B, R, S, S]: their mean,
/// smoothed with `sigma` → [B, S, S], and the mean of its top `fraction` → [B] (f64).
pub fn smoothed_map_and_pixel_score(
    layer_maps: &Tensor,
    sigma: f64,
    fraction: f64,
) -> (Tensor, Tensor) {
    let map = gaussian_smooth(&layer_maps.mean_dim(1, false, Kind::Float), sigma);
    let pixel = top_fraction_mean(&map, fraction);
    (map, pixel)
}

/// `s = (1 − λ)·s_g + λ·s_p`.
pub fn joint_score(global: f32, pixel: f32, lambda: f64) -> f32 {
    ((1.0 - lambda) * global as f64 + lambda * pixel as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_scipy_convention() {
        // d c b a | a b c d | d c b a
        let n = 4;
        let got: Vec<usize> = (-4..8).map(|i| reflect(i, n)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0]);
    }

    #[test]
    fn smoothing_keeps_constants_and_mass_position() {
        let side = 40;
        let flat = Tensor::full([1, side, side], 0.25, (Kind::Float, tch::Device::Cpu));
        let s = gaussian_smooth(&flat, 4.0);
        assert!((s - 0.25).abs().max().double_value(&[]) < 1e-6);
        let spike = Tensor::zeros([1, side, side], (Kind::Float, tch::Device::Cpu));
        let _ = spike.get(0).get(20).get(20).fill_(1.0);
        let s = gaussian_smooth(&spike, 4.0);
        assert_eq!(s.argmax(None, false).int64_value(&[]), 20 * side + 20);
        assert!((s.sum(Kind::Float).double_value(&[]) - 1.0).abs() < 1e-4);
    }

    #[test]
    fn top_fraction_takes_at_least_one() {
        let v = Tensor::from_slice(&[0.1f32, 0.9, 0.5, 0.3]).view([1, 4]);
        let mean = |k: f64| top_fraction_mean(&v, k).double_value(&[0]);
        assert!((mean(0.01) - 0.9).abs() < 1e-6);
        assert!((mean(0.5) - 0.7).abs() < 1e-6);
        assert!((mean(1.0) - 0.45).abs() < 1e-6);
    }
}
