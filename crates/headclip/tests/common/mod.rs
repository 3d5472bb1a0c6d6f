//! Generated textures with pasted defects, the same on every machine: what the learning and
//! calibration tests train and check on.

use headclip_data::images::RgbImage;

/// The side of every generated image.
pub const SIDE: usize = 96;

/// A deterministic generator (splitmix64), so the data set is the same on every machine.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// The look of a texture: base colour (RGB in [0, 1]) and stripes (frequency, angle).
pub struct Look {
    pub base: [f32; 3],
    pub freq: f32,
    pub angle: f32,
}

impl Look {
    fn random(rng: &mut Rng) -> Self {
        let base = [
            0.35 + 0.3 * rng.uniform(),
            0.3 + 0.25 * rng.uniform(),
            0.25 + 0.2 * rng.uniform(),
        ];
        let freq = 0.15 + 0.25 * rng.uniform();
        let angle = rng.uniform() * std::f32::consts::PI;
        Look { base, freq, angle }
    }
}

/// A striped, noisy texture in greys and browns; anomalous ones carry a saturated blob (disc or
/// rectangle) of another colour. Returns the image and its mask (1 = defect), both `SIDE²`.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn texture(index: u64, anomalous: bool) -> (RgbImage, Vec<u8>) {
    let mut rng = Rng(index * 7919 + 13);
    let look = Look::random(&mut rng);
    paint(&mut rng, &look, anomalous)
}

/// As [`texture`], with one look for every image: only the noise and the defect change with
/// `index`.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn texture_of(look: &Look, index: u64, anomalous: bool) -> (RgbImage, Vec<u8>) {
    paint(&mut Rng(index * 7919 + 13), look, anomalous)
}

fn paint(rng: &mut Rng, look: &Look, anomalous: bool) -> (RgbImage, Vec<u8>) {
    let Look { base, freq, angle } = *look;
    let mut pixels = vec![0u8; SIDE * SIDE * 3];
    let mut mask = vec![0u8; SIDE * SIDE];
    let (cx, cy, r, rect) = (
        rng.range(16, SIDE - 16),
        rng.range(16, SIDE - 16),
        rng.range(10, 18),
        rng.uniform() < 0.5,
    );
    let defect = [0.9 * rng.uniform(), 0.2 + 0.8 * rng.uniform(), 0.9];
    for y in 0..SIDE {
        for x in 0..SIDE {
            let t = (x as f32 * angle.cos() + y as f32 * angle.sin()) * freq;
            let stripe = 0.12 * t.sin();
            let inside = anomalous && {
                let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
                if rect {
                    dx.abs() <= r as i64 && dy.abs() <= (r / 2) as i64 + 2
                } else {
                    dx * dx + dy * dy <= (r * r) as i64
                }
            };
            for c in 0..3 {
                let noise = 0.08 * (rng.uniform() - 0.5);
                let v = if inside {
                    defect[c] + noise
                } else {
                    base[c] + stripe + noise
                };
                pixels[(y * SIDE + x) * 3 + c] = (v.clamp(0.0, 1.0) * 255.0) as u8;
            }
            mask[y * SIDE + x] = u8::from(inside);
        }
    }
    (
        RgbImage::new(SIDE as u32, SIDE as u32, pixels).unwrap(),
        mask,
    )
}
