//! JPEG decoding that reproduces libjpeg-turbo's default output, which is what PIL returns.
//!
//! Why not the `image` crate: its decoder (zune-jpeg) rounds its IDCT and upsamples chroma
//! differently, so 4:2:0 colour photographs differ from PIL by up to 4 levels, and by up to 5
//! after resizing to 518 — beyond the one level the spec allows. This module follows the
//! arithmetic of libjpeg-turbo's defaults instead: the accurate integer IDCT ("islow") with the
//! 16-bit lanes of its x86-64 AVX2 version (which Pillow's wheels run, and which departs from
//! the C version when damaged coefficients overflow), "fancy" (triangle) chroma upsampling,
//! table-driven YCbCr→RGB with 16 fraction bits, and block smoothing of progressive images
//! whose first coefficients are not all known.
//!
//! Why not libjpeg-turbo itself through a binding: measured on the damaged corpus
//! (`tests/damaged.rs`, 839 cases of which 566 JPEG), PIL's decision comes as much from PIL as
//! from libjpeg. PIL reads the markers up to the first scan in Python first and refuses what
//! that reader refuses; it calls a file truncated whenever libjpeg's read-ahead meets the end of
//! the data, where TurboJPEG's API warns and pads with grey; and the maintained binding
//! (`turbojpeg-sys`) vendors libjpeg-turbo 3.1.0 while Pillow 13.0.0 bundles 3.2.0, and needs
//! cmake (and nasm for SIMD) on every machine that builds the project. Following libjpeg's
//! rules, its AVX2 IDCT and its block smoothing here took this decoder from 177 disagreements
//! with PIL on the JPEG cases to none.
//!
//! Supported: baseline, extended sequential and progressive Huffman-coded 8-bit JPEGs with 1, 3
//! or 4 components, any sampling factors that divide the largest, restart intervals. Refused
//! with [`JpegError::Unsupported`]: arithmetic coding (which PIL decodes), lossless,
//! hierarchical, 12-bit, 2 components. Damaged files follow libjpeg and PIL: PIL's header checks
//! (`pil_header_walk`); libjpeg's segment-length checks, unknown markers and 65500-pixel sides
//! refused; truncation wherever libjpeg's 25-bit read-ahead meets the end of the data, except
//! after the only scan of a sequential image; once data cut by a marker runs out, the MCUs up
//! to the next restart left at zero (grey); libjpeg's restart-marker resynchronisation; the
//! standard Huffman tables when a sequential file defines none (Motion-JPEG).
//!
//! Checked bit-exact against Pillow 13.0.0 (its bundled libjpeg-turbo 3.2.0) on every JPEG in
//! `shared/data`, on generated progressive, restart-marker, 4:2:2, 4:4:4 and CMYK files, and on
//! the damaged corpus.

/// What went wrong, without the file name (the caller adds context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JpegError {
    /// The data ended before the image did.
    Truncated(String),
    /// The data breaks the JPEG format.
    Corrupt(String),
    /// Valid JPEG, but a variant this decoder (and PIL) does not handle.
    Unsupported(String),
    /// The header's size exceeds the caller's pixel limit; nothing was decoded.
    TooLarge { width: u32, height: u32 },
}

type Result<T> = std::result::Result<T, JpegError>;

fn corrupt<T>(msg: impl Into<String>) -> Result<T> {
    Err(JpegError::Corrupt(msg.into()))
}

fn truncated<T>(msg: impl Into<String>) -> Result<T> {
    Err(JpegError::Truncated(msg.into()))
}

/// Decoded samples, in the colour space PIL opens the file in.
#[derive(Debug)]
pub(crate) enum Samples {
    /// One component (PIL mode `L`).
    Grey(Vec<u8>),
    /// Three components converted to RGB as libjpeg does (PIL mode `RGB`).
    Rgb(Vec<u8>),
    /// Four components as libjpeg outputs them: Adobe's inverted CMYK (0 = full ink).
    Cmyk(Vec<u8>),
}

/// A decoded JPEG image.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub width: u32,
    pub height: u32,
    pub samples: Samples,
}

/// Reads the image size from the frame header without decoding anything.
pub(crate) fn dimensions(data: &[u8]) -> Result<(u32, u32)> {
    match run(data, Mode::Header)? {
        Outcome::Size(w, h) => Ok((w, h)),
        Outcome::Image(_) => corrupt("JPEG without a frame header"),
    }
}

/// Decodes the whole image, refusing before any allocation when `width * height > max_pixels`.
pub(crate) fn decode(data: &[u8], max_pixels: u64) -> Result<Decoded> {
    match run(data, Mode::Full { max_pixels })? {
        Outcome::Image(img) => Ok(img),
        Outcome::Size(..) => corrupt("no image data"),
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Header,
    Full { max_pixels: u64 },
}

enum Outcome {
    Size(u32, u32),
    Image(Decoded),
}

/// `ZIGZAG[k]` is the natural (row-major) index of the k-th coefficient in zigzag order. The 16
/// extra entries absorb run lengths that overshoot the block in corrupt data, as libjpeg's do.
const ZIGZAG: [usize; 80] = {
    let mut t = [63usize; 80];
    let mut k = 0;
    let mut s: usize = 0;
    while s < 15 {
        // Diagonal s holds (row, col) with row + col = s; odd diagonals run down-left.
        let lo = s.saturating_sub(7);
        let hi = if s < 7 { s } else { 7 };
        let mut i = 0;
        while i <= hi - lo {
            let row = if s % 2 == 1 { lo + i } else { hi - i };
            t[k] = row * 8 + (s - row);
            k += 1;
            i += 1;
        }
        s += 1;
    }
    t
};

// ---------------------------------------------------------------------------------------------
// Huffman tables and the bit reader

#[derive(Clone)]
struct Huffman {
    /// Indexed by the next 9 bits: `(length << 8) | symbol`, or 0 when the code is longer.
    fast: Vec<u16>,
    /// Largest code of each length, -1 when there is none; index 17 is a sentinel.
    maxcode: [i32; 18],
    /// Added to a code of each length to index `symbols`.
    offset: [i32; 17],
    symbols: Vec<u8>,
}

const FAST_BITS: u32 = 9;

impl Huffman {
    fn new(counts: &[u8; 16], symbols: Vec<u8>, is_dc: bool) -> Result<Self> {
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > 256 || total != symbols.len() {
            return corrupt("bad Huffman table");
        }
        if is_dc && symbols.iter().any(|&s| s > 15) {
            return corrupt("bad Huffman table (DC symbol above 15)");
        }
        let mut maxcode = [-1i32; 18];
        let mut offset = [0i32; 17];
        let mut fast = vec![0u16; 1 << FAST_BITS];
        let mut code: i32 = 0;
        let mut p = 0usize;
        for len in 1..=16usize {
            let n = counts[len - 1] as usize;
            if n > 0 {
                offset[len] = p as i32 - code;
                for _ in 0..n {
                    // No code may be all ones (libjpeg's JERR_BAD_HUFF_TABLE).
                    if code + 1 >= 1 << len {
                        return corrupt("bad Huffman table (code space overflow)");
                    }
                    if len as u32 <= FAST_BITS {
                        let shift = FAST_BITS - len as u32;
                        let first = (code as usize) << shift;
                        for e in &mut fast[first..first + (1 << shift)] {
                            *e = ((len as u16) << 8) | symbols[p] as u16;
                        }
                    }
                    code += 1;
                    p += 1;
                }
                maxcode[len] = code - 1;
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        Ok(Self {
            fast,
            maxcode,
            offset,
            symbols,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    No,
    /// A marker ends the entropy data: further bits read as zeros, as in libjpeg.
    Marker,
    /// The input ended.
    Eof,
}

/// libjpeg refills its bit buffer to this many bits whenever it runs low.
const LIBJPEG_MIN_GET_BITS: i32 = 25;
/// libjpeg decodes Huffman codes up to this long from one table look-up.
const LIBJPEG_LOOKAHEAD: u32 = 8;

/// What the byte at a position of entropy-coded data is.
enum ByteAt {
    /// A data byte (0xFF 0x00 is a data 0xFF) and the position after it.
    Data(u8, usize),
    /// A marker starts here (its last 0xFF fill byte).
    Marker(usize),
    Eof,
}

fn entropy_byte(d: &[u8], pos: usize) -> ByteAt {
    let Some(&b) = d.get(pos) else {
        return ByteAt::Eof;
    };
    if b != 0xFF {
        return ByteAt::Data(b, pos + 1);
    }
    // 0xFF fill bytes may repeat; 0xFF 0x00 is a data 0xFF; anything else is a marker.
    let mut q = pos + 1;
    while q < d.len() && d[q] == 0xFF {
        q += 1;
    }
    match d.get(q) {
        None => ByteAt::Eof,
        Some(0) => ByteAt::Data(0xFF, q + 1),
        Some(_) => ByteAt::Marker(q - 1),
    }
}

/// The entropy-coded data of one scan, read bit by bit.
///
/// Two things follow libjpeg, because PIL's decision and pixels depend on them. First, libjpeg
/// reads ahead: whenever its buffer holds fewer bits than a read needs, it refills to 25 bits,
/// and PIL calls the file truncated if that refill meets the end of the data (a marker stops it
/// instead). The `lj_*` fields replay that read-ahead. Second, once a read needs bits beyond a
/// marker, libjpeg pads with zeros and then skips the following MCUs until the next restart
/// (`insufficient`), leaving their blocks at zero: flat grey.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    /// Unconsumed bits in the low end of `acc`.
    n: u32,
    /// How many of the lowest of those `n` bits are zero padding, not data.
    padding: u32,
    stop: Stop,
    /// Bits libjpeg holds in its buffer (may run below zero once it pads at a marker).
    lj_bits: i32,
    /// Where libjpeg's read-ahead has got to.
    lj_pos: usize,
    /// libjpeg's read-ahead has met a marker and reads no further.
    lj_at_marker: bool,
    /// A read needed bits beyond a marker: the MCUs that follow are skipped.
    insufficient: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            acc: 0,
            n: 0,
            padding: 0,
            stop: Stop::No,
            lj_bits: 0,
            lj_pos: pos,
            lj_at_marker: false,
            insufficient: false,
        }
    }

    /// Restarts reading at `pos` with empty buffers; `at_marker` when a marker is left unread
    /// there (the segment that follows then reads as zeros).
    fn restart_at(&mut self, pos: usize, at_marker: bool) {
        self.pos = pos;
        self.acc = 0;
        self.n = 0;
        self.padding = 0;
        self.stop = if at_marker { Stop::Marker } else { Stop::No };
        self.lj_bits = 0;
        self.lj_pos = pos;
        self.lj_at_marker = at_marker;
    }

    /// libjpeg's `jpeg_fill_bit_buffer` when fewer than `need` bits are buffered.
    fn libjpeg_fill(&mut self, need: i32) -> Result<()> {
        if self.lj_bits >= need {
            return Ok(());
        }
        while self.lj_bits < LIBJPEG_MIN_GET_BITS && !self.lj_at_marker {
            match entropy_byte(self.data, self.lj_pos) {
                ByteAt::Data(_, next) => {
                    self.lj_pos = next;
                    self.lj_bits += 8;
                }
                ByteAt::Marker(_) => self.lj_at_marker = true,
                ByteAt::Eof => return truncated("JPEG data ends in the middle of the image"),
            }
        }
        Ok(())
    }

    fn fill(&mut self, need: u32) {
        while self.n < need {
            let byte = match self.stop {
                Stop::No => self.next_byte(),
                _ => None,
            };
            let b = match byte {
                Some(b) => b,
                None => {
                    self.padding += 8;
                    0
                }
            };
            self.acc = (self.acc << 8) | u64::from(b);
            self.n += 8;
        }
    }

    fn next_byte(&mut self) -> Option<u8> {
        match entropy_byte(self.data, self.pos) {
            ByteAt::Data(b, next) => {
                self.pos = next;
                Some(b)
            }
            ByteAt::Marker(at) => {
                self.pos = at;
                self.stop = Stop::Marker;
                None
            }
            ByteAt::Eof => {
                self.stop = Stop::Eof;
                None
            }
        }
    }

    fn peek(&mut self, k: u32) -> u32 {
        self.fill(k);
        ((self.acc >> (self.n - k)) & ((1u64 << k) - 1)) as u32
    }

    fn consume(&mut self, k: u32) -> Result<()> {
        self.n -= k;
        self.lj_bits -= k as i32;
        if self.padding > self.n {
            if self.stop == Stop::Eof {
                return truncated("JPEG data ends in the middle of the image");
            }
            self.insufficient = true;
            self.padding = self.n;
        }
        Ok(())
    }

    fn bits(&mut self, k: u32) -> Result<u32> {
        if k == 0 {
            return Ok(0);
        }
        self.libjpeg_fill(k as i32)?;
        let v = self.peek(k);
        self.consume(k)?;
        Ok(v)
    }

    fn bit(&mut self) -> Result<bool> {
        Ok(self.bits(1)? != 0)
    }

    fn decode(&mut self, t: &Huffman) -> Result<u8> {
        // libjpeg refills when fewer bits than its look-ahead remain.
        self.libjpeg_fill(LIBJPEG_LOOKAHEAD as i32)?;
        let look = self.peek(16);
        let e = t.fast[(look >> (16 - FAST_BITS)) as usize];
        if e != 0 {
            let len = u32::from(e >> 8);
            if len > LIBJPEG_LOOKAHEAD {
                self.libjpeg_fill(len as i32)?;
            }
            self.consume(len)?;
            return Ok(e as u8);
        }
        // A code longer than the look-ahead makes libjpeg refill once more if it runs short.
        for len in FAST_BITS as usize + 1..=16 {
            let code = (look >> (16 - len)) as i32;
            if code <= t.maxcode[len] {
                self.libjpeg_fill(len as i32)?;
                self.consume(len as u32)?;
                return Ok(t.symbols[(code + t.offset[len]) as usize]);
            }
        }
        // No code matches: libjpeg has read a 17th bit against its sentinel, warns and
        // substitutes a zero symbol rather than failing.
        self.libjpeg_fill(16)?;
        self.consume(16)?;
        self.bits(1)?;
        Ok(0)
    }

    /// Reads `s` bits and sign-extends them as a JPEG magnitude category (HUFF_EXTEND).
    fn receive_extend(&mut self, s: u8) -> Result<i32> {
        if s == 0 {
            return Ok(0);
        }
        let s = u32::from(s);
        let v = self.bits(s)? as i32;
        Ok(if v < (1 << (s - 1)) {
            v + (-1 << s) + 1
        } else {
            v
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Frame and scan structure

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Blocks across and down in storage (padded to whole MCUs).
    bw: usize,
    bh: usize,
    /// Blocks across and down that carry image data (a non-interleaved scan codes only these).
    bw_data: usize,
    bh_data: usize,
    coefs: Vec<i16>,
    /// Quantisation table in natural order, latched at the component's first scan as libjpeg
    /// does; never latched means an all-zero table (libjpeg then outputs flat grey).
    quant: Option<[u16; 64]>,
    /// libjpeg's progression status of the first zigzag coefficients that block smoothing
    /// estimates: -1 never sent, else the bits still missing (0: known exactly).
    coef_bits: [i32; SMOOTHED_COEFS],
    /// The same status as it was before the component's latest scan.
    coef_bits_before_scan: [i32; SMOOTHED_COEFS],
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    hmax: usize,
    vmax: usize,
    mcus_x: usize,
    mcus_y: usize,
    comps: Vec<Component>,
    /// The last iMCU row an MCU of which was begun with data in hand (libjpeg's
    /// `last_good_iMCU_row`): block smoothing trusts the latest scan only up to it.
    last_good_imcu_row: usize,
}

struct ScanComp {
    index: usize,
    dc: usize,
    ac: usize,
}

struct Scan {
    comps: Vec<ScanComp>,
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
}

#[derive(Default)]
struct Markers {
    jfif: bool,
    adobe_transform: Option<u8>,
}

impl Markers {
    /// Records what libjpeg reads from an APP0 or APP14 segment; it only trusts segments at
    /// least as long as their defined fields.
    fn note(&mut self, m: u8, seg: &[u8]) {
        match m {
            0xE0 if seg.len() >= 14 && seg.starts_with(b"JFIF\0") => self.jfif = true,
            0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => {
                self.adobe_transform = Some(seg[11]);
            }
            _ => {}
        }
    }
}

fn be16(d: &[u8], at: usize) -> usize {
    usize::from(d[at]) << 8 | usize::from(d[at + 1])
}

/// Finds the next marker at or after `pos`, skipping garbage as libjpeg's `next_marker` does.
/// Returns the marker code and the position just after it.
fn next_marker(d: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    loop {
        while pos < d.len() && d[pos] != 0xFF {
            pos += 1;
        }
        while pos < d.len() && d[pos] == 0xFF {
            pos += 1;
        }
        match d.get(pos) {
            None => return None,
            Some(0) => pos += 1,
            Some(&m) => return Some((m, pos + 1)),
        }
    }
}

/// PIL reads the markers up to the first scan in Python before libjpeg sees the file, and
/// refuses some files libjpeg would take: a marker code it does not know, a segment running
/// past the end of the data, a frame header with another depth or number of components, a
/// quantisation table cut short, JFIF or Adobe segments too short for their fields.
fn pil_header_walk(d: &[u8]) -> Result<()> {
    let refuse = |why: &str| corrupt(format!("{why} (PIL refuses such a file)"));
    // PIL has read the three signature bytes; the third is the 0xFF of the first marker.
    let mut pos = 3;
    let mut after_ff = true;
    let mut icc_segments: Vec<&[u8]> = Vec::new();
    while pos < d.len() {
        let b = d[pos];
        pos += 1;
        if !after_ff {
            after_ff = b == 0xFF;
            continue;
        }
        after_ff = false;
        match b {
            0xFF => after_ff = true,
            0x00 | 0xC8 | 0xD0..=0xD9 | 0xF0..=0xFD => {}
            0xC0..=0xC7 | 0xC9..=0xCF | 0xDA..=0xEF | 0xFE => {
                let n = match d.get(pos..pos + 2) {
                    Some(_) => be16(d, pos).saturating_sub(2),
                    None => return truncated("JPEG data ends inside a marker segment"),
                };
                let end = pos + 2 + n;
                if end > d.len() {
                    return truncated("JPEG data ends inside a marker segment");
                }
                let seg = &d[pos + 2..end];
                pos = end;
                match b {
                    0xDA => return Ok(()),
                    0xC4 | 0xCC | 0xDC | 0xDD | 0xDF => {}
                    0xDB => pil_check_quant(seg).or_else(|e| refuse(&e))?,
                    0xE0..=0xEF | 0xFE => {
                        if b == 0xE2 && seg.starts_with(b"ICC_PROFILE\0") {
                            icc_segments.push(seg);
                        }
                        pil_check_app(b, seg).or_else(|e| refuse(&e))?;
                    }
                    _ => {
                        pil_check_frame(seg).or_else(|e| refuse(&e))?;
                        // PIL sorts the ICC fragments and reads the first one's count byte.
                        if icc_segments.iter().min().is_some_and(|s| s.len() < 14) {
                            return refuse("ICC profile fragment too short");
                        }
                        icc_segments.clear();
                    }
                }
                if pos < d.len() {
                    after_ff = d[pos] == 0xFF;
                    pos += 1;
                }
            }
            _ => return refuse(&format!("JPEG marker {b:02X} unknown")),
        }
    }
    Ok(())
}

fn pil_check_quant(mut seg: &[u8]) -> std::result::Result<(), String> {
    while let Some(&v) = seg.first() {
        let len = if v >> 4 == 0 { 65 } else { 129 };
        if seg.len() < len {
            return Err("JPEG quantisation table cut short".into());
        }
        seg = &seg[len..];
    }
    Ok(())
}

fn pil_check_app(m: u8, seg: &[u8]) -> std::result::Result<(), String> {
    let short = (m == 0xE0 && seg.starts_with(b"JFIF") && seg.len() < 7)
        || (m == 0xEE && seg.starts_with(b"Adobe") && seg.len() < 7);
    if short {
        return Err("JFIF or Adobe segment too short for its fields".into());
    }
    Ok(())
}

fn pil_check_frame(seg: &[u8]) -> std::result::Result<(), String> {
    if seg.len() < 6 {
        return Err("JPEG frame header too short".into());
    }
    if seg[0] != 8 {
        return Err(format!("{}-bit JPEG", seg[0]));
    }
    if !matches!(seg[5], 1 | 3 | 4) {
        return Err(format!("JPEG with {} components", seg[5]));
    }
    Ok(())
}

/// What the marker walk has read so far.
#[derive(Default)]
struct Walk {
    frame: Option<Frame>,
    qt: [Option<[u16; 64]>; 4],
    huffman: RawTables,
    restart_interval: usize,
    markers: Markers,
    scans: usize,
    /// Set at the first scan: a sequential scan holding every component makes the whole image,
    /// which libjpeg decodes as it reads; any other layout it reads to the end first.
    single_scan: Option<bool>,
}

impl Walk {
    /// Whether every pixel has been decoded, so that libjpeg (and PIL) no longer need the rest
    /// of the data: only after the one scan of a single-scan image.
    fn complete(&self) -> bool {
        self.single_scan == Some(true) && self.scans == 1
    }
}

/// Markers whose segments libjpeg skips by their length (APPn, COM, DNL).
fn is_skipped(m: u8) -> bool {
    matches!(m, 0xE0..=0xEF | 0xFE | 0xDC)
}

fn run(d: &[u8], mode: Mode) -> Result<Outcome> {
    if d.len() < 2 {
        return truncated("JPEG data too short");
    }
    if d[0] != 0xFF || d[1] != 0xD8 {
        return corrupt("missing JPEG start-of-image marker");
    }
    pil_header_walk(d)?;
    let mut w = Walk::default();
    let mut pos = 2;
    loop {
        let Some((m, after)) = next_marker(d, pos) else {
            return end_of_data(w, "JPEG data ends before its end-of-image marker");
        };
        pos = after;
        match m {
            0xD9 => break,
            0xD0..=0xD7 | 0x01 => continue,
            0xD8 => return corrupt("JPEG with a second start-of-image marker"),
            _ => {}
        }
        if pos + 2 > d.len() {
            return end_of_data(w, "JPEG data ends inside a marker segment");
        }
        let len = be16(d, pos);
        if is_skipped(m) {
            // libjpeg skips what the length says; a length under 2 skips nothing.
            let end = pos + len.max(2);
            if end > d.len() {
                return end_of_data(w, "JPEG data ends inside a marker segment");
            }
            w.markers.note(m, &d[pos + 2..end]);
            pos = end;
            continue;
        }
        if len < 2 {
            return corrupt(format!(
                "JPEG marker {m:02X} with a bad segment length {len}"
            ));
        }
        if pos + len > d.len() {
            return end_of_data(w, "JPEG data ends inside a marker segment");
        }
        let seg = &d[pos + 2..pos + len];
        pos += len;
        match m {
            0xC0..=0xC2 => {
                if w.frame.is_some() {
                    return corrupt("JPEG with more than one frame header");
                }
                let f = parse_frame(seg, m == 0xC2)?;
                let (width, height) = (f.width as u32, f.height as u32);
                match mode {
                    Mode::Header => return Ok(Outcome::Size(width, height)),
                    Mode::Full { max_pixels } => {
                        if u64::from(width) * u64::from(height) > max_pixels {
                            return Err(JpegError::TooLarge { width, height });
                        }
                    }
                }
                w.frame = Some(allocate(f));
            }
            0xC3 | 0xC5..=0xC8 | 0xCB | 0xCD..=0xCF => {
                return Err(JpegError::Unsupported(format!(
                    "lossless or hierarchical JPEG (marker {m:02X})"
                )));
            }
            0xC9 | 0xCA => {
                return Err(JpegError::Unsupported("arithmetic-coded JPEG".into()));
            }
            0xCC => check_arithmetic_conditioning(seg)?,
            0xC4 => parse_huffman(seg, &mut w.huffman)?,
            0xDB => parse_quant(seg, &mut w.qt)?,
            0xDD => {
                if seg.len() != 2 {
                    return corrupt("JPEG restart interval segment with a bad length");
                }
                w.restart_interval = be16(seg, 0);
            }
            0xDA => pos = start_scan(d, pos, seg, &mut w)?,
            _ => return corrupt(format!("unknown JPEG marker {m:02X}")),
        }
    }
    finish_walk(w)
}

/// The data ended before the end-of-image marker: truncation, as PIL reports it, unless the
/// image was already complete (libjpeg then only misses its end marker, and PIL accepts that).
fn end_of_data(w: Walk, why: &str) -> Result<Outcome> {
    if w.complete() {
        return finish_walk(w);
    }
    truncated(why)
}

fn finish_walk(w: Walk) -> Result<Outcome> {
    let Some(f) = w.frame else {
        return corrupt("JPEG without a frame header");
    };
    if w.scans == 0 {
        return corrupt("JPEG without image data");
    }
    Ok(Outcome::Image(finish(f, &w.markers, w.scans)?))
}

/// Parses a scan header, checks its tables as libjpeg does at the start of a scan, and decodes
/// the scan's data; returns where marker parsing resumes.
fn start_scan(d: &[u8], data_start: usize, seg: &[u8], w: &mut Walk) -> Result<usize> {
    let Some(f) = w.frame.as_mut() else {
        return corrupt("JPEG scan before the frame header");
    };
    let scan = parse_scan(seg, f)?;
    match w.single_scan {
        None => {
            let single = !f.progressive && scan.comps.len() == f.comps.len();
            w.single_scan = Some(single);
            if !f.progressive {
                // Motion-JPEG frames leave out the standard tables; libjpeg supplies them.
                w.huffman.fill_standard();
            }
        }
        Some(true) => return corrupt("JPEG with a second scan where its end was expected"),
        Some(false) => {}
    }
    for sc in &scan.comps {
        let c = &mut f.comps[sc.index];
        if c.quant.is_none() {
            match w.qt[c.tq] {
                Some(q) => c.quant = Some(q),
                None => return corrupt("JPEG scan uses an undefined quantisation table"),
            }
        }
    }
    if f.progressive {
        note_progression(f, &scan, w.scans > 0);
    }
    let tables = w.huffman.for_scan(&scan, f.progressive)?;
    let end = decode_scan(d, data_start, f, &scan, &tables, w.restart_interval)?;
    w.scans += 1;
    Ok(end)
}

/// Updates the components' progression status for a progressive scan, as libjpeg does when
/// the scan starts; `earlier_scans` when this is not the file's first scan.
fn note_progression(f: &mut Frame, scan: &Scan, earlier_scans: bool) {
    for sc in &scan.comps {
        let c = &mut f.comps[sc.index];
        // libjpeg saves the status of coefficients min(Ss, 1) ..= max(Se, 9) before the scan.
        for k in scan.ss.min(1)..SMOOTHED_COEFS {
            c.coef_bits_before_scan[k] = if earlier_scans { c.coef_bits[k] } else { 0 };
        }
        for k in scan.ss..=scan.se.min(SMOOTHED_COEFS - 1) {
            c.coef_bits[k] = scan.al as i32;
        }
    }
}

/// libjpeg's checks of a DAC segment (arithmetic-coding conditioning), harmless in a
/// Huffman-coded file when valid.
fn check_arithmetic_conditioning(seg: &[u8]) -> Result<()> {
    if !seg.len().is_multiple_of(2) {
        return corrupt("JPEG DAC segment with a bad length");
    }
    for pair in seg.chunks_exact(2) {
        let (index, value) = (pair[0], pair[1]);
        if index >= 32 || (index < 16 && (value & 15) > (value >> 4)) {
            return corrupt("JPEG DAC segment with a bad value");
        }
    }
    Ok(())
}

/// libjpeg's `JPEG_MAX_DIMENSION`: larger sides are refused.
const LIBJPEG_MAX_SIDE: usize = 65500;

fn parse_frame(seg: &[u8], progressive: bool) -> Result<Frame> {
    if seg.len() < 6 {
        return corrupt("JPEG frame header too short");
    }
    if seg[0] != 8 {
        return Err(JpegError::Unsupported(format!(
            "{}-bit JPEG (only 8-bit is supported)",
            seg[0]
        )));
    }
    let height = be16(seg, 1);
    let width = be16(seg, 3);
    let n = usize::from(seg[5]);
    if width == 0 || height == 0 {
        return Err(JpegError::Unsupported(
            "JPEG with zero width or height (DNL marker)".into(),
        ));
    }
    if width > LIBJPEG_MAX_SIDE || height > LIBJPEG_MAX_SIDE {
        return corrupt(format!(
            "JPEG frame header declares {width}×{height}, over libjpeg's limit of \
             {LIBJPEG_MAX_SIDE} pixels a side"
        ));
    }
    if !matches!(n, 1 | 3 | 4) {
        return Err(JpegError::Unsupported(format!("JPEG with {n} components")));
    }
    if seg.len() != 6 + 3 * n {
        return corrupt("JPEG frame header with a bad length");
    }
    let mut comps = Vec::with_capacity(n);
    for i in 0..n {
        let c = &seg[6 + 3 * i..9 + 3 * i];
        let (h, v, tq) = (
            usize::from(c[1] >> 4),
            usize::from(c[1] & 15),
            usize::from(c[2]),
        );
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || tq > 3 {
            return corrupt("JPEG frame header with bad sampling factors or table");
        }
        comps.push(Component {
            id: c[0],
            h,
            v,
            tq,
            bw: 0,
            bh: 0,
            bw_data: 0,
            bh_data: 0,
            coefs: Vec::new(),
            quant: None,
            coef_bits: [-1; SMOOTHED_COEFS],
            coef_bits_before_scan: [0; SMOOTHED_COEFS],
        });
    }
    let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
    let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
    if comps.iter().any(|c| hmax % c.h != 0 || vmax % c.v != 0) {
        return Err(JpegError::Unsupported(
            "JPEG with fractional chroma sampling".into(),
        ));
    }
    Ok(Frame {
        width,
        height,
        progressive,
        hmax,
        vmax,
        mcus_x: width.div_ceil(8 * hmax),
        mcus_y: height.div_ceil(8 * vmax),
        comps,
        last_good_imcu_row: 0,
    })
}

/// Sets each component's block counts from the frame's size and sampling.
fn lay_out(f: &mut Frame) {
    for c in &mut f.comps {
        c.bw = f.mcus_x * c.h;
        c.bh = f.mcus_y * c.v;
        c.bw_data = (f.width * c.h).div_ceil(f.hmax).div_ceil(8);
        c.bh_data = (f.height * c.v).div_ceil(f.vmax).div_ceil(8);
    }
}

fn allocate(mut f: Frame) -> Frame {
    lay_out(&mut f);
    for c in &mut f.comps {
        c.coefs = vec![0i16; c.bw * c.bh * 64];
    }
    f
}

/// What decoding a JPEG will cost, from its markers alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cost {
    /// Scan headers in the file.
    pub scans: u32,
    /// 8×8 blocks the scans visit, summed over scans: the entropy decoder's work.
    pub block_scans: u64,
}

/// Walks the marker structure (skipping entropy data byte by byte, decoding nothing) and
/// counts the scans and the blocks each visits; linear in the file's length, so that a small
/// file declaring a large image and many scans is refused before the work.
pub(crate) fn cost(d: &[u8]) -> Result<Cost> {
    let mut frame: Option<Frame> = None;
    let (mut scans, mut block_scans) = (0u32, 0u64);
    let mut pos = 2;
    while let Some((m, after)) = next_marker(d, pos) {
        pos = after;
        if matches!(m, 0xD0..=0xD9 | 0x01) || pos + 2 > d.len() {
            if m == 0xD9 {
                break;
            }
            continue;
        }
        let end = (pos + be16(d, pos).max(2)).min(d.len());
        let seg = &d[pos + 2..end];
        match m {
            0xC0..=0xC2 if frame.is_none() => {
                let mut f = parse_frame(seg, m == 0xC2)?;
                lay_out(&mut f);
                frame = Some(f);
            }
            0xDA => {
                scans = scans.saturating_add(1);
                let blocks = frame.as_ref().map_or(0, |f| blocks_in_scan(seg, f));
                block_scans = block_scans.saturating_add(blocks);
            }
            _ => {}
        }
        pos = end;
    }
    Ok(Cost { scans, block_scans })
}

/// The blocks a scan header's components make the decoder visit.
fn blocks_in_scan(seg: &[u8], f: &Frame) -> u64 {
    let n = usize::from(seg.first().copied().unwrap_or(0));
    let comps: Vec<&Component> = (0..n)
        .filter_map(|i| seg.get(1 + 2 * i))
        .filter_map(|id| f.comps.iter().find(|c| c.id == *id))
        .collect();
    let blocks = match comps.as_slice() {
        [c] => c.bw_data * c.bh_data,
        many => f.mcus_x * f.mcus_y * many.iter().map(|c| c.h * c.v).sum::<usize>(),
    };
    blocks as u64
}

/// A Huffman table as a DHT segment defines it: code counts per length, then symbols.
#[derive(Clone)]
struct RawHuffman {
    counts: [u8; 16],
    symbols: Vec<u8>,
}

/// The tables defined so far, checked (as libjpeg does) only when a scan uses them.
#[derive(Default)]
struct RawTables {
    dc: [Option<RawHuffman>; 4],
    ac: [Option<RawHuffman>; 4],
}

fn raw(counts: [u8; 16], symbols: &[u8]) -> RawHuffman {
    RawHuffman {
        counts,
        symbols: symbols.to_vec(),
    }
}

impl RawTables {
    /// libjpeg's `std_huff_tables`: the tables of the JPEG standard's Annex K.3 in slots 0 and 1
    /// where the file defines none (Motion-JPEG frames rely on this).
    fn fill_standard(&mut self) {
        let dc_symbols: Vec<u8> = (0..12).collect();
        let [dc0, dc1, ..] = &mut self.dc;
        let [ac0, ac1, ..] = &mut self.ac;
        dc0.get_or_insert_with(|| raw(STD_DC_LUMA_COUNTS, &dc_symbols));
        dc1.get_or_insert_with(|| raw(STD_DC_CHROMA_COUNTS, &dc_symbols));
        ac0.get_or_insert_with(|| raw(STD_AC_LUMA_COUNTS, STD_AC_LUMA_SYMBOLS));
        ac1.get_or_insert_with(|| raw(STD_AC_CHROMA_COUNTS, STD_AC_CHROMA_SYMBOLS));
    }

    /// Builds the tables a scan reads, failing as libjpeg does on a missing or bad one.
    fn for_scan(&self, scan: &Scan, progressive: bool) -> Result<ScanTables> {
        let mut out = ScanTables::default();
        for sc in &scan.comps {
            // A progressive scan reads either DC or AC, and a DC refinement raw bits only.
            let needs_dc = !progressive || (scan.ss == 0 && scan.ah == 0);
            let needs_ac = !progressive || scan.ss > 0;
            if needs_dc {
                out.dc[sc.dc] = Some(build(&self.dc[sc.dc], true)?);
            }
            if needs_ac {
                out.ac[sc.ac] = Some(build(&self.ac[sc.ac], false)?);
            }
        }
        Ok(out)
    }
}

fn build(t: &Option<RawHuffman>, is_dc: bool) -> Result<Huffman> {
    match t {
        Some(t) => Huffman::new(&t.counts, t.symbols.clone(), is_dc),
        None => corrupt("JPEG scan uses an undefined Huffman table"),
    }
}

/// A DHT segment, read as libjpeg's `get_dht` reads it.
fn parse_huffman(mut seg: &[u8], tables: &mut RawTables) -> Result<()> {
    while seg.len() > 16 {
        let index = seg[0];
        let mut counts = [0u8; 16];
        counts.copy_from_slice(&seg[1..17]);
        let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if n > 256 || seg.len() < 17 + n {
            return corrupt("bad JPEG Huffman table");
        }
        let (class, id) = (index >> 4, usize::from(index & 15));
        if class > 1 || id > 3 {
            return corrupt("JPEG Huffman table with a bad class or id");
        }
        let t = raw(counts, &seg[17..17 + n]);
        if class == 0 {
            tables.dc[id] = Some(t);
        } else {
            tables.ac[id] = Some(t);
        }
        seg = &seg[17 + n..];
    }
    if !seg.is_empty() {
        return corrupt("JPEG Huffman table segment with a bad length");
    }
    Ok(())
}

const STD_DC_LUMA_COUNTS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const STD_DC_CHROMA_COUNTS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const STD_AC_LUMA_COUNTS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125];
const STD_AC_CHROMA_COUNTS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 119];
const STD_AC_LUMA_SYMBOLS: &[u8] = &[
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
    0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
    0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];
const STD_AC_CHROMA_SYMBOLS: &[u8] = &[
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
    0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
    0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
    0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
    0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];

fn parse_quant(mut seg: &[u8], qt: &mut [Option<[u16; 64]>; 4]) -> Result<()> {
    while !seg.is_empty() {
        // Any non-zero precision means 16-bit values to libjpeg.
        let (precision, id) = (seg[0] >> 4, usize::from(seg[0] & 15));
        if id > 3 {
            return corrupt("JPEG quantisation table with a bad id");
        }
        let size = if precision == 0 { 64 } else { 128 };
        if seg.len() < 1 + size {
            return corrupt("JPEG quantisation table segment too short");
        }
        let mut t = [0u16; 64];
        for (k, &nat) in ZIGZAG[..64].iter().enumerate() {
            t[nat] = if precision == 0 {
                u16::from(seg[1 + k])
            } else {
                u16::from_be_bytes([seg[1 + 2 * k], seg[2 + 2 * k]])
            };
        }
        qt[id] = Some(t);
        seg = &seg[1 + size..];
    }
    Ok(())
}

fn parse_scan(seg: &[u8], f: &Frame) -> Result<Scan> {
    let n = usize::from(*seg.first().unwrap_or(&0));
    if !(1..=4).contains(&n) || seg.len() != 1 + 2 * n + 3 {
        return corrupt("JPEG scan header with a bad length");
    }
    let mut comps: Vec<ScanComp> = Vec::with_capacity(n);
    for i in 0..n {
        let id = seg[1 + 2 * i];
        let t = seg[2 + 2 * i];
        let Some(index) = f.comps.iter().position(|c| c.id == id) else {
            return corrupt("JPEG scan names an unknown component");
        };
        if comps.iter().any(|c| c.index == index) {
            return corrupt("JPEG scan names a component twice");
        }
        let (dc, ac) = (usize::from(t >> 4), usize::from(t & 15));
        if dc > 3 || ac > 3 {
            return corrupt("JPEG scan with a bad Huffman table id");
        }
        comps.push(ScanComp { index, dc, ac });
    }
    let p = &seg[1 + 2 * n..];
    let (ss, se, ah, al) = (
        usize::from(p[0]),
        usize::from(p[1]),
        u32::from(p[2] >> 4),
        u32::from(p[2] & 15),
    );
    if n > 1 {
        let blocks: usize = comps
            .iter()
            .map(|c| f.comps[c.index].h * f.comps[c.index].v)
            .sum();
        if blocks > 10 {
            return corrupt("JPEG scan with too many blocks per MCU");
        }
    }
    if f.progressive {
        let bad = if ss == 0 {
            se != 0
        } else {
            se < ss || se > 63 || n != 1
        } || (ah != 0 && al + 1 != ah)
            || al > 13;
        if bad {
            return corrupt("JPEG progressive scan with invalid parameters");
        }
        Ok(Scan {
            comps,
            ss,
            se,
            ah,
            al,
        })
    } else {
        // libjpeg only warns about odd spectral parameters in a sequential scan.
        Ok(Scan {
            comps,
            ss: 0,
            se: 63,
            ah: 0,
            al: 0,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Entropy decoding

/// The checked tables one scan reads.
#[derive(Default)]
struct ScanTables {
    dc: [Option<Huffman>; 4],
    ac: [Option<Huffman>; 4],
}

struct ScanCtx<'a> {
    scan: &'a Scan,
    tables: &'a ScanTables,
}

struct ScanState {
    dc_pred: [i32; 4],
    eobrun: u32,
}

/// Decodes one block of scan component `which` at block position (`bx`, `by`).
fn decode_block(
    bits: &mut Bits,
    f: &mut Frame,
    ctx: &ScanCtx,
    which: usize,
    (bx, by): (usize, usize),
    st: &mut ScanState,
) -> Result<()> {
    let scan = ctx.scan;
    let sc = &scan.comps[which];
    let c = &mut f.comps[sc.index];
    let at = (by * c.bw + bx) * 64;
    let block: &mut [i16] = &mut c.coefs[at..at + 64];
    let dc_table = || {
        ctx.tables.dc[sc.dc]
            .as_ref()
            .expect("checked before the scan")
    };
    let ac_table = || {
        ctx.tables.ac[sc.ac]
            .as_ref()
            .expect("checked before the scan")
    };
    if !f.progressive {
        block.fill(0);
        let s = bits.decode(dc_table())?;
        st.dc_pred[which] = st.dc_pred[which].wrapping_add(bits.receive_extend(s)?);
        block[0] = st.dc_pred[which] as i16;
        let t = ac_table();
        let mut k = 1;
        while k < 64 {
            let rs = bits.decode(t)?;
            let (r, s) = (usize::from(rs >> 4), rs & 15);
            if s != 0 {
                k += r;
                block[ZIGZAG[k]] = bits.receive_extend(s)? as i16;
            } else if r == 15 {
                k += 15;
            } else {
                break;
            }
            k += 1;
        }
        return Ok(());
    }
    if scan.ss == 0 {
        if scan.ah == 0 {
            let s = bits.decode(dc_table())?;
            st.dc_pred[which] = st.dc_pred[which].wrapping_add(bits.receive_extend(s)?);
            block[0] = st.dc_pred[which].wrapping_shl(scan.al) as i16;
        } else if bits.bit()? {
            block[0] |= 1 << scan.al;
        }
        return Ok(());
    }
    let t = ac_table();
    if scan.ah == 0 {
        // First pass over a band: run-length coded, with end-of-band runs spanning blocks.
        if st.eobrun > 0 {
            st.eobrun -= 1;
            return Ok(());
        }
        let mut k = scan.ss;
        while k <= scan.se {
            let rs = bits.decode(t)?;
            let (r, s) = (u32::from(rs >> 4), rs & 15);
            if s != 0 {
                k += r as usize;
                let v = bits.receive_extend(s)?;
                block[ZIGZAG[k]] = (v << scan.al) as i16;
            } else if r == 15 {
                k += 15;
            } else {
                st.eobrun = (1 << r) - 1;
                if r > 0 {
                    st.eobrun += bits.bits(r)?;
                }
                break;
            }
            k += 1;
        }
        return Ok(());
    }
    // Refinement pass: one correction bit per already-nonzero coefficient, new coefficients
    // of magnitude 1 placed after `r` still-zero ones.
    let p1: i16 = 1 << scan.al;
    let m1: i16 = -1 << scan.al;
    let mut k = scan.ss;
    let refine = |bits: &mut Bits, coef: &mut i16| -> Result<()> {
        if bits.bit()? && (*coef & p1) == 0 {
            *coef = coef.wrapping_add(if *coef >= 0 { p1 } else { m1 });
        }
        Ok(())
    };
    if st.eobrun == 0 {
        while k <= scan.se {
            let rs = bits.decode(t)?;
            let (mut r, s) = (i32::from(rs >> 4), rs & 15);
            let mut value = 0i16;
            if s != 0 {
                value = if bits.bit()? { p1 } else { m1 };
            } else if r != 15 {
                st.eobrun = 1 << r;
                if r > 0 {
                    st.eobrun += bits.bits(r as u32)?;
                }
                break;
            }
            while k <= scan.se {
                let coef = &mut block[ZIGZAG[k]];
                if *coef != 0 {
                    refine(bits, coef)?;
                } else {
                    r -= 1;
                    if r < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if value != 0 {
                block[ZIGZAG[k]] = value;
            }
            k += 1;
        }
    }
    if st.eobrun > 0 {
        while k <= scan.se {
            let coef = &mut block[ZIGZAG[k]];
            if *coef != 0 {
                refine(bits, coef)?;
            }
            k += 1;
        }
        st.eobrun -= 1;
    }
    Ok(())
}

/// libjpeg's `read_restart_marker` and `jpeg_resync_to_restart`: consumes the expected RSTn,
/// or decides, from the marker found, whether to skip it, resume after it, or leave it unread
/// (the segment then reads as zeros). The data ending here is truncation, as for PIL.
fn read_restart_marker(bits: &mut Bits, expected: u8) -> Result<()> {
    let d = bits.data;
    let Some((mut marker, mut after)) = next_marker(d, bits.lj_pos) else {
        return truncated("JPEG data ends before a restart marker");
    };
    let rst = |n: u8| 0xD0 + (n & 7);
    loop {
        let is_rst = (0xD0..=0xD7).contains(&marker);
        let near = |ks: &[u8]| ks.iter().any(|&k| marker == rst(expected + k));
        if marker == rst(expected) || (is_rst && !near(&[1, 2, 6, 7])) {
            // The expected marker, or one too far off to judge: resume right after it.
            bits.restart_at(after, false);
            bits.insufficient = false;
            return Ok(());
        }
        if marker >= 0xC0 && (!is_rst || near(&[1, 2])) {
            // A valid non-restart marker, or one of the next two restarts: leave it unread,
            // and with it libjpeg's out-of-data state.
            bits.restart_at(after - 2, true);
            return Ok(());
        }
        // An invalid marker, or an earlier restart: look further.
        let Some(next) = next_marker(d, after) else {
            return truncated("JPEG data ends before a restart marker");
        };
        (marker, after) = next;
    }
}

/// Decodes one scan's entropy data starting at `start`; returns where marker parsing resumes.
fn decode_scan(
    d: &[u8],
    start: usize,
    f: &mut Frame,
    scan: &Scan,
    tables: &ScanTables,
    restart_interval: usize,
) -> Result<usize> {
    let ctx = ScanCtx { scan, tables };
    let mut bits = Bits::new(d, start);
    let mut st = ScanState {
        dc_pred: [0; 4],
        eobrun: 0,
    };
    let mut to_go = restart_interval;
    let mut expected_rst = 0u8;
    let mut last_good = f.last_good_imcu_row;
    // libjpeg notes the row of an MCU begun with data in hand, processes a restart, then
    // decodes the MCU unless the data has run out.
    let mut begin_mcu = |bits: &mut Bits, st: &mut ScanState, imcu_row: usize| -> Result<bool> {
        if !bits.insufficient {
            last_good = imcu_row;
        }
        if restart_interval > 0 {
            if to_go == 0 {
                read_restart_marker(bits, expected_rst)?;
                expected_rst = (expected_rst + 1) & 7;
                st.dc_pred = [0; 4];
                st.eobrun = 0;
                to_go = restart_interval;
            }
            to_go -= 1;
        }
        Ok(!bits.insufficient)
    };
    if scan.comps.len() == 1 {
        let c = &f.comps[scan.comps[0].index];
        let (w, h) = (c.bw_data, c.bh_data);
        let v = c.v;
        for by in 0..h {
            for bx in 0..w {
                if begin_mcu(&mut bits, &mut st, by / v)? {
                    decode_block(&mut bits, f, &ctx, 0, (bx, by), &mut st)?;
                }
            }
        }
    } else {
        for my in 0..f.mcus_y {
            for mx in 0..f.mcus_x {
                if !begin_mcu(&mut bits, &mut st, my)? {
                    continue;
                }
                for which in 0..scan.comps.len() {
                    let c = &f.comps[scan.comps[which].index];
                    let (ch, cv) = (c.h, c.v);
                    for v in 0..cv {
                        for h in 0..ch {
                            let at = (mx * ch + h, my * cv + v);
                            decode_block(&mut bits, f, &ctx, which, at, &mut st)?;
                        }
                    }
                }
            }
        }
    }
    f.last_good_imcu_row = last_good;
    Ok(bits.pos)
}

// ---------------------------------------------------------------------------------------------
// IDCT, upsampling and colour conversion

// libjpeg-turbo's accurate integer IDCT ("islow") as Pillow's x86-64 wheels run it: the AVX2
// version, which keeps samples in 16-bit lanes. It equals the C version (jidctint.c) until
// coefficients of a damaged file overflow those lanes: dequantisation and some sums wrap, pass
// results saturate, and the output clamps where the C code wraps.

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const F_0_298: i32 = 2446;
const F_0_390: i32 = 3196;
const F_0_541: i32 = 4433;
const F_0_765: i32 = 6270;
const F_0_899: i32 = 7373;
const F_1_175: i32 = 9633;
const F_1_501: i32 = 12299;
const F_1_847: i32 = 15137;
const F_1_961: i32 = 16069;
const F_2_053: i32 = 16819;
const F_2_562: i32 = 20995;
const F_3_072: i32 = 25172;

/// `(x + half) >> n` in 32-bit lanes, then saturated to 16 bits (`vpackssdw`).
fn descale_to_16(x: i32, n: u32) -> i16 {
    (x.wrapping_add(1 << (n - 1)) >> n).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

/// The pass-2 output as a sample: saturated to a signed byte, then recentred (`vpacksswb`,
/// `vpaddb` 128).
fn to_sample(x: i16) -> u8 {
    (x.clamp(-128, 127) + 128) as u8
}

/// `a * ka + b * kb` as `vpmaddwd` computes it.
fn madd(a: i16, ka: i32, b: i16, kb: i32) -> i32 {
    (i32::from(a) * ka).wrapping_add(i32::from(b) * kb)
}

/// One 1-D pass of the AVX2 islow IDCT on eight 16-bit inputs, descaled by `shift`.
fn idct_1d(x: [i16; 8], shift: u32) -> [i16; 8] {
    // Even part.
    let tmp3 = madd(x[2], F_0_541 + F_0_765, x[6], F_0_541);
    let tmp2 = madd(x[2], F_0_541, x[6], F_0_541 - F_1_847);
    let tmp0 = i32::from(x[0].wrapping_add(x[4])) << CONST_BITS;
    let tmp1 = i32::from(x[0].wrapping_sub(x[4])) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0.wrapping_add(tmp3), tmp0.wrapping_sub(tmp3));
    let (tmp11, tmp12) = (tmp1.wrapping_add(tmp2), tmp1.wrapping_sub(tmp2));
    // Odd part.
    let (z3, z4) = (x[7].wrapping_add(x[3]), x[5].wrapping_add(x[1]));
    let z3x = madd(z3, F_1_175 - F_1_961, z4, F_1_175);
    let z4x = madd(z3, F_1_175, z4, F_1_175 - F_0_390);
    let t0 = madd(x[7], F_0_298 - F_0_899, x[1], -F_0_899).wrapping_add(z3x);
    let t1 = madd(x[5], F_2_053 - F_2_562, x[3], -F_2_562).wrapping_add(z4x);
    let t3 = madd(x[7], -F_0_899, x[1], F_1_501 - F_0_899).wrapping_add(z4x);
    let t2 = madd(x[5], -F_2_562, x[3], F_3_072 - F_2_562).wrapping_add(z3x);
    [
        tmp10.wrapping_add(t3),
        tmp11.wrapping_add(t2),
        tmp12.wrapping_add(t1),
        tmp13.wrapping_add(t0),
        tmp13.wrapping_sub(t0),
        tmp12.wrapping_sub(t1),
        tmp11.wrapping_sub(t2),
        tmp10.wrapping_sub(t3),
    ]
    .map(|v| descale_to_16(v, shift))
}

/// Dequantises as `vpmullw` does: the low 16 bits of the product, the quantiser read as a
/// signed 16-bit value.
fn dequantise(coef: i16, quant: u16) -> i16 {
    coef.wrapping_mul(quant as i16)
}

/// The islow IDCT of one block, writing 8×8 samples at `out` with row `stride`.
fn idct_block(coefs: &[i16], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    if coefs[1..64].iter().all(|&c| c == 0) {
        flat_block(coefs[0], quant[0], out, stride);
    } else {
        idct_any_block(coefs, quant, out, stride);
    }
}

/// `idct_block` without the shortcut for flat blocks.
fn idct_any_block(coefs: &[i16], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let dq = |i: usize| dequantise(coefs[i], quant[i]);
    // Pass 1, columns, into `ws[row][col]`. When rows 1-7 are all zero the AVX2 code shifts
    // row 0 in 16 bits (wrapping) instead of running the transform (which would saturate).
    let mut ws = [[0i16; 8]; 8];
    if coefs[8..64].iter().all(|&c| c == 0) {
        for col in 0..8 {
            let v = dq(col).wrapping_shl(PASS1_BITS);
            ws.iter_mut().for_each(|row| row[col] = v);
        }
    } else {
        for col in 0..8 {
            let r = idct_1d(
                std::array::from_fn(|r| dq(r * 8 + col)),
                CONST_BITS - PASS1_BITS,
            );
            for (row, v) in ws.iter_mut().zip(r) {
                row[col] = v;
            }
        }
    }
    for (row, w) in ws.iter().enumerate() {
        let r = idct_1d(*w, CONST_BITS + PASS1_BITS + 3);
        let o = &mut out[row * stride..row * stride + 8];
        for (o, v) in o.iter_mut().zip(r) {
            *o = to_sample(v);
        }
    }
}

/// `idct_block` on a block without AC coefficients, which most blocks of large flat or
/// damaged images are: pass 1 takes its shortcut and pass 2 gives one value.
fn flat_block(dc: i16, quant_dc: u16, out: &mut [u8], stride: usize) {
    let pass1 = dequantise(dc, quant_dc).wrapping_shl(PASS1_BITS);
    let v = to_sample(descale_to_16(
        i32::from(pass1) << CONST_BITS,
        CONST_BITS + PASS1_BITS + 3,
    ));
    for row in 0..8 {
        out[row * stride..row * stride + 8].fill(v);
    }
}

/// A component's samples at its own (possibly subsampled) resolution.
struct Plane {
    w: usize,
    h: usize,
    stride: usize,
    px: Vec<u8>,
}

impl Plane {
    fn row(&self, y: usize) -> &[u8] {
        &self.px[y * self.stride..y * self.stride + self.w]
    }
}

fn idct_component(c: &Component, w: usize, h: usize, smoothing: Option<&Smoothing>) -> Plane {
    let stride = c.bw * 8;
    let mut px = vec![0u8; stride * c.bh * 8];
    let quant = c.quant.unwrap_or([0; 64]);
    for by in 0..c.bh {
        let rows = smoothing.and_then(|s| s.neighbour_rows(c, by).map(|r| (s, r)));
        for bx in 0..c.bw {
            let at = (by * c.bw + bx) * 64;
            let out = &mut px[by * 8 * stride + bx * 8..];
            match rows {
                Some((s, rows)) => {
                    let bits = s.coef_bits(c, by / c.v);
                    let block = smoothed_block(c, bx, rows, bits, &quant);
                    idct_block(&block, &quant, out, stride);
                }
                None => idct_block(&c.coefs[at..at + 64], &quant, out, stride),
            }
        }
    }
    Plane { w, h, stride, px }
}

// ---------------------------------------------------------------------------------------------
// Block smoothing

/// Block smoothing (libjpeg's `decompress_smooth_data`) looks at the DC and first nine AC
/// coefficients in zigzag order.
const SMOOTHED_COEFS: usize = 10;

/// Weights of a 5×5 neighbourhood of DC values, rows top to bottom, columns left to right.
type Kernel = [[i32; 5]; 5];

const fn transposed(k: Kernel) -> Kernel {
    let mut t = [[0; 5]; 5];
    let mut r = 0;
    while r < 5 {
        let mut c = 0;
        while c < 5 {
            t[c][r] = k[r][c];
            c += 1;
        }
        r += 1;
    }
    t
}

const Z: [i32; 5] = [0; 5];

/// Estimates of zigzag coefficients 1 to 5 once some AC data has arrived (the JPEG standard's
/// K.8 prediction, widened to 5×5 by libjpeg-turbo).
const K8_01: Kernel = [Z, Z, [-7, 50, 0, -50, 7], Z, Z];
const K8_02: Kernel = [Z, Z, [-1, 13, -24, 13, -1], Z, Z];
const K8_11: Kernel = [
    [0, -1, 0, 1, 0],
    [-1, 10, 0, -10, 1],
    Z,
    [1, -10, 0, 10, -1],
    [0, 1, 0, -1, 0],
];
const WITH_AC_KERNELS: [Kernel; 5] = [K8_01, transposed(K8_01), transposed(K8_02), K8_11, K8_02];

/// Estimates of zigzag coefficients 1 to 9 when only DC data has arrived (a smoother,
/// Gaussian-like kernel), and of the DC itself, which is then replaced.
const DC_01: Kernel = [
    [-1, -1, 0, 1, 1],
    [-3, 13, 0, -13, 3],
    [-3, 38, 0, -38, 3],
    [-3, 13, 0, -13, 3],
    [-1, -1, 0, 1, 1],
];
const DC_02: Kernel = [Z, [0, 2, -5, 2, 0], [1, 7, -14, 7, 1], [0, 2, -5, 2, 0], Z];
const DC_11: Kernel = [
    [-1, 0, 0, 0, 1],
    [0, 9, 0, -9, 0],
    Z,
    [0, -9, 0, 9, 0],
    [1, 0, 0, 0, -1],
];
const DC_03: Kernel = [Z, [0, 1, 0, -1, 0], [0, 2, 0, -2, 0], [0, 1, 0, -1, 0], Z];
const DC_12: Kernel = [Z, [0, 1, -3, 1, 0], Z, [0, -1, 3, -1, 0], Z];
const DC_ONLY_KERNELS: [Kernel; 9] = [
    DC_01,
    transposed(DC_01),
    transposed(DC_02),
    DC_11,
    DC_02,
    DC_03,
    DC_12,
    transposed(DC_12),
    transposed(DC_03),
];
const DC_ITSELF: Kernel = [
    [-2, -6, -8, -6, -2],
    [-6, 6, 42, 6, -6],
    [-8, 42, 152, 42, -8],
    [-6, 6, 42, 6, -6],
    [-2, -6, -8, -6, -2],
];

/// What block smoothing needs beyond the coefficients.
struct Smoothing {
    imcu_rows: usize,
    last_good_imcu_row: usize,
    several_scans: bool,
}

impl Smoothing {
    /// libjpeg's `smoothing_ok`: a progressive image whose components all have DC data and
    /// quantisers without zeros among the first ten, and some coefficient among the first
    /// ten not known exactly.
    fn for_frame(f: &Frame, scans: usize) -> Option<Self> {
        let usable = |c: &Component| {
            let q = c.quant.unwrap_or([0; 64]);
            c.coef_bits[0] >= 0 && ZIGZAG[..SMOOTHED_COEFS].iter().all(|&n| q[n] != 0)
        };
        let useful = |c: &Component| c.coef_bits[1..].iter().any(|&b| b != 0);
        let applies = f.progressive && f.comps.iter().all(usable) && f.comps.iter().any(useful);
        applies.then_some(Self {
            imcu_rows: f.mcus_y,
            last_good_imcu_row: f.last_good_imcu_row,
            several_scans: scans > 1,
        })
    }

    /// The progression status for an iMCU row: rows after the data ran out in the last scan
    /// use the status from before that scan.
    fn coef_bits(&self, c: &Component, imcu_row: usize) -> [i32; SMOOTHED_COEFS] {
        if imcu_row <= self.last_good_imcu_row {
            c.coef_bits
        } else if self.several_scans {
            c.coef_bits_before_scan
        } else {
            [-1; SMOOTHED_COEFS]
        }
    }

    /// The block rows two above to two below block row `by`, repeating the nearest one at the
    /// image edges as libjpeg does; `None` for the padding rows libjpeg does not output.
    /// libjpeg numbers the rows of a short last iMCU row as if every iMCU row were that
    /// short, which decides where the edge is; that numbering is kept.
    fn neighbour_rows(&self, c: &Component, by: usize) -> Option<[usize; 5]> {
        let (imcu_row, r) = (by / c.v, by % c.v);
        let last = imcu_row + 1 == self.imcu_rows;
        let rows_here = match c.bh_data % c.v {
            m if last && m != 0 => m,
            _ => c.v,
        };
        if r >= rows_here {
            return None;
        }
        let p = imcu_row * rows_here + r;
        let end = rows_here * self.imcu_rows;
        let above = if p > 0 { by - 1 } else { by };
        let below = if p + 1 < end { by + 1 } else { by };
        Some([
            if p > 1 { by - 2 } else { above },
            above,
            by,
            below,
            if p + 2 < end { by + 2 } else { below },
        ])
    }
}

/// A copy of block (`bx`, `rows[2]`) with the zero coefficients that are not known exactly
/// estimated from the DC values around it.
fn smoothed_block(
    c: &Component,
    bx: usize,
    rows: [usize; 5],
    bits: [i32; SMOOTHED_COEFS],
    quant: &[u16; 64],
) -> [i16; 64] {
    let at = (rows[2] * c.bw + bx) * 64;
    let mut block: [i16; 64] = c.coefs[at..at + 64].try_into().expect("64 coefficients");
    let last_column = c.bw_data - 1;
    let columns: [usize; 5] = std::array::from_fn(|i| (bx + i).saturating_sub(2).min(last_column));
    let dc: [[i32; 5]; 5] = std::array::from_fn(|r| {
        std::array::from_fn(|i| i32::from(c.coefs[(rows[r] * c.bw + columns[i]) * 64]))
    });
    let weigh = |k: &Kernel| -> i64 {
        let sum: i32 = (0..25).map(|i| k[i / 5][i % 5] * dc[i / 5][i % 5]).sum();
        i64::from(quant[0]) * i64::from(sum)
    };
    let dc_only = bits[1..].iter().all(|&b| b == -1);
    let kernels: &[Kernel] = if dc_only {
        &DC_ONLY_KERNELS
    } else {
        &WITH_AC_KERNELS
    };
    for (k, kernel) in (1..).zip(kernels) {
        let n = ZIGZAG[k];
        if bits[k] != 0 && block[n] == 0 {
            block[n] = estimate(weigh(kernel), quant[n], bits[k]);
        }
    }
    if dc_only {
        block[0] = estimate(weigh(&DC_ITSELF), quant[0], 0);
    }
    block
}

/// `num / (q << 8)` rounded, in magnitude limited to what the `missing_bits` still unknown could
/// hold, as libjpeg computes it.
fn estimate(num: i64, q: u16, missing_bits: i32) -> i16 {
    let q = i64::from(q);
    let mut magnitude = ((q << 7) + num.abs()) / (q << 8);
    if missing_bits > 0 {
        magnitude = magnitude.min((1 << missing_bits) - 1);
    }
    let value = if num < 0 { -magnitude } else { magnitude };
    value as i32 as i16
}

/// Upsamples a plane to full resolution (`width` × `height`) with libjpeg-turbo's choices:
/// triangle ("fancy") filters for 2:1 horizontal, 2:1 vertical and 2:1 both ways (horizontal
/// ones need at least 3 samples across), plain replication otherwise.
fn upsample(p: &Plane, hx: usize, vx: usize, width: usize, height: usize) -> Vec<u8> {
    let mut out = vec![0u8; width * height];
    let ow = p.w * hx;
    let mut line = vec![0u8; ow];
    // Rows beyond the edges repeat the edge row, as libjpeg's context rows do.
    let neighbour = |y: usize, up: bool| -> &[u8] {
        if up {
            p.row(y.saturating_sub(1))
        } else {
            p.row((y + 1).min(p.h - 1))
        }
    };
    for oy in 0..height {
        let y = oy / vx;
        let this = p.row(y);
        match (hx, vx) {
            (1, 1) => line.copy_from_slice(this),
            (2, 1) if p.w > 2 => h2v1_fancy(this, &mut line),
            (1, 2) => {
                let up = oy % 2 == 0;
                let other = neighbour(y, up);
                let bias = if up { 1 } else { 2 };
                for ((o, &a), &b) in line.iter_mut().zip(this).zip(other) {
                    *o = ((u32::from(a) * 3 + u32::from(b) + bias) >> 2) as u8;
                }
            }
            (2, 2) if p.w > 2 => {
                let other = neighbour(y, oy % 2 == 0);
                h2v2_fancy(this, other, &mut line);
            }
            _ => {
                for (o, x) in line.iter_mut().zip(0..) {
                    *o = this[x / hx];
                }
            }
        }
        out[oy * width..(oy + 1) * width].copy_from_slice(&line[..width]);
    }
    out
}

fn h2v1_fancy(inp: &[u8], out: &mut [u8]) {
    let n = inp.len();
    let v = |i: usize| u32::from(inp[i]);
    out[0] = inp[0];
    out[1] = ((v(0) * 3 + v(1) + 2) >> 2) as u8;
    for i in 1..n - 1 {
        out[2 * i] = ((v(i) * 3 + v(i - 1) + 1) >> 2) as u8;
        out[2 * i + 1] = ((v(i) * 3 + v(i + 1) + 2) >> 2) as u8;
    }
    out[2 * n - 2] = ((v(n - 1) * 3 + v(n - 2) + 1) >> 2) as u8;
    out[2 * n - 1] = inp[n - 1];
}

fn h2v2_fancy(near: &[u8], far: &[u8], out: &mut [u8]) {
    let n = near.len();
    let cs = |i: usize| u32::from(near[i]) * 3 + u32::from(far[i]);
    out[0] = ((cs(0) * 4 + 8) >> 4) as u8;
    out[1] = ((cs(0) * 3 + cs(1) + 7) >> 4) as u8;
    for i in 1..n - 1 {
        out[2 * i] = ((cs(i) * 3 + cs(i - 1) + 8) >> 4) as u8;
        out[2 * i + 1] = ((cs(i) * 3 + cs(i + 1) + 7) >> 4) as u8;
    }
    out[2 * n - 2] = ((cs(n - 1) * 3 + cs(n - 2) + 8) >> 4) as u8;
    out[2 * n - 1] = ((cs(n - 1) * 4 + 7) >> 4) as u8;
}

/// libjpeg's YCbCr→RGB tables (jdcolor.c): 16 fraction bits, rounded.
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

impl YccTables {
    fn new() -> Self {
        const SCALEBITS: u32 = 16;
        const ONE_HALF: i64 = 1 << (SCALEBITS - 1);
        let fix = |x: f64| (x * f64::from(1u32 << SCALEBITS) + 0.5) as i64;
        let mut t = Self {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i64 - 128;
            t.cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cr_g[i] = (-fix(0.71414) * x) as i32;
            t.cb_g[i] = (-fix(0.34414) * x + ONE_HALF) as i32;
        }
        t
    }

    fn rgb(&self, y: u8, cb: u8, cr: u8) -> [i32; 3] {
        let (y, cb, cr) = (i32::from(y), usize::from(cb), usize::from(cr));
        [
            y + self.cr_r[cr],
            y + ((self.cb_g[cb] + self.cr_g[cr]) >> 16),
            y + self.cb_b[cb],
        ]
    }
}

fn clamp8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// libjpeg's guess of the colour space from the markers and component ids.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Space {
    Grey,
    YCbCr,
    Rgb,
    Cmyk,
    Ycck,
}

fn colour_space(f: &Frame, m: &Markers) -> Space {
    match f.comps.len() {
        1 => Space::Grey,
        3 => {
            if m.jfif {
                Space::YCbCr
            } else if let Some(t) = m.adobe_transform {
                if t == 0 {
                    Space::Rgb
                } else {
                    Space::YCbCr
                }
            } else {
                let ids: Vec<u8> = f.comps.iter().map(|c| c.id).collect();
                if ids == [b'R', b'G', b'B'] {
                    Space::Rgb
                } else {
                    Space::YCbCr
                }
            }
        }
        _ => match m.adobe_transform {
            Some(0) | None => Space::Cmyk,
            Some(_) => Space::Ycck,
        },
    }
}

fn finish(f: Frame, m: &Markers, scans: usize) -> Result<Decoded> {
    let (w, h) = (f.width, f.height);
    let smoothing = Smoothing::for_frame(&f, scans);
    let planes: Vec<Vec<u8>> = f
        .comps
        .iter()
        .map(|c| {
            let pw = (w * c.h).div_ceil(f.hmax);
            let ph = (h * c.v).div_ceil(f.vmax);
            let plane = idct_component(c, pw, ph, smoothing.as_ref());
            upsample(&plane, f.hmax / c.h, f.vmax / c.v, w, h)
        })
        .collect();
    let n = w * h;
    let space = colour_space(&f, m);
    let samples = match space {
        Space::Grey => Samples::Grey(planes.into_iter().next().unwrap_or_default()),
        Space::Rgb => {
            let mut out = Vec::with_capacity(n * 3);
            for ((&r, &g), &b) in planes[0].iter().zip(&planes[1]).zip(&planes[2]) {
                out.extend_from_slice(&[r, g, b]);
            }
            Samples::Rgb(out)
        }
        Space::YCbCr => {
            let t = YccTables::new();
            // Written in place: pushing pixel by pixel doubles the time on large images.
            let mut out = vec![0u8; n * 3];
            let ycc = planes[0].iter().zip(&planes[1]).zip(&planes[2]);
            for (px, ((&y, &cb), &cr)) in out.chunks_exact_mut(3).zip(ycc) {
                let [r, g, b] = t.rgb(y, cb, cr);
                px.copy_from_slice(&[clamp8(r), clamp8(g), clamp8(b)]);
            }
            Samples::Rgb(out)
        }
        Space::Cmyk | Space::Ycck => {
            let t = YccTables::new();
            let mut out = Vec::with_capacity(n * 4);
            let quads = planes[0]
                .iter()
                .zip(&planes[1])
                .zip(&planes[2])
                .zip(&planes[3]);
            for (((&c0, &c1), &c2), &k) in quads {
                if space == Space::Cmyk {
                    out.extend_from_slice(&[c0, c1, c2, k]);
                } else {
                    let [r, g, b] = t.rgb(c0, c1, c2);
                    out.extend_from_slice(&[clamp8(255 - r), clamp8(255 - g), clamp8(255 - b), k]);
                }
            }
            Samples::Cmyk(out)
        }
    };
    Ok(Decoded {
        width: w as u32,
        height: h as u32,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_starts_and_ends_right() {
        assert_eq!(&ZIGZAG[..10], &[0, 1, 8, 16, 9, 2, 3, 10, 17, 24]);
        assert_eq!(&ZIGZAG[56..64], &[53, 60, 61, 54, 47, 55, 62, 63]);
        let mut seen = [false; 64];
        for &z in &ZIGZAG[..64] {
            seen[z] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn dc_only_block_is_flat() {
        let mut coefs = [0i16; 64];
        coefs[0] = 8; // DC 8 × quant 16 = 128 → +16 after the 1/8 scaling.
        let q = [16u16; 64];
        let mut out = [0u8; 64];
        idct_block(&coefs, &q, &mut out, 8);
        assert!(out.iter().all(|&v| v == 144), "{out:?}");
    }

    #[test]
    fn flat_block_shortcut_matches_the_full_idct() {
        let mut coefs = [0i16; 64];
        for quant_dc in [1u16, 2, 7, 16, 255, 1000, 40000, 65535] {
            let q = [quant_dc; 64];
            for dc in i16::MIN..=i16::MAX {
                coefs[0] = dc;
                let (mut fast, mut full) = ([0u8; 64], [0u8; 64]);
                flat_block(dc, quant_dc, &mut fast, 8);
                idct_any_block(&coefs, &q, &mut full, 8);
                assert_eq!(fast, full, "dc {dc}, quant {quant_dc}");
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for data in [
            &b""[..],
            b"\xFF",
            b"\xFF\xD8",
            b"\xFF\xD8\xFF\xC0\x00",
            b"\xFF\xD8\xFF",
        ] {
            assert!(decode(data, 1 << 20).is_err());
        }
    }
}
