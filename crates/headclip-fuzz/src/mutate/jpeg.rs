//! JPEG-aware mutations: the file is split into marker segments and the entropy-coded data after
//! each scan header, so edits land inside a segment (its length kept right, or not), in the
//! entropy data, in the frame and scan headers' fields, or repeat whole scans.

use fastrand::Rng;

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DRI: u8 = 0xDD;

#[derive(Clone)]
struct Segment {
    marker: u8,
    payload: Vec<u8>,
    /// Entropy-coded data after a scan header (restart markers included).
    scan: Vec<u8>,
    /// The length field to write when it should lie; `None` writes the true length.
    length_lie: Option<u16>,
}

/// Mutates a JPEG; bytes that do not split into segments get format-blind edits instead.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, partner: &[u8]) {
    let Some(mut segments) = parse(data) else {
        return super::bytes(rng, data, partner);
    };
    if segments.is_empty() {
        return super::bytes(rng, data, partner);
    }
    for _ in 0..super::edit_count(rng) {
        match rng.u32(0..10) {
            0 | 1 => edit_payload(rng, &mut segments, partner),
            2 | 3 => edit_scan_data(rng, &mut segments),
            4 => edit_frame_header(rng, &mut segments),
            5 => edit_scan_header(rng, &mut segments),
            6 => repeat_scan(rng, &mut segments),
            7 => insert_restart(rng, &mut segments),
            8 => {
                segments.remove(rng.usize(..segments.len()));
                if segments.is_empty() {
                    break;
                }
            }
            _ => {
                let i = rng.usize(..segments.len());
                segments.insert(rng.usize(..=segments.len()), segments[i].clone());
            }
        }
    }
    *data = write(&segments);
}

fn parse(data: &[u8]) -> Option<Vec<Segment>> {
    let mut rest = data.strip_prefix(&[0xFF, SOI])?;
    let mut segments = Vec::new();
    while rest.len() >= 2 && rest[0] == 0xFF {
        let marker = rest[1];
        if marker == EOI {
            break;
        }
        let len = u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]) as usize;
        if len < 2 || rest.len() < 2 + len {
            return None;
        }
        let payload = rest[4..2 + len].to_vec();
        rest = &rest[2 + len..];
        let scan = if marker == SOS {
            let end = entropy_end(rest);
            let scan = rest[..end].to_vec();
            rest = &rest[end..];
            scan
        } else {
            Vec::new()
        };
        segments.push(Segment {
            marker,
            payload,
            scan,
            length_lie: None,
        });
    }
    Some(segments)
}

/// Where entropy-coded data ends: the first marker that is neither a stuffed 0xFF nor a restart.
fn entropy_end(data: &[u8]) -> usize {
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == 0xFF && data[i + 1] != 0 && !(0xD0..=0xD7).contains(&data[i + 1]) {
            return i;
        }
        i += 1;
    }
    data.len()
}

fn write(segments: &[Segment]) -> Vec<u8> {
    let mut out = vec![0xFF, SOI];
    for s in segments {
        out.extend_from_slice(&[0xFF, s.marker]);
        let len = s
            .length_lie
            .unwrap_or((s.payload.len() + 2).min(0xFFFF) as u16);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&s.payload);
        out.extend_from_slice(&s.scan);
    }
    out.extend_from_slice(&[0xFF, EOI]);
    out
}

/// Edits inside one segment; a quarter of the time its length field then lies by a little.
fn edit_payload(rng: &mut Rng, segments: &mut [Segment], partner: &[u8]) {
    let s = &mut segments[rng.usize(..segments.len())];
    super::edit(rng, &mut s.payload, partner);
    if rng.u32(0..4) == 0 {
        let truth = s.payload.len() as i32 + 2;
        s.length_lie = Some((truth + rng.i32(-3..=3)).clamp(0, 0xFFFF) as u16);
    }
}

fn edit_scan_data(rng: &mut Rng, segments: &mut [Segment]) {
    let scans: Vec<usize> = (0..segments.len())
        .filter(|&i| segments[i].marker == SOS)
        .collect();
    if scans.is_empty() {
        return;
    }
    let s = &mut segments[scans[rng.usize(..scans.len())]];
    super::edit(rng, &mut s.scan, &[]);
}

/// Sets a frame-header field: precision, size, component count, sampling factors, table index.
fn edit_frame_header(rng: &mut Rng, segments: &mut [Segment]) {
    let Some(sof) = segments
        .iter_mut()
        .find(|s| (0xC0..=0xCF).contains(&s.marker) && ![0xC4, 0xC8, 0xCC].contains(&s.marker))
    else {
        return;
    };
    const SIDES: [u16; 8] = [0, 1, 7, 8193, 8192, 65_500, 65_501, 65_535];
    let p = &mut sof.payload;
    if p.len() < 6 {
        return;
    }
    match rng.u32(0..6) {
        0 => p[0] = [0, 8, 12, 16][rng.usize(..4)],
        1 => p[1..3].copy_from_slice(&SIDES[rng.usize(..SIDES.len())].to_be_bytes()),
        2 => p[3..5].copy_from_slice(&SIDES[rng.usize(..SIDES.len())].to_be_bytes()),
        3 => p[5] = [0, 1, 2, 3, 4, 5, 255][rng.usize(..7)],
        _ => {
            // A component's sampling factors (byte 1) or quantisation table (byte 2).
            let components = (p.len() - 6) / 3;
            if components > 0 {
                let at = 6 + 3 * rng.usize(..components) + rng.usize(1..=2);
                p[at] = rng.u8(..);
            }
        }
    }
    sof.marker = if rng.u32(0..8) == 0 {
        [0xC0, 0xC1, 0xC2, 0xC3, 0xC9][rng.usize(..5)]
    } else {
        sof.marker
    };
}

/// Sets a scan-header field: component selectors, table selectors, spectral range, approximation.
fn edit_scan_header(rng: &mut Rng, segments: &mut [Segment]) {
    let scans: Vec<usize> = (0..segments.len())
        .filter(|&i| segments[i].marker == SOS)
        .collect();
    if scans.is_empty() {
        return;
    }
    let p = &mut segments[scans[rng.usize(..scans.len())]].payload;
    if p.is_empty() {
        return;
    }
    let at = rng.usize(..p.len());
    p[at] = if rng.bool() {
        [0, 1, 2, 3, 4, 0x0F, 0x10, 0x11, 63, 64, 0xFF][rng.usize(..11)]
    } else {
        rng.u8(..)
    };
}

/// Repeats a scan (header and data, or the header alone) up to 64 times: more scans than a
/// decoder expects, the pattern of scan-count attacks.
fn repeat_scan(rng: &mut Rng, segments: &mut Vec<Segment>) {
    let scans: Vec<usize> = (0..segments.len())
        .filter(|&i| segments[i].marker == SOS)
        .collect();
    if scans.is_empty() {
        return;
    }
    let mut copy = segments[scans[rng.usize(..scans.len())]].clone();
    if rng.bool() {
        copy.scan.clear();
    }
    let at = rng.usize(..=segments.len());
    for _ in 0..rng.usize(1..=64) {
        segments.insert(at, copy.clone());
    }
}

/// A restart interval where there was none, or a restart marker inside the entropy data.
fn insert_restart(rng: &mut Rng, segments: &mut Vec<Segment>) {
    if rng.bool() {
        let interval = [0u16, 1, 2, 7, 0xFFFF][rng.usize(..5)];
        let dri = Segment {
            marker: DRI,
            payload: interval.to_be_bytes().to_vec(),
            scan: Vec::new(),
            length_lie: None,
        };
        segments.insert(rng.usize(..=segments.len()), dri);
        return;
    }
    let scans: Vec<usize> = (0..segments.len())
        .filter(|&i| segments[i].marker == SOS)
        .collect();
    if scans.is_empty() {
        return;
    }
    let s = &mut segments[scans[rng.usize(..scans.len())]];
    let at = rng.usize(..=s.scan.len());
    s.scan.splice(at..at, [0xFF, 0xD0 + rng.u8(0..8)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip() {
        let img =
            image::RgbImage::from_fn(19, 11, |x, y| image::Rgb([x as u8 * 9, y as u8 * 20, 70]));
        let mut jpg = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut jpg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        let segments = parse(&jpg).unwrap();
        assert!(segments
            .iter()
            .any(|s| s.marker == SOS && !s.scan.is_empty()));
        assert_eq!(write(&segments), jpg);
    }
}
