//! Order-preserving integer keys for `f32` and a three-pass LSD radix sort on them.
//!
//! A category's pixels (about 45 million) are sorted once per evaluation. Comparison sorts take
//! seconds there; three counting passes over 11-bit digits take a fraction of that and allocate one
//! scratch buffer of the input's size, nothing per element.

/// Maps a finite or infinite `f32` to a `u32` whose unsigned order is the float order.
///
/// `-0.0` and `0.0` map to the same key (they are the same threshold, as `numpy.diff` sees them).
#[inline]
pub(crate) fn f32_key(v: f32) -> u32 {
    // Adding +0.0 turns -0.0 into +0.0 and leaves every other value unchanged.
    let bits = (v + 0.0).to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Inverse of [`f32_key`].
#[inline]
pub(crate) fn key_f32(key: u32) -> f32 {
    let bits = if key & 0x8000_0000 != 0 {
        key & 0x7fff_ffff
    } else {
        !key
    };
    f32::from_bits(bits)
}

/// Up to this length a comparison sort is used. It is kept low (the radix path's fixed cost is
/// a few small histograms) so that the parity fixtures exercise both paths.
const SMALL: usize = 1 << 11;

/// Bits per radix digit: three passes of 11 bits. Wider digits mean fewer passes but scatter
/// into more buckets than the caches hold, which is slower on tens of millions of items.
const DIGIT_BITS: u32 = 11;
const BUCKETS: usize = 1 << DIGIT_BITS;
const PASSES: u32 = 32_u32.div_ceil(DIGIT_BITS);

/// Sorts `data` ascending by the 32-bit key `key(x)`; items with equal keys may end up in any
/// order relative to each other when `data` is short, in their input order otherwise.
pub(crate) fn radix_sort_by_key<T, F>(data: &mut Vec<T>, key: F)
where
    T: Copy + Default,
    F: Fn(T) -> u32,
{
    let n = data.len();
    if n <= SMALL {
        data.sort_unstable_by_key(|&x| key(x));
        return;
    }
    let digit = |k: u32, pass: u32| ((k >> (pass * DIGIT_BITS)) as usize) & (BUCKETS - 1);
    let mut counts = vec![[0usize; BUCKETS]; PASSES as usize];
    for &x in data.iter() {
        let k = key(x);
        for (pass, c) in counts.iter_mut().enumerate() {
            c[digit(k, pass as u32)] += 1;
        }
    }
    let mut scratch: Vec<T> = Vec::new();
    for (pass, c) in counts.iter_mut().enumerate() {
        // A digit that every item shares needs no pass.
        if c.contains(&n) {
            continue;
        }
        if scratch.is_empty() {
            scratch = vec![T::default(); n];
        }
        let mut next = 0usize;
        for slot in c.iter_mut() {
            let here = *slot;
            *slot = next;
            next += here;
        }
        for &x in data.iter() {
            let d = digit(key(x), pass as u32);
            scratch[c[d]] = x;
            c[d] += 1;
        }
        std::mem::swap(data, &mut scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_preserve_order_and_round_trip() {
        let vals = [
            f32::NEG_INFINITY,
            -1e30,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-45,
            0.0,
            1e-45,
            f32::MIN_POSITIVE,
            0.5,
            1.0,
            3e38,
            f32::INFINITY,
        ];
        for w in vals.windows(2) {
            assert!(f32_key(w[0]) < f32_key(w[1]), "{} < {}", w[0], w[1]);
        }
        for &v in &vals {
            assert_eq!(key_f32(f32_key(v)).to_bits(), v.to_bits());
        }
        assert_eq!(f32_key(-0.0), f32_key(0.0));
    }

    #[test]
    fn radix_sort_matches_comparison_sort() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for &n in &[0usize, 1, 100, SMALL + 1, 100_000] {
            let mut v: Vec<u64> = (0..n).map(|_| next()).collect();
            let mut expected = v.clone();
            expected.sort_by_key(|&x| (x >> 32) as u32);
            radix_sort_by_key(&mut v, |x| (x >> 32) as u32);
            let a: Vec<u32> = v.iter().map(|&x| (x >> 32) as u32).collect();
            let b: Vec<u32> = expected.iter().map(|&x| (x >> 32) as u32).collect();
            assert_eq!(a, b);
            // Same multiset.
            let mut sa = v.clone();
            sa.sort_unstable();
            expected.sort_unstable();
            assert_eq!(sa, expected);
        }
        // All keys sharing the low digit.
        let mut v: Vec<u32> = (0..50_000u32).rev().map(|i| i << 16).collect();
        radix_sort_by_key(&mut v, |x| x);
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
    }
}
