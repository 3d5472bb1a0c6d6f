//! A counter-based generator of standard-normal-like numbers, small enough to be written out
//! again in the Python reference (`reference/gen_full_fixtures.py`), which must reproduce it bit for
//! bit on any CPU. libtorch's `randn` may change between CPU kinds and versions, and weights
//! drawn with it would orphan every fixture computed from them.
//!
//! Value `i` of stream `s` under seed `seed` is made from one SplitMix64 output,
//! `mix(key + (i + 1)·γ)` with `key = mix(seed + (s + 1)·γ)`: its four 16-bit lanes are summed
//! (Irwin–Hall with n = 4) and scaled to mean 0 and variance 1, so values lie within ±2√3.
//! Only integer operations and exactly rounded f64 arithmetic are used: no `ln` or `cos`
//! (Box–Muller), whose last bit differs between maths libraries.

/// SplitMix64's increment, the golden ratio in 64 bits.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// √3, rounded to f64: scales the sum of four U(0, 1) (variance 1/3) to variance 1.
const SQRT_3: f64 = 1.732_050_807_568_877_2;

/// SplitMix64's output function (Stafford's variant 13).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `index`-th output (0-based) of SplitMix64 started from `state`.
fn splitmix(state: u64, index: u64) -> u64 {
    mix(state.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// The sum of a word's four 16-bit lanes, centred and scaled to variance 1.
fn lanes_to_normal(word: u64) -> f64 {
    let sum: u64 = (0..4).map(|lane| (word >> (16 * lane)) & 0xffff).sum();
    (sum as f64 / 65536.0 - 2.0) * SQRT_3
}

/// Independent streams of normal-like numbers under one seed.
#[derive(Debug, Clone, Copy)]
pub struct SeededNormals {
    seed: u64,
}

impl SeededNormals {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// The first `n` values of stream `stream`: mean 0, variance 1.
    pub fn stream(&self, stream: u64, n: usize) -> impl Iterator<Item = f64> {
        let key = splitmix(self.seed, stream);
        (0..n as u64).map(move |i| lanes_to_normal(splitmix(key, i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64 from state 0 starts 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4 (Vigna's
    /// reference implementation).
    #[test]
    fn splitmix_matches_the_published_sequence() {
        assert_eq!(splitmix(0, 0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix(0, 1), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn values_have_unit_variance_and_stay_bounded() {
        let n = 200_000;
        let values: Vec<f64> = SeededNormals::new(7).stream(3, n).collect();
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
        assert!(values.iter().all(|v| v.abs() <= 2.0 * SQRT_3));
    }

    #[test]
    fn streams_and_seeds_differ() {
        let first = |seed, stream| {
            SeededNormals::new(seed)
                .stream(stream, 4)
                .collect::<Vec<_>>()
        };
        assert_ne!(first(0, 0), first(0, 1));
        assert_ne!(first(0, 0), first(1, 0));
        assert_eq!(first(5, 2), first(5, 2));
    }
}
