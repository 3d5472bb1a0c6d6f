//! Calibrated verdicts on generated data: the tiny random-weight CLIP, its prompts and head
//! weights trained briefly on generated textures with pasted defects, is calibrated on one
//! generated set and judged on a held-out one; the F1 of its verdicts there must come within
//! 0.05 of the F1-max that set's threshold-free curve promises. Also: a calibration made with
//! another model is refused, naming what differs.
//!
//! Sets (fixed seeds, `common::texture`): training 64 images (indices 0..64), calibration 96
//! (5000..5096), held-out test 96 (9000..9096); half of each anomalous, S = 96. The image score
//! is the map's evidence alone (λ = 1): the random-weight backbone's global feature carries
//! little, and what is checked here is the calibration, not the global branch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use headclip::calibration::{self, Calibration, CalibrationError, Choice, Method};
use headclip::clip::{load_state_dict, Clip};
use headclip::detector::{Detector, ModelSpec};
use headclip::eval::{self, CategoryResult, EvalOptions, Thresholds};
use headclip::model::HeadClipConfig;
use headclip::train::{TrainOptions, TrainSample, Trainer};
use headclip_data::datasets::{self, DataSpec, Dataset, LoadOptions};
use headclip_data::images::normalize_clip;
use headclip_data::viz;
use tch::Device;

mod common;
use common::{texture, SIDE};

fn tiny_weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/clip_openai.safetensors")
}

fn config() -> HeadClipConfig {
    HeadClipConfig {
        readout: Some(vec![2, 4, 6]),
        dpam_start: Some(3),
        image_size: Some(SIDE as i64),
        jas_lambda: 1.0,
        ..Default::default()
    }
}

/// Trains for 30 epochs on 64 generated images and saves the parameters under `dir`.
fn train(dir: &Path) -> PathBuf {
    let clip =
        Clip::from_state_dict(&load_state_dict(&tiny_weights()).unwrap(), Device::Cpu).unwrap();
    let samples: Vec<TrainSample> = (0..64)
        .map(|i| {
            let (image, mask) = texture(i, i % 2 == 0);
            TrainSample {
                image: normalize_clip(&image),
                mask,
                anomalous: i % 2 == 0,
                mask_known: true,
            }
        })
        .collect();
    let options = TrainOptions {
        epochs: 30,
        batch_size: 8,
        lr: 2e-2,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&clip, config(), options.clone(), 8).unwrap();
    let load = |i: usize| {
        let s = &samples[i];
        Ok(TrainSample {
            image: s.image.clone(),
            mask: s.mask.clone(),
            anomalous: s.anomalous,
            mask_known: true,
        })
    };
    for _ in 0..options.epochs {
        trainer
            .run_epoch(samples.len(), &load, &mut |_, _| {}, &mut |_, _| {})
            .unwrap();
    }
    let path = dir.join("params.safetensors");
    trainer
        .params
        .save(&path, &config(), &BTreeMap::new())
        .unwrap();
    path
}

/// Writes generated images `indices` (odd ones anomalous) as a `folder` data set under `dir`.
fn write_set(dir: &Path, indices: std::ops::Range<u64>) -> Dataset {
    for sub in ["normal", "anomalous", "masks"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for i in indices {
        let anomalous = i % 2 == 1;
        let (image, mask) = texture(i, anomalous);
        let folder = if anomalous { "anomalous" } else { "normal" };
        let png = viz::encode_png(&image).unwrap();
        std::fs::write(dir.join(format!("{folder}/{i:05}.png")), png).unwrap();
        if anomalous {
            let m = viz::encode_mask_png(&mask, SIDE as u32, SIDE as u32).unwrap();
            std::fs::write(dir.join(format!("masks/{i:05}.png")), m).unwrap();
        }
    }
    let spec: DataSpec = format!(
        "folder:{},normal=normal,anomalous=anomalous,masks=masks",
        dir.display()
    )
    .parse()
    .unwrap();
    datasets::load(&spec, &LoadOptions::default()).unwrap()
}

fn load_detector(params: &Path, image_size: i64) -> Detector {
    Detector::load(&ModelSpec {
        params: Some(params.to_path_buf()),
        image_size: Some(image_size),
        ..ModelSpec::new(tiny_weights())
    })
    .unwrap()
}

fn evaluate_at(detector: &Detector, set: &Dataset, calibration: &Calibration) -> CategoryResult {
    let options = EvalOptions {
        thresholds: Some(Thresholds {
            image: calibration.image.threshold,
            pixel: calibration.pixel.map(|p| p.threshold),
        }),
        ..EvalOptions::default()
    };
    let evaluation =
        eval::evaluate(detector, std::slice::from_ref(set), &options, &mut ()).unwrap();
    evaluation.datasets[0].categories[0].clone()
}

#[test]
fn calibrated_verdicts_reach_the_promised_f1_on_held_out_data() {
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let params = train(dir.path());
    let calibration_set = write_set(&dir.path().join("calibration"), 5000..5096);
    let test_set = write_set(&dir.path().join("test"), 9000..9096);
    assert_eq!((calibration_set.len(), test_set.len()), (96, 96));

    let detector = load_detector(&params, SIDE as i64);
    let calibration = calibration::calibrate(
        &detector,
        std::slice::from_ref(&calibration_set),
        vec!["generated 5000..5096".into()],
        Choice::Auto,
        &EvalOptions::default(),
        &mut (),
    )
    .unwrap();
    assert_eq!(calibration.method, Method::F1Max);
    assert_eq!(
        (calibration.counts.normal, calibration.counts.anomalous),
        (48, 48)
    );
    let pixel = calibration
        .pixel
        .expect("a pixel threshold: the set has masks");

    let held_out = evaluate_at(&detector, &test_set, &calibration);
    let at = held_out.calibrated.expect("figures at the thresholds");
    let promised = held_out.metrics.image_f1_max.unwrap();
    let reached = at.image.f1.unwrap();
    let pixel_promised = held_out.metrics.pixel_f1_max.unwrap();
    let pixel_reached = at.pixel.and_then(|p| p.f1).unwrap();
    println!(
        "held out: image AUROC {:.3}, F1-max {promised:.3} at {:?}, F1 {reached:.3} at the \
         calibrated {}; pixel AUROC {:.3}, F1-max {pixel_promised:.3}, F1 {pixel_reached:.3} \
         at the calibrated {}",
        held_out.metrics.image_auroc.unwrap(),
        held_out.image_f1_threshold,
        calibration.image.threshold,
        held_out.metrics.pixel_auroc.unwrap(),
        pixel.threshold
    );
    // The check means something only where the curve promises much.
    assert!(held_out.metrics.image_auroc.unwrap() >= 0.85);
    assert!(
        reached >= promised - 0.05,
        "image F1 {reached:.3} at the calibrated threshold, F1-max {promised:.3}"
    );
    assert!(
        pixel_reached >= pixel_promised - 0.05,
        "pixel F1 {pixel_reached:.3} at the calibrated threshold, F1-max {pixel_promised:.3}"
    );

    // The file round-trips, and the same model accepts it; another image size is refused by name.
    let file = dir.path().join("calibration.json");
    std::fs::write(&file, calibration.to_json()).unwrap();
    let read = Calibration::load(&file).unwrap();
    assert_eq!(read, calibration);
    let same = detector.score_identity().unwrap();
    read.check_identity(&same, &file, false).unwrap();
    let other = load_detector(&params, 112).score_identity().unwrap();
    match read.check_identity(&other, &file, false) {
        Err(CalibrationError::Mismatch { differences, .. }) => {
            assert!(
                differences
                    .iter()
                    .any(|d| d.starts_with("image size: 112 here, 96 in")),
                "{differences:?}"
            );
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    read.check_identity(&other, &file, true).unwrap();
}
