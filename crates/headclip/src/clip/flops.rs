//! The arithmetic a scored image costs, counted from the model's shapes: the floor that
//! `headclip bench` compares measured times against (a multiply-add counts as two FLOPs).
//!
//! Counted: every matrix product of the vision tower per image (patch embedding, q/k/v, both
//! attention products of each path, output projections, MLP), the read-out projections, and,
//! with few-shot references, the bank search. Not counted: layer norms, softmax, activations,
//! upsampling and smoothing (memory-bound passes with no matrix product), the head-weight MLP
//! (under 0.01% of the total), and the text tower, which runs once per model, not per image.

use super::config::VisionConfig;

/// FLOPs of one image through the vision tower at side `side`, by part.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct WorkloadFlops {
    /// Patch embedding and the transformer blocks, both paths of the two-path blocks.
    pub trunk: f64,
    /// `ln_post(tokens)·proj` of every read-out layer and the global token.
    pub projections: f64,
    /// Bank search of few-shot mode: each read-out layer's test patches against the `K`
    /// references' patches (0 without references).
    pub few_shot: f64,
    pub total: f64,
}

/// What the count needs besides the tower's shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadShape<'a> {
    /// Input side S, a multiple of the patch size.
    pub side: i64,
    /// `l₀`, 1-based: blocks from here on also run the value–value path.
    pub dpam_start: usize,
    /// Read-out layers, 1-based.
    pub readout: &'a [usize],
    /// Width of the projected features `E`.
    pub embed_dim: i64,
    /// Few-shot references `K` (0: zero-shot).
    pub few_shot_references: usize,
}

/// Counts the FLOPs of scoring one image (see the module's note for what is counted).
pub fn workload_flops(vision: &VisionConfig, shape: &WorkloadShape) -> WorkloadFlops {
    let grid = (shape.side / vision.patch) as f64;
    let patches = grid * grid;
    let n = patches + 1.0; // tokens, CLS included
    let d = vision.width as f64;
    let e = shape.embed_dim as f64;
    let p = vision.patch as f64;

    let patch_embedding = 2.0 * patches * (3.0 * p * p) * d;
    // q, k, v (3D²), output projection (D²), MLP (4D² each way): 2·N·12D² = 24ND².
    let projections_per_block = 24.0 * n * d * d;
    // softmax(QKᵀ)V over all heads: two N×N×D products.
    let attention = 4.0 * n * n * d;
    let ordinary = projections_per_block + attention;
    // The value–value path adds its own attention and its own output projection.
    let two_path = ordinary + attention + 2.0 * n * d * d;
    let two_path_blocks = (vision.layers + 1).saturating_sub(shape.dpam_start.max(1));
    let ordinary_blocks = vision.layers - two_path_blocks;
    let trunk =
        patch_embedding + ordinary_blocks as f64 * ordinary + two_path_blocks as f64 * two_path;

    let layers = shape.readout.len() as f64;
    let projections = layers * 2.0 * n * d * e + 2.0 * d * e;
    // Per read-out layer: [G², E] test patches against [K·G², E] bank patches.
    let few_shot = layers * 2.0 * patches * (shape.few_shot_references as f64 * patches) * e;
    WorkloadFlops {
        trunk,
        projections,
        few_shot,
        total: trunk + projections + few_shot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::Activation;

    fn vision(width: i64, layers: usize, heads: i64, patch: i64) -> VisionConfig {
        VisionConfig {
            width,
            layers,
            heads,
            patch,
            pretrained_grid: 7,
            activation: Activation::QuickGelu,
        }
    }

    /// The tiny fixture's vision tower (width 128, 6 blocks, 2 heads, patch 16) at its S = 64,
    /// with the defaults for 6 blocks (two-path blocks from 2 on, read-out layers 1, 3, 4, 6) and
    /// E = 64, counted by hand: G = 4, 16 patches, N = 17 tokens.
    #[test]
    fn tiny_config_matches_a_hand_count() {
        let readout = [1, 3, 4, 6];
        let shape = WorkloadShape {
            side: 64,
            dpam_start: 2,
            readout: &readout,
            embed_dim: 64,
            few_shot_references: 0,
        };
        let got = workload_flops(&vision(128, 6, 2, 16), &shape);
        // patch embedding: 16 patches × (3·16·16 = 768 inputs) × 128 outputs × 2
        let patch = 16.0 * 768.0 * 128.0 * 2.0;
        // one ordinary block, term by term for N = 17, D = 128:
        let qkv = 2.0 * 17.0 * 128.0 * 384.0;
        let scores = 2.0 * 17.0 * 17.0 * 128.0; // QKᵀ, all heads
        let mix = 2.0 * 17.0 * 17.0 * 128.0; // attention × V
        let out = 2.0 * 17.0 * 128.0 * 128.0;
        let mlp = 2.0 * 17.0 * 128.0 * 512.0 * 2.0;
        let ordinary = qkv + scores + mix + out + mlp;
        let two_path = ordinary + scores + mix + out;
        assert_eq!(got.trunk, patch + ordinary + 5.0 * two_path);
        // four read-out layers of 17 tokens and the global token, 128 → 64
        assert_eq!(
            got.projections,
            4.0 * 2.0 * 17.0 * 128.0 * 64.0 + 2.0 * 128.0 * 64.0
        );
        assert_eq!(got.few_shot, 0.0);
        assert_eq!(got.total, got.trunk + got.projections);

        // K = 3 references: per read-out layer 16 test patches × 48 bank patches × 64 × 2.
        let with_refs = workload_flops(
            &vision(128, 6, 2, 16),
            &WorkloadShape {
                few_shot_references: 3,
                ..shape
            },
        );
        assert_eq!(with_refs.few_shot, 4.0 * (16.0 * 48.0 * 64.0 * 2.0));
        assert_eq!(with_refs.total, got.total + with_refs.few_shot);
    }

    /// ViT-L/14@336 at S = 518 (G = 37, N = 1370, two-path blocks 6–24): the trunk is the
    /// 1.21 TFLOP of the performance figures, the read-out projections add 8.6 GFLOP.
    #[test]
    fn vit_l_14_336_at_518_is_about_1_21_tflop() {
        let readout = [6, 12, 18, 24];
        let shape = WorkloadShape {
            side: 518,
            dpam_start: 6,
            readout: &readout,
            embed_dim: 768,
            few_shot_references: 0,
        };
        let got = workload_flops(&vision(1024, 24, 16, 14), &shape);
        assert!((got.trunk / 1e12 - 1.21426).abs() < 1e-5, "{}", got.trunk);
        assert!((got.total / 1e12 - 1.22289).abs() < 1e-5, "{}", got.total);
        // Few-shot with K = 4: 4 layers × 1369 × 5476 × 768 × 2 ≈ 46.06 GFLOP more.
        let k4 = workload_flops(
            &vision(1024, 24, 16, 14),
            &WorkloadShape {
                few_shot_references: 4,
                ..shape
            },
        );
        assert!((k4.few_shot / 1e9 - 46.059).abs() < 1e-3, "{}", k4.few_shot);
    }
}
