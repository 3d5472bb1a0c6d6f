//! It learns: training the tiny random-weight CLIP's prompts and head weights on generated
//! textures with pasted defects lifts pixel AUROC and image AUROC (of the joint score) on
//! held-out generated images from where they start to at least 0.9 each.

use std::path::Path;

use headclip::clip::{load_state_dict, Clip};
use headclip::model::{HeadClip, HeadClipConfig, HeadClipParams};
use headclip::train::{LossSelection, TrainOptions, TrainSample, Trainer};
use headclip_data::images::normalize_clip;
use headclip_metrics::{image_metrics, PixelAccumulator};
use tch::{Device, Tensor};

mod common;
use common::SIDE;

/// A generated texture (see `common::texture`) as a training sample.
fn generate(index: u64, anomalous: bool) -> TrainSample {
    let (image, mask) = common::texture(index, anomalous);
    TrainSample {
        image: normalize_clip(&image),
        mask,
        anomalous,
        mask_known: true,
    }
}

fn clip() -> Clip {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/clip_openai.safetensors");
    Clip::from_state_dict(&load_state_dict(&path).unwrap(), Device::Cpu).unwrap()
}

fn config() -> HeadClipConfig {
    HeadClipConfig {
        readout: Some(vec![2, 4, 6]),
        dpam_start: Some(3),
        image_size: Some(SIDE as i64),
        ..Default::default()
    }
}

/// (pixel AUROC, image AUROC) of `params` on the held-out set.
fn evaluate(params: &HeadClipParams, held_out: &[TrainSample]) -> (f64, f64) {
    let clip = clip();
    let resolved = config().resolve(&clip.config).unwrap();
    let copy = HeadClipParams {
        ctx_pos: params.ctx_pos.detach().copy(),
        ctx_neg: params.ctx_neg.detach().copy(),
        deep: params.deep.iter().map(|t| t.detach().copy()).collect(),
        theta: params.theta.detach().copy(),
        u: params.u.as_ref().map(|t| t.detach().copy()),
    };
    let model = HeadClip::new(clip, Some(copy), resolved).unwrap();
    let mut pixels = PixelAccumulator::new(SIDE);
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for chunk in held_out.chunks(8) {
        let flat: Vec<f32> = chunk.iter().flat_map(|s| s.image.iter().copied()).collect();
        let images =
            Tensor::from_slice(&flat).view([chunk.len() as i64, 3, SIDE as i64, SIDE as i64]);
        for (s, out) in chunk.iter().zip(model.score(&images)) {
            pixels.add(&out.map, &s.mask).unwrap();
            scores.push(out.score);
            labels.push(s.anomalous);
        }
    }
    let pixel = pixels.finish().auroc.unwrap();
    let image = image_metrics(&scores, &labels).unwrap().auroc.unwrap();
    (pixel, image)
}

/// The trainer's sample loader over samples already in memory.
fn loader(samples: &[TrainSample]) -> impl Fn(usize) -> Result<TrainSample, String> + Sync + '_ {
    |i| {
        let s = &samples[i];
        Ok(TrainSample {
            image: s.image.clone(),
            mask: s.mask.clone(),
            anomalous: s.anomalous,
            mask_known: s.mask_known,
        })
    }
}

/// Trains on 96 generated images for 60 epochs and checks that the loss falls and that pixel and
/// image AUROC on 32 held-out ones rise to at least 0.9.
fn learns(loss: LossSelection) {
    tch::set_num_threads(2);
    let train: Vec<TrainSample> = (0..96).map(|i| generate(i, i % 2 == 0)).collect();
    let held_out: Vec<TrainSample> = (1000..1032).map(|i| generate(i, i % 2 == 1)).collect();
    let clip = clip();
    let options = TrainOptions {
        epochs: 60,
        batch_size: 8,
        lr: 2e-2,
        loss,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&clip, config(), options.clone(), 8).unwrap();
    let (pixel_before, image_before) = evaluate(&trainer.params, &held_out);
    let load = loader(&train);
    let mut first = None;
    for _ in 0..options.epochs {
        let record = trainer
            .run_epoch(train.len(), &load, &mut |_, _| {}, &mut |_, _| {})
            .unwrap();
        first.get_or_insert(record.loss.total);
    }
    let last = trainer.history.last().unwrap().loss.total;
    let (pixel_after, image_after) = evaluate(&trainer.params, &held_out);
    println!(
        "joint-loss weight {}: pixel AUROC {pixel_before:.3} -> {pixel_after:.3}, image AUROC \
         {image_before:.3} -> {image_after:.3}, loss {:.3} -> {last:.3} over {} steps",
        loss.joint_weight,
        first.unwrap(),
        options.epochs * train.len() / options.batch_size
    );
    assert!(last < first.unwrap(), "loss did not fall");
    assert!(
        pixel_after >= 0.9,
        "pixel AUROC {pixel_after:.3} < 0.9 (started at {pixel_before:.3})"
    );
    assert!(
        image_after >= 0.9,
        "image AUROC {image_after:.3} < 0.9 (started at {image_before:.3})"
    );
    assert!(pixel_after > pixel_before && image_after > image_before);
}

#[test]
fn training_lifts_pixel_and_image_auroc_above_0_9() {
    learns(LossSelection::default());
}

/// The same with the joint-score loss added (weight 1).
#[test]
fn training_with_the_joint_score_loss_also_learns() {
    learns(LossSelection {
        joint_weight: 1.0,
        ..Default::default()
    });
}

/// A run stopped between two batches of an epoch and resumed from its training-state file
/// reaches the same parameters, optimizer moments and loss history, bit for bit, as a run that
/// was never stopped.
#[test]
fn resuming_mid_epoch_is_bit_identical() {
    tch::set_num_threads(2);
    let data: Vec<TrainSample> = (0..20).map(|i| generate(i, i % 2 == 0)).collect();
    let load = loader(&data);
    let clip = clip();
    let options = TrainOptions {
        epochs: 2,
        batch_size: 8,
        ..Default::default()
    };
    let snapshot = |t: &Trainer| -> Vec<Vec<f32>> {
        let mut out: Vec<Vec<f32>> = headclip::train::trainable(&t.params)
            .into_iter()
            .map(|(_, x)| Vec::try_from(&x.detach().flatten(0, -1)).unwrap())
            .collect();
        out.extend(
            t.adam
                .m
                .iter()
                .chain(&t.adam.v)
                .map(|x| Vec::try_from(&x.flatten(0, -1)).unwrap()),
        );
        out
    };

    let mut straight = Trainer::new(&clip, config(), options.clone(), 8).unwrap();
    for _ in 0..2 {
        straight
            .run_epoch(data.len(), &load, &mut |_, _| {}, &mut |_, _| {})
            .unwrap();
    }

    // Epoch 1 whole, then one of epoch 2's three batches; stop and save.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("run.state.safetensors");
    let mut first = Trainer::new(&clip, config(), options, 8).unwrap();
    first
        .run_epoch(data.len(), &load, &mut |_, _| {}, &mut |_, _| {})
        .unwrap();
    assert!(first
        .next_batch(data.len(), &load, &mut |_, _| {})
        .unwrap()
        .is_some());
    first.save_state(&state).unwrap();
    drop(first);

    let mut resumed = Trainer::resume(&clip, &state).unwrap();
    assert_eq!((resumed.epochs_done, resumed.progress.batches_done), (1, 1));
    let mut batches = 0;
    resumed
        .run_epoch(data.len(), &load, &mut |_, _| batches += 1, &mut |_, _| {})
        .unwrap();
    assert_eq!(
        batches, 2,
        "the resumed epoch must run only its remaining batches"
    );
    assert_eq!(resumed.history, straight.history);
    assert!(
        snapshot(&resumed) == snapshot(&straight),
        "parameters or optimizer moments differ from the uninterrupted run"
    );
}
