//! Damaged images against Pillow: for every case of the fixed corpus written by
//! `reference/gen_damaged_corpus.py` (Pillow 13.0.0), `decode_rgb` must make Pillow's decision
//! (decode or refuse) and, where it decodes, give Pillow's `convert("RGB")` pixels exactly.
//!
//! The few cases where the decoder still departs from Pillow are listed in
//! [`KNOWN_DIVERGENCES`] with the reason; the test fails when a listed case starts agreeing
//! (the list must shrink) as well as when any other case differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use headclip_data::images::{decode_rgb, DecodeLimits};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Cases that differ from Pillow today, by reason.
const KNOWN_DIVERGENCES: &[(&str, &[&str])] = &[];

fn known_divergence(file: &str) -> bool {
    KNOWN_DIVERGENCES
        .iter()
        .any(|(_, files)| files.contains(&file))
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/damaged")
}

/// What one case gave, in the manifest's terms.
#[derive(Debug, PartialEq)]
enum Verdict {
    Decode {
        width: u32,
        height: u32,
        sha256: String,
    },
    Refuse,
}

fn expected(case: &Value) -> Verdict {
    match case["pillow"].as_str().unwrap() {
        "decode" => Verdict::Decode {
            width: case["width"].as_u64().unwrap() as u32,
            height: case["height"].as_u64().unwrap() as u32,
            sha256: case["rgb_sha256"].as_str().unwrap().to_owned(),
        },
        "refuse" => Verdict::Refuse,
        other => panic!("unknown verdict {other:?}"),
    }
}

fn actual(bytes: &[u8]) -> (Verdict, String) {
    match decode_rgb(bytes, &DecodeLimits::default()) {
        Ok(img) => {
            let sha256 = format!("{:x}", Sha256::digest(&img.pixels));
            let v = Verdict::Decode {
                width: img.width,
                height: img.height,
                sha256,
            };
            (v, String::new())
        }
        Err(e) => (Verdict::Refuse, e.to_string()),
    }
}

#[test]
fn decisions_and_pixels_match_pillow_on_the_damaged_corpus() {
    let text = std::fs::read_to_string(corpus().join("manifest.json")).unwrap();
    let manifest: Value = serde_json::from_str(&text).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() > 500, "corpus has only {} cases", cases.len());
    let mut per_seed: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut mismatches = Vec::new();
    let mut known = 0;
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let seed = case["seed"].as_str().unwrap();
        let bytes = std::fs::read(corpus().join(file)).unwrap();
        let want = expected(case);
        let (got, error) = actual(&bytes);
        let tally = per_seed.entry(seed).or_default();
        tally.0 += 1;
        if got == want {
            tally.1 += 1;
            if known_divergence(file) {
                mismatches.push(format!(
                    "{file} now agrees: remove it from KNOWN_DIVERGENCES"
                ));
            }
            continue;
        }
        if known_divergence(file) {
            known += 1;
            continue;
        }
        let pillow = case["error"].as_str().unwrap_or("decodes");
        let ours = match &got {
            Verdict::Refuse => error,
            Verdict::Decode { .. } => "decodes".to_owned(),
        };
        let differs = match (&got, &want) {
            (Verdict::Decode { .. }, Verdict::Decode { .. }) => "pixels differ",
            _ => "decision differs",
        };
        mismatches.push(format!(
            "{file} ({seed}, {}): {differs}; Pillow: {pillow}; here: {ours}",
            case["damage"].as_str().unwrap()
        ));
    }
    for (seed, (n, ok)) in &per_seed {
        eprintln!("{seed}: {ok} of {n} cases agree with Pillow");
    }
    let agree: usize = per_seed.values().map(|t| t.1).sum();
    eprintln!(
        "{} cases, {agree} agree with Pillow, {known} known divergences",
        cases.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} cases break the expectation:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}
