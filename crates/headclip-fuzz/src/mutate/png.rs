//! PNG-aware mutations. Every chunk is written back with its length and CRC recomputed, so a
//! mutation reaches the chunk's parser instead of stopping at the checksum; the image data is
//! inflated, mutated as scanlines (filter bytes included) and deflated again.

use fastrand::Rng;

const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

struct Chunk {
    kind: [u8; 4],
    data: Vec<u8>,
}

/// Mutates a PNG; bytes that do not parse as PNG chunks get format-blind edits instead.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, partner: &[u8]) {
    let Some(mut chunks) = parse(data) else {
        return super::bytes(rng, data, partner);
    };
    if chunks.is_empty() {
        return super::bytes(rng, data, partner);
    }
    for _ in 0..super::edit_count(rng) {
        if chunks.is_empty() {
            break;
        }
        match rng.u32(0..8) {
            0 | 1 => edit_chunk_data(rng, &mut chunks, partner),
            2 => edit_header(rng, &mut chunks),
            3 | 4 => edit_image_data(rng, &mut chunks),
            5 => drop_or_repeat(rng, &mut chunks),
            6 => insert_chunk(rng, &mut chunks),
            _ => {
                let i = rng.usize(..chunks.len());
                let j = rng.usize(..chunks.len());
                chunks.swap(i, j);
            }
        }
    }
    *data = write(&chunks);
}

fn parse(data: &[u8]) -> Option<Vec<Chunk>> {
    let mut rest = data.strip_prefix(SIGNATURE)?;
    let mut chunks = Vec::new();
    while rest.len() >= 12 {
        let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
        if rest.len() < 12 + len {
            return None;
        }
        chunks.push(Chunk {
            kind: rest[4..8].try_into().ok()?,
            data: rest[8..8 + len].to_vec(),
        });
        rest = &rest[12 + len..];
    }
    Some(chunks)
}

fn write(chunks: &[Chunk]) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    for c in chunks {
        push_chunk(&mut out, &c.kind, &c.data);
    }
    out
}

/// A PNG file of these chunks, lengths and checksums computed.
pub fn encode(chunks: &[([u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    for (kind, data) in chunks {
        push_chunk(&mut out, kind, data);
    }
    out
}

fn push_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

fn edit_chunk_data(rng: &mut Rng, chunks: &mut [Chunk], partner: &[u8]) {
    let i = rng.usize(..chunks.len());
    super::edit(rng, &mut chunks[i].data, partner);
}

/// Sets a field of IHDR to a value the decoder must check: size, depth, colour type, interlace.
fn edit_header(rng: &mut Rng, chunks: &mut [Chunk]) {
    let Some(ihdr) = chunks.iter_mut().find(|c| &c.kind == b"IHDR") else {
        return;
    };
    if ihdr.data.len() < 13 {
        return;
    }
    const SIZES: [u32; 8] = [0, 1, 2, 7, 65_535, 1 << 16, 0x7FFF_FFFF, 0xFFFF_FFFF];
    match rng.u32(0..5) {
        0 => ihdr.data[0..4].copy_from_slice(&SIZES[rng.usize(..SIZES.len())].to_be_bytes()),
        1 => ihdr.data[4..8].copy_from_slice(&SIZES[rng.usize(..SIZES.len())].to_be_bytes()),
        2 => ihdr.data[8] = [0, 1, 2, 3, 4, 8, 16, 255][rng.usize(..8)],
        3 => ihdr.data[9] = [0, 1, 2, 3, 4, 5, 6, 7][rng.usize(..8)],
        _ => ihdr.data[12] = rng.u8(0..3),
    }
}

/// Inflates the image data, edits the scanlines, deflates them again into one or more IDATs.
fn edit_image_data(rng: &mut Rng, chunks: &mut Vec<Chunk>) {
    let Some(first) = chunks.iter().position(|c| &c.kind == b"IDAT") else {
        return;
    };
    let compressed: Vec<u8> = chunks
        .iter()
        .filter(|c| &c.kind == b"IDAT")
        .flat_map(|c| c.data.iter().copied())
        .collect();
    let Ok(mut raw) = miniz_oxide::inflate::decompress_to_vec_zlib(&compressed) else {
        return;
    };
    super::edit(rng, &mut raw, &[]);
    let packed = miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6);
    chunks.retain(|c| &c.kind != b"IDAT");
    let pieces = rng.usize(1..=3);
    let step = packed.len().div_ceil(pieces).max(1);
    for (k, piece) in packed.chunks(step).enumerate() {
        let at = (first + k).min(chunks.len());
        chunks.insert(
            at,
            Chunk {
                kind: *b"IDAT",
                data: piece.to_vec(),
            },
        );
    }
}

fn drop_or_repeat(rng: &mut Rng, chunks: &mut Vec<Chunk>) {
    let i = rng.usize(..chunks.len());
    if rng.bool() {
        chunks.remove(i);
    } else {
        let copy = Chunk {
            kind: chunks[i].kind,
            data: chunks[i].data.clone(),
        };
        chunks.insert(rng.usize(..=chunks.len()), copy);
    }
}

/// A palette, transparency or unknown chunk where the decoder may not expect one.
fn insert_chunk(rng: &mut Rng, chunks: &mut Vec<Chunk>) {
    const KINDS: [&[u8; 4]; 6] = [b"PLTE", b"tRNS", b"gAMA", b"sBIT", b"acTL", b"zzZz"];
    let kind = *KINDS[rng.usize(..KINDS.len())];
    let data = (0..super::small_len(rng, 800))
        .map(|_| rng.u8(..))
        .collect();
    chunks.insert(rng.usize(..=chunks.len()), Chunk { kind, data });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_with_valid_checksums() {
        let img =
            image::RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 60, 9]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(write(&parse(&png).unwrap()), png);
        let mut rng = Rng::with_seed(3);
        let mut decoded = 0;
        for _ in 0..200 {
            let mut d = png.clone();
            mutate(&mut rng, &mut d, &[]);
            // A checksum error would stop every mutated file at the first chunk.
            decoded += usize::from(image::load_from_memory(&d).is_ok());
        }
        assert!(decoded > 20, "{decoded} of 200 mutated PNGs decode");
    }

    #[test]
    fn a_file_losing_its_last_chunk_is_still_mutated() {
        let one_chunk = encode(&[(*b"IEND", Vec::new())]);
        let mut rng = Rng::with_seed(9);
        for _ in 0..2000 {
            let mut d = one_chunk.clone();
            mutate(&mut rng, &mut d, &[]);
        }
    }
}
