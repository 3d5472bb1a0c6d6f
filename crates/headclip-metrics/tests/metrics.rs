//! Parity of `headclip_metrics` with scikit-learn / scikit-image and the spec's two AUPRO
//! definitions, against fixtures from `reference/gen_metric_fixtures.py`; plus properties that
//! need no fixture.

use std::path::PathBuf;

use headclip_metrics::{
    connected_components, image_metrics, ImageMetrics, MetricsError, PixelAccumulator, PixelMetrics,
};
use serde_json::Value;

const TOL: f64 = 1e-9;

fn fixture(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str::<Value>(&text)
        .expect("fixture is JSON")
        .as_array()
        .expect("fixture is an array")
        .clone()
}

fn opt(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| {
            // Stored as strings: shortest float32 decimals, parsed exactly by `str::parse`.
            let text = x.as_str().expect("float32 values are stored as strings");
            text.parse::<f32>()
                .unwrap_or_else(|e| panic!("{text}: {e}"))
        })
        .collect()
}

fn check(case: &str, what: &str, got: Option<f64>, expected: Option<f64>) {
    match (got, expected) {
        (None, None) => {}
        (Some(g), Some(e)) => assert!(
            (g - e).abs() <= TOL,
            "{case}: {what} = {g:.17}, scikit/reference {e:.17} (diff {:e})",
            (g - e).abs()
        ),
        _ => panic!("{case}: {what} = {got:?}, reference {expected:?}"),
    }
}

#[test]
fn image_metrics_match_sklearn() {
    let cases = fixture("image_cases.json");
    assert!(cases.len() >= 40);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let scores = f32s(&c["scores"]);
        let labels: Vec<bool> = c["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_bool().unwrap())
            .collect();
        let m = image_metrics(&scores, &labels).unwrap();
        check(name, "auroc", m.auroc, opt(&c["auroc"]));
        check(name, "ap", m.ap, opt(&c["ap"]));
        check(name, "f1_max", m.f1_max, opt(&c["f1_max"]));
    }
}

fn pixel_inputs(c: &Value) -> (usize, usize, Vec<Vec<f32>>, Vec<Vec<u8>>) {
    let h = c["height"].as_u64().unwrap() as usize;
    let w = c["width"].as_u64().unwrap() as usize;
    let maps: Vec<Vec<f32>> = c["maps"].as_array().unwrap().iter().map(f32s).collect();
    let masks: Vec<Vec<u8>> = c["masks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u8)
                .collect()
        })
        .collect();
    (h, w, maps, masks)
}

#[test]
fn pixel_metrics_match_reference() {
    let cases = fixture("pixel_cases.json");
    assert!(cases.len() >= 10);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let (h, w, maps, masks) = pixel_inputs(c);
        let mut acc = PixelAccumulator::with_shape(h, w);
        acc.reserve_images(maps.len());
        for (map, mask) in maps.iter().zip(&masks) {
            acc.add(map, mask).unwrap();
        }
        assert_eq!(acc.images(), maps.len());
        assert_eq!(acc.pixels(), maps.len() * h * w);
        assert_eq!(
            acc.regions(),
            c["region_sizes_sorted"].as_array().unwrap().len(),
            "{name}: region count"
        );
        let m = acc.finish();
        check(name, "pixel auroc", m.auroc, opt(&c["auroc"]));
        check(name, "pixel ap", m.ap, opt(&c["ap"]));
        check(name, "pixel f1_max", m.f1_max, opt(&c["f1_max"]));
        check(
            name,
            "aupro_anomalyclip",
            m.aupro_anomalyclip,
            opt(&c["aupro_anomalyclip"]),
        );
        check(name, "aupro_mvtec", m.aupro_mvtec, opt(&c["aupro_mvtec"]));
    }
}

#[test]
fn components_match_skimage() {
    for c in &fixture("pixel_cases.json") {
        let name = c["name"].as_str().unwrap();
        let (h, w, _, masks) = pixel_inputs(c);
        let per_image: Vec<u64> = c["regions_per_image"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        let mut sizes = Vec::new();
        for (mask, &expected) in masks.iter().zip(&per_image) {
            let comp = connected_components(mask, h, w);
            assert_eq!(comp.count() as u64, expected, "{name}: regions of an image");
            // Labels are consistent with sizes and cover exactly the mask.
            for (k, &s) in comp.sizes.iter().enumerate() {
                let n = comp.labels.iter().filter(|&&l| l == k as u32 + 1).count();
                assert_eq!(n as u32, s);
            }
            for (&l, &m) in comp.labels.iter().zip(mask) {
                assert_eq!(l != 0, m != 0);
            }
            sizes.extend(comp.sizes);
        }
        sizes.sort_unstable();
        let expected: Vec<u32> = c["region_sizes_sorted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(sizes, expected, "{name}: region sizes");
    }
}

#[test]
fn degenerate_inputs_are_absent_not_nan() {
    let none = ImageMetrics::default();
    assert_eq!(image_metrics(&[], &[]).unwrap(), none);
    assert_eq!(image_metrics(&[0.3, 0.9], &[true, true]).unwrap(), none);
    assert_eq!(image_metrics(&[0.3, 0.9], &[false, false]).unwrap(), none);
    let constant = image_metrics(&[0.5; 4], &[true, false, false, false]).unwrap();
    assert_eq!(constant.auroc, Some(0.5));
    assert_eq!(constant.ap, Some(0.25));
    assert!((constant.f1_max.unwrap() - 0.4).abs() < 1e-15);

    assert_eq!(PixelAccumulator::new(8).finish(), PixelMetrics::default());

    let mut acc = PixelAccumulator::new(3);
    acc.add(&[0.1; 9], &[0; 9]).unwrap();
    assert_eq!(acc.finish(), PixelMetrics::default());

    let mut acc = PixelAccumulator::new(2);
    acc.add(&[0.7; 4], &[0, 1, 0, 0]).unwrap();
    let m = acc.finish();
    assert_eq!(m.auroc, Some(0.5));
    assert_eq!(m.aupro_anomalyclip, None);
    assert!((m.aupro_mvtec.unwrap() - 0.15).abs() < 1e-12);
}

#[test]
fn bad_inputs_are_errors() {
    assert!(matches!(
        image_metrics(&[0.1, 0.2], &[true]),
        Err(MetricsError::LengthMismatch { .. })
    ));
    assert_eq!(
        image_metrics(&[0.1, f32::NAN], &[true, false]),
        Err(MetricsError::NonFinite {
            what: "scores",
            index: 1
        })
    );
    let mut acc = PixelAccumulator::new(2);
    assert!(acc.add(&[0.0; 3], &[0; 4]).is_err());
    assert!(acc.add(&[0.0; 4], &[0; 5]).is_err());
    assert!(acc
        .add(&[0.0, f32::INFINITY, 0.0, 0.0], &[0, 1, 0, 0])
        .is_err());
    assert_eq!(acc.images(), 0);
    assert_eq!(acc.pixels(), 0);
}

/// A small xorshift generator, so the property tests need no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn random_image(rng: &mut Rng, side: usize, levels: u32, anomalous: bool) -> (Vec<f32>, Vec<u8>) {
    let mut mask = vec![0u8; side * side];
    if anomalous {
        for _ in 0..3 {
            let (cy, cx) = (rng.next() as usize % side, rng.next() as usize % side);
            let r = 1 + rng.next() as usize % (side / 6).max(1);
            for y in cy.saturating_sub(r)..(cy + r).min(side) {
                for x in cx.saturating_sub(r)..(cx + r).min(side) {
                    mask[y * side + x] = 1;
                }
            }
        }
    }
    let map = mask
        .iter()
        .map(|&m| {
            let v = 0.7 * rng.unit() + 0.3 * m as f32 * rng.unit();
            if levels > 0 {
                (v * levels as f32).round() / levels as f32
            } else {
                v
            }
        })
        .collect();
    (map, mask)
}

/// `images` random images of which every third (from the first) is normal.
fn random_category(
    rng: &mut Rng,
    images: usize,
    side: usize,
    levels: u32,
) -> Vec<(Vec<f32>, Vec<u8>)> {
    (0..images)
        .map(|i| random_image(rng, side, levels, i % 3 != 0))
        .collect()
}

/// Pixel AUROC/AP/F1-max are the image-level functions over the flattened pixels, whatever path
/// (radix or comparison sort, merge of two sets) the accumulator takes.
#[test]
fn pixel_curve_metrics_equal_flattened_image_metrics() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for &(images, side, levels) in &[(5usize, 16usize, 20u32), (12, 64, 0), (6, 80, 255)] {
        let data = random_category(&mut rng, images, side, levels);
        let mut acc = PixelAccumulator::new(side);
        let (mut scores, mut labels) = (Vec::new(), Vec::new());
        for (map, mask) in &data {
            acc.add(map, mask).unwrap();
            scores.extend_from_slice(map);
            labels.extend(mask.iter().map(|&m| m != 0));
        }
        let p = acc.finish();
        let i = image_metrics(&scores, &labels).unwrap();
        for (a, b) in [(p.auroc, i.auroc), (p.ap, i.ap), (p.f1_max, i.f1_max)] {
            let (a, b) = (a.unwrap(), b.unwrap());
            assert!((a - b).abs() <= 1e-12, "{a} vs {b}");
        }
        let (ac, mv) = (p.aupro_anomalyclip.unwrap(), p.aupro_mvtec.unwrap());
        assert!((0.0..=1.0).contains(&ac) && (0.0..=1.0).contains(&mv));
    }
}

/// A category the size the spec evaluates (170 maps of 518²); run with
/// `cargo test --release -p headclip --test metrics -- --ignored --nocapture`.
#[test]
#[ignore = "large: 45 M pixels, run in release"]
fn full_size_category() {
    let side = 518;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut acc = PixelAccumulator::new(side);
    acc.reserve_images(170);
    let start = std::time::Instant::now();
    for i in 0..170 {
        let (map, mask) = random_image(&mut rng, side, 0, i % 3 != 0);
        acc.add(&map, &mask).unwrap();
    }
    let added = start.elapsed();
    let start = std::time::Instant::now();
    let m = acc.finish();
    eprintln!(
        "add: {added:?} (incl. generation), finish: {:?}, {m:?}",
        start.elapsed()
    );
    assert!(m.auroc.is_some() && m.aupro_anomalyclip.is_some() && m.aupro_mvtec.is_some());
}

/// F1-max thresholds checked by hand and against scikit-learn 1.x (`precision_recall_curve`,
/// then numpy's argmax of 2PR/(P+R) over its ascending thresholds): a score is positive when
/// `>=` the threshold, and equal F1s go to the lowest threshold.
#[test]
fn f1_max_thresholds_follow_precision_recall_curve() {
    let cases: [(&[f32], &[bool], f32, f64); 5] = [
        // 0.8 → F1 2/3, 0.4 → 1/2, 0.35 → 4/5, 0.1 → 2/3.
        (
            &[0.1, 0.4, 0.35, 0.8],
            &[false, false, true, true],
            0.35,
            0.8,
        ),
        // Tied scores move together: 0.5 takes one normal and one anomalous image at once.
        (
            &[0.2, 0.2, 0.5, 0.5, 0.9],
            &[false, true, false, true, true],
            0.2,
            0.75,
        ),
        // 0.9 and 0.1 both give exactly 2/3: the lowest wins, as numpy's argmax picks it.
        (
            &[0.1, 0.3, 0.6, 0.9],
            &[true, false, false, true],
            0.1,
            2.0 / 3.0,
        ),
        // One distinct score: the only threshold.
        (&[0.5, 0.5, 0.5], &[false, true, true], 0.5, 0.8),
        (
            &[0.1, 0.2, 0.3, 0.4],
            &[true, false, true, false],
            0.1,
            2.0 / 3.0,
        ),
    ];
    for (scores, labels, threshold, f1) in cases {
        let m = image_metrics(scores, labels).unwrap();
        assert_eq!(m.f1_threshold, Some(threshold), "{scores:?}");
        assert!((m.f1_max.unwrap() - f1).abs() < 1e-12, "{scores:?}");
        // The same values as pixels of one 1×n map give the same threshold.
        let mut acc = PixelAccumulator::with_shape(1, scores.len());
        let mask: Vec<u8> = labels.iter().map(|&l| u8::from(l)).collect();
        acc.add(scores, &mask).unwrap();
        let at = acc.confusion_at(threshold);
        assert_eq!(at.f1().map(|v| (v - f1).abs() < 1e-12), Some(true));
        assert_eq!(acc.finish().f1_threshold, Some(threshold), "{scores:?}");
    }
    let one_class = image_metrics(&[0.1, 0.2], &[false, false]).unwrap();
    assert_eq!(one_class.f1_threshold, None);
}
