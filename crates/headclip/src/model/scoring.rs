//! From features to scores (spec: "Scores"): per-layer two-class pixel maps, their mean,
//! Gaussian smoothing as scipy does it, the global score and the joint anomaly score.

use tch::{Kind, Tensor};

/// Temperature τ of every two-class softmax.
pub const TAU: f64 = 0.07;

/// `softmax([x·t_n, x·t_a]/τ)`. x: [..., E], text: [2, E] → [..., 2]
pub fn two_class_probabilities(x: &Tensor, text: &Tensor) -> Tensor {
    (x.matmul(&text.tr()) / TAU).softmax(-1, Kind::Float)
}

/// `M_l = (p_a + 1 − p_n)/2` per read-out layer, upsampled to S×S.
/// features: per layer [B, N, E] with CLS first → [B, R, S, S]
pub fn layer_maps(features: &[Tensor], text: &Tensor, side: i64) -> Tensor {
    let maps: Vec<Tensor> = features
        .iter()
        .map(|f| {
            let n = f.size()[1] - 1;
            let grid = (n as f64).sqrt().round() as i64;
            let p = two_class_probabilities(&f.narrow(1, 1, n), text); // [B, G², 2]
            let p = p.permute([0, 2, 1]).reshape([-1, 2, grid, grid]);
            let p = p.upsample_bilinear2d([side, side], false, None, None);
            (p.select(1, 1) + 1.0 - p.select(1, 0)) / 2.0
        })
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

/// Separable Gaussian smoothing of a `side`×`side` map, as `scipy.ndimage.gaussian_filter(map,
/// sigma)` with its defaults. σ = 0 returns the map unchanged.
pub fn gaussian_smooth(map: &[f32], side: usize, sigma: f64) -> Vec<f32> {
    if sigma == 0.0 {
        return map.to_vec();
    }
    let kernel = gaussian_kernel(sigma);
    let radius = (kernel.len() / 2) as i64;
    let n = side as i64;
    let pass = |src: &[f32], along_rows: bool| -> Vec<f32> {
        let mut out = vec![0f32; src.len()];
        for r in 0..side {
            for c in 0..side {
                let mut acc = 0f64;
                for (j, w) in kernel.iter().enumerate() {
                    let o = j as i64 - radius;
                    let v = if along_rows {
                        src[r * side + reflect(c as i64 + o, n)]
                    } else {
                        src[reflect(r as i64 + o, n) * side + c]
                    };
                    acc += w * v as f64;
                }
                out[r * side + c] = acc as f32;
            }
        }
        out
    };
    // scipy filters axis 0 first, then axis 1; rounding to f32 between passes as it does.
    let vertical = pass(map, false);
    pass(&vertical, true)
}

/// Mean of the `max(1, ⌈k·n⌉)` largest values.
pub fn top_fraction_mean(values: &[f32], fraction: f64) -> f32 {
    if values.is_empty() {
        return f32::NAN;
    }
    let k = ((fraction * values.len() as f64).ceil() as usize).clamp(1, values.len());
    let mut v = values.to_vec();
    let idx = v.len() - k;
    v.select_nth_unstable_by(idx, |a, b| a.total_cmp(b));
    (v[idx..].iter().map(|&x| x as f64).sum::<f64>() / k as f64) as f32
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
        let flat = vec![0.25f32; side * side];
        assert!(gaussian_smooth(&flat, side, 4.0)
            .iter()
            .all(|v| (v - 0.25).abs() < 1e-6));
        let mut spike = vec![0f32; side * side];
        spike[20 * side + 20] = 1.0;
        let s = gaussian_smooth(&spike, side, 4.0);
        let max = s.iter().cloned().fold(f32::MIN, f32::max);
        assert_eq!(s[20 * side + 20], max);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn top_fraction_takes_at_least_one() {
        let v = [0.1, 0.9, 0.5, 0.3];
        assert_eq!(top_fraction_mean(&v, 0.01), 0.9);
        assert!((top_fraction_mean(&v, 0.5) - 0.7).abs() < 1e-6);
        assert!((top_fraction_mean(&v, 1.0) - 0.45).abs() < 1e-6);
    }
}
