//! Mutations: format-blind byte edits (this file) and format-aware ones that get past the first
//! checks of a parser (PNG chunk checksums, JPEG segment structure, safetensors headers, JSON).

pub mod jpeg;
pub mod json;
pub mod png;
pub mod safetensors;

use fastrand::Rng;

const INTERESTING_8: [u8; 9] = [0, 1, 0x10, 0x20, 0x40, 0x64, 0x7F, 0x80, 0xFF];
const INTERESTING_16: [u16; 10] = [
    0, 1, 0x100, 0x3FFF, 0x4000, 0x7FFF, 0x8000, 0xFFFF, 65500, 65501,
];
const INTERESTING_32: [u32; 8] = [
    0,
    1,
    0x1_0000,
    0x4000_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFE,
    0xFFFF_FFFF,
];

/// How many edits one input gets: mostly few (small changes keep the file parseable deep into
/// the decoder), sometimes many.
pub fn edit_count(rng: &mut Rng) -> usize {
    1 << rng.u32(0..4)
}

/// A length for a range edit: mostly a few bytes, up to `max`.
pub fn small_len(rng: &mut Rng, max: usize) -> usize {
    if max == 0 {
        return 0;
    }
    let cap = (1usize << rng.u32(0..=8)).min(max);
    rng.usize(1..=cap)
}

/// Applies a stack of format-blind edits; `partner` (another seed) feeds splices.
pub fn bytes(rng: &mut Rng, data: &mut Vec<u8>, partner: &[u8]) {
    for _ in 0..edit_count(rng) {
        edit(rng, data, partner);
    }
}

/// One format-blind edit.
pub fn edit(rng: &mut Rng, data: &mut Vec<u8>, partner: &[u8]) {
    if data.is_empty() {
        data.extend((0..rng.usize(1..16)).map(|_| rng.u8(..)));
        return;
    }
    match rng.u32(0..12) {
        0 | 1 => flip_bit(rng, data),
        2 => set_byte(rng, data),
        3 => set_word(rng, data),
        4 | 5 => nudge_word(rng, data),
        6 => insert(rng, data),
        7 => delete(rng, data),
        8 => duplicate(rng, data),
        9 => overwrite_from_elsewhere(rng, data),
        10 => truncate(rng, data),
        _ => splice(rng, data, partner),
    }
}

fn flip_bit(rng: &mut Rng, data: &mut [u8]) {
    let i = rng.usize(..data.len());
    data[i] ^= 1 << rng.u32(0..8);
}

fn set_byte(rng: &mut Rng, data: &mut [u8]) {
    let i = rng.usize(..data.len());
    data[i] = if rng.bool() {
        INTERESTING_8[rng.usize(..INTERESTING_8.len())]
    } else {
        rng.u8(..)
    };
}

/// Writes an interesting 16- or 32-bit value, either byte order: length and size fields.
fn set_word(rng: &mut Rng, data: &mut [u8]) {
    let word: Vec<u8> = if rng.bool() {
        let v = INTERESTING_16[rng.usize(..INTERESTING_16.len())];
        if rng.bool() {
            v.to_be_bytes().to_vec()
        } else {
            v.to_le_bytes().to_vec()
        }
    } else {
        let v = INTERESTING_32[rng.usize(..INTERESTING_32.len())];
        if rng.bool() {
            v.to_be_bytes().to_vec()
        } else {
            v.to_le_bytes().to_vec()
        }
    };
    if data.len() >= word.len() {
        let i = rng.usize(..=data.len() - word.len());
        data[i..i + word.len()].copy_from_slice(&word);
    }
}

/// Adds a small signed amount to a 16-bit field (either byte order): a length off by one.
fn nudge_word(rng: &mut Rng, data: &mut [u8]) {
    if data.len() < 2 {
        return;
    }
    let i = rng.usize(..data.len() - 1);
    let delta = rng.i32(-16..=16) as u16;
    let big_endian = rng.bool();
    let old = [data[i], data[i + 1]];
    let v = if big_endian {
        u16::from_be_bytes(old)
    } else {
        u16::from_le_bytes(old)
    };
    let new = v.wrapping_add(delta);
    let bytes = if big_endian {
        new.to_be_bytes()
    } else {
        new.to_le_bytes()
    };
    data[i..i + 2].copy_from_slice(&bytes);
}

fn insert(rng: &mut Rng, data: &mut Vec<u8>) {
    let at = rng.usize(..=data.len());
    let n = small_len(rng, 4096);
    let chunk: Vec<u8> = if rng.bool() {
        vec![INTERESTING_8[rng.usize(..INTERESTING_8.len())]; n]
    } else {
        (0..n).map(|_| rng.u8(..)).collect()
    };
    data.splice(at..at, chunk);
}

fn delete(rng: &mut Rng, data: &mut Vec<u8>) {
    let at = rng.usize(..data.len());
    let n = small_len(rng, data.len() - at);
    data.drain(at..at + n);
}

/// Copies a range and inserts it elsewhere: repeated chunks, segments, scans.
fn duplicate(rng: &mut Rng, data: &mut Vec<u8>) {
    let from = rng.usize(..data.len());
    let n = small_len(rng, data.len() - from);
    let chunk = data[from..from + n].to_vec();
    let at = rng.usize(..=data.len());
    data.splice(at..at, chunk);
}

fn overwrite_from_elsewhere(rng: &mut Rng, data: &mut [u8]) {
    let from = rng.usize(..data.len());
    let n = small_len(rng, data.len() - from);
    let to = rng.usize(..=data.len() - n);
    data.copy_within(from..from + n, to);
}

fn truncate(rng: &mut Rng, data: &mut Vec<u8>) {
    data.truncate(rng.usize(..data.len()));
}

/// The head of this input followed by the tail of another seed.
fn splice(rng: &mut Rng, data: &mut Vec<u8>, partner: &[u8]) {
    if partner.is_empty() {
        return;
    }
    let cut = rng.usize(..=data.len());
    let from = rng.usize(..partner.len());
    data.truncate(cut);
    data.extend_from_slice(&partner[from..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_change_inputs_and_are_seeded() {
        let seed: Vec<u8> = (0..200u8).collect();
        let run = |s| {
            let mut rng = Rng::with_seed(s);
            (0..50)
                .map(|_| {
                    let mut d = seed.clone();
                    bytes(&mut rng, &mut d, b"partner");
                    d
                })
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same inputs");
        assert!(a.iter().filter(|d| **d != seed).count() > 40);
    }
}
