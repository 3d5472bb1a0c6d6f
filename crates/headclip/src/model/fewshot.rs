//! Few-shot mode (spec: "Few-shot mode"): a memory bank of normal patch features per read-out
//! layer, the distance of each test patch to its nearest bank entry as a second map, and the
//! fusion of that map with the zero-shot one.

use tch::{Kind, Tensor};

/// The L2-normalised patch features `F_l` (CLS dropped) of every reference, per read-out layer.
#[derive(Debug)]
pub struct MemoryBank {
    /// One [M, E] tensor per read-out layer, in read-out order, fp32 on the model's device;
    /// M = references × G².
    pub layers: Vec<Tensor>,
}

impl MemoryBank {
    /// The bank of a batch's patch features (per layer [K, N, E], CLS first).
    pub fn from_features(features: &[Tensor]) -> Self {
        let layers = features
            .iter()
            .map(|f| {
                let (k, n, e) = (f.size()[0], f.size()[1], f.size()[2]);
                f.narrow(1, 1, n - 1)
                    .to_kind(Kind::Float)
                    .reshape([k * (n - 1), e])
            })
            .collect();
        Self { layers }
    }

    /// Banks of several chunks of references, as one.
    pub fn concat(parts: &[MemoryBank]) -> Self {
        let layers = parts.first().map_or(0, |p| p.layers.len());
        let layers = (0..layers)
            .map(|l| {
                let rows: Vec<&Tensor> = parts.iter().map(|p| &p.layers[l]).collect();
                Tensor::cat(&rows, 0)
            })
            .collect();
        Self { layers }
    }

    /// Patch features per layer (M).
    pub fn patches(&self) -> i64 {
        self.layers.first().map_or(0, |t| t.size()[0])
    }

    /// The feature width E.
    pub fn width(&self) -> i64 {
        self.layers.first().map_or(0, |t| t.size()[1])
    }

    /// Bytes the bank holds (fp32).
    pub fn bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|t| (t.numel() * 4) as u64)
            .sum::<u64>()
    }
}

/// Bank rows compared with the test patches at once: bounds the similarity matrix
/// ([G², rows] per image) whatever the number of references.
const BANK_CHUNK: i64 = 8192;

/// `max_b f·b` over the bank for every row of `f` [P, E] → [P].
fn nearest_similarity(f: &Tensor, bank: &Tensor) -> Tensor {
    let best: Vec<Tensor> = bank
        .split(BANK_CHUNK, 0)
        .iter()
        .map(|rows| f.matmul(&rows.tr()).amax([1].as_slice(), false))
        .collect();
    Tensor::stack(&best, 1).amax([1].as_slice(), false)
}

/// `V_l`: per test patch `d = (1 − max_b f·b)/2`, on the G×G grid upsampled bilinearly to S×S.
/// features: per layer [B, N, E] with CLS first → [B, R, S, S]
pub fn distance_maps(features: &[Tensor], bank: &MemoryBank, side: i64) -> Tensor {
    let maps: Vec<Tensor> = features
        .iter()
        .zip(&bank.layers)
        .map(|(f, rows)| {
            let (b, n) = (f.size()[0], f.size()[1]);
            let grid = ((n - 1) as f64).sqrt().round() as i64;
            let patches = f.narrow(1, 1, n - 1).to_kind(Kind::Float);
            let per_image: Vec<Tensor> = (0..b)
                .map(|i| (1.0 - nearest_similarity(&patches.get(i), rows)) / 2.0)
                .collect();
            Tensor::stack(&per_image, 0)
                .view([b, 1, grid, grid])
                .upsample_bilinear2d([side, side], false, None, None)
                .squeeze_dim(1)
        })
        .collect();
    Tensor::stack(&maps, 1)
}

/// The fused per-layer maps `(1 − β)·M_l + β·V_l`, whose mean over the layers is the spec's
/// `M' = (1 − β)·M + β·M_fs` (the mean is linear). Both [B, R, S, S].
pub fn fuse(zero_shot: &Tensor, few_shot: &Tensor, beta: f64) -> Tensor {
    zero_shot * (1.0 - beta) + few_shot * beta
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn normalized(t: Tensor) -> Tensor {
        let norm = t.norm_scalaropt_dim(2, [-1].as_slice(), true);
        t / norm
    }

    #[test]
    fn a_patch_in_the_bank_is_at_distance_zero() {
        tch::manual_seed(3);
        let f = normalized(Tensor::randn([2, 5, 8], (Kind::Float, Device::Cpu)));
        let bank = MemoryBank::from_features(&[f.narrow(0, 0, 1)]);
        assert_eq!(bank.patches(), 4);
        let d = distance_maps(&[f.shallow_clone()], &bank, 2); // G = 2, S = 2: no resampling
        assert_eq!(d.size(), [2, 1, 2, 2]);
        assert!(d.get(0).abs().max().double_value(&[]) < 1e-6);
        assert!(d.get(1).min().double_value(&[]) > 1e-3);
    }

    #[test]
    fn chunked_nearest_similarity_equals_the_whole() {
        tch::manual_seed(4);
        let f = normalized(Tensor::randn([7, 4], (Kind::Float, Device::Cpu)));
        let bank = normalized(Tensor::randn(
            [BANK_CHUNK * 2 + 5, 4],
            (Kind::Float, Device::Cpu),
        ));
        let whole = f.matmul(&bank.tr()).amax([1].as_slice(), false);
        let chunked = nearest_similarity(&f, &bank);
        assert!((whole - chunked).abs().max().double_value(&[]) < 1e-7);
    }
}
