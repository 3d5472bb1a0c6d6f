//! Gradient parity of one training step with the PyTorch reference, which back-propagates
//! straightforwardly through the whole image trunk: the engine's cheap value–value gradient
//! (and its full-autograd path for `lhw_paths = both`) must give the same loss, gradients of
//! every trainable tensor, and parameters after one Adam step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use headclip::clip::{load_state_dict, Clip, ClipTokenizer};
use headclip::model::HeadClipParams;
use headclip::train::{loss_and_gradients, trainable, Adam, Batch, LossSelection, LossTerms};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

fn assert_close(what: &str, engine: &Tensor, reference: &Tensor) {
    let engine = engine.to_kind(Kind::Double);
    let reference = reference.to_kind(Kind::Double);
    assert_eq!(engine.size(), reference.size(), "{what}: shape");
    let excess = (&engine - &reference).abs() - (reference.abs() + 1.0) * 1e-4;
    let max_diff = (&engine - &reference).abs().max().double_value(&[]);
    assert!(
        excess.max().double_value(&[]) <= 0.0,
        "{what}: max |engine − reference| = {max_diff:e}"
    );
}

/// The reference's expected values (`expected.safetensors`).
fn expected() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("expected.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// The batch of the fixture case `case`: its own (`train.<case>.images`, labels, masks and which
/// masks are known), or the shared two images with both masks known.
fn fixture_batch(exp: &HashMap<String, Tensor>, case: &str) -> Batch {
    let own = |k: &str| exp.get(&format!("train.{case}.{k}"));
    match own("images") {
        Some(images) => Batch {
            images: images.shallow_clone(),
            labels: own("labels").unwrap().to_kind(Kind::Int64),
            masks: own("masks").unwrap().shallow_clone(),
            mask_known: Vec::<u8>::try_from(own("mask_known").unwrap())
                .unwrap()
                .into_iter()
                .map(|k| k == 1)
                .collect(),
        },
        None => Batch {
            images: exp["images"].shallow_clone(),
            labels: exp["train.labels"].to_kind(Kind::Int64),
            masks: exp["train.masks"].shallow_clone(),
            mask_known: vec![true; 2],
        },
    }
}

/// One training step on the batch of fixture case `case` with the tiny CLIP loaded in `kind`
/// and the parameters `params_<params>.safetensors`: the loss terms, and the parameters holding
/// their gradients.
fn fixture_step(
    case: &str,
    kind: Kind,
    params: &str,
    terms: LossSelection,
    gradient_checkpointing: bool,
) -> (LossTerms, HeadClipParams) {
    let exp = expected();
    let mut state = load_state_dict(&fixtures().join("clip_openai.safetensors")).unwrap();
    state.kind = kind;
    let clip = Clip::from_state_dict(&state, Device::Cpu).unwrap();
    assert_eq!(clip.vision.kind(), kind);
    let (params, _, config) = HeadClipParams::load(
        &fixtures().join(format!("params_{params}.safetensors")),
        &clip.config,
    )
    .unwrap();
    for (_, t) in trainable(&params) {
        let _ = t.set_requires_grad(true);
    }
    let batch = fixture_batch(&exp, case);
    let terms = loss_and_gradients(
        &clip,
        &ClipTokenizer::new(),
        &config,
        &params,
        &batch,
        terms,
        gradient_checkpointing,
    )
    .unwrap();
    (terms, params)
}

/// One step of the fixture case `case` (its parameters are `params_<params>.safetensors`) with
/// the given loss selection against the reference's `train.<case>.*` values.
fn step_matches_reference(
    case: &str,
    params: &str,
    terms: LossSelection,
    gradient_checkpointing: bool,
) {
    let exp = expected();
    let (terms, params) = fixture_step(case, Kind::Float, params, terms, gradient_checkpointing);
    let e = |k: &str| &exp[&format!("train.{case}.{k}")];
    let mut losses = vec![
        ("total", terms.total),
        ("ce", terms.ce),
        ("focal", terms.focal),
        ("dice", terms.dice),
    ];
    if exp.contains_key(&format!("train.{case}.loss.joint")) {
        losses.push(("joint", terms.joint));
    }
    for (name, value) in losses {
        assert_close(
            &format!("{case}: loss {name}"),
            &Tensor::from_slice(&[value]),
            e(&format!("loss.{name}")),
        );
    }
    let named = trainable(&params);
    assert_eq!(
        named.len(),
        exp.keys()
            .filter(|k| k.starts_with(&format!("train.{case}.grad.")))
            .count()
    );
    for (name, t) in &named {
        assert_close(
            &format!("{case}: gradient of {name}"),
            &t.grad(),
            e(&format!("grad.{name}")),
        );
    }
    let tensors: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
    let mut adam = Adam::new(&tensors, 1e-3, 0.5, 0.999);
    adam.step(&tensors);
    for (name, t) in &named {
        assert_close(
            &format!("{case}: {name} after one Adam step"),
            t,
            e(&format!("after.{name}")),
        );
    }
}

fn protocol() -> LossSelection {
    LossSelection::default()
}

#[test]
fn value_value_gradient_matches_full_autograd() {
    step_matches_reference("learned", "learned", protocol(), false);
}

#[test]
fn dynamic_head_weight_gradient_matches() {
    step_matches_reference("dynamic", "dynamic", protocol(), false);
}

#[test]
fn both_paths_gradient_matches() {
    step_matches_reference("both", "both", protocol(), false);
}

/// Recomputing the two-path blocks one at a time gives the same gradients as keeping the trunk.
#[test]
fn both_paths_gradient_with_checkpointing_matches() {
    step_matches_reference("both", "both", protocol(), true);
}

/// The joint-score loss (smoothing, top-k mean and the global score, differentiated) on top of
/// the protocol's terms, through the cheap value–value gradient.
#[test]
fn joint_score_loss_gradient_matches() {
    let weight = expected()["train.joint.weight"].double_value(&[0]);
    let terms = LossSelection {
        joint_weight: weight,
        ..protocol()
    };
    step_matches_reference("joint", "learned", terms, false);
}

/// The spec's mixed data: a masked anomalous image, a normal image of the same masked set and an
/// anomalous image without a mask. The focal and Dice terms cover the first two only, the
/// cross-entropy all three.
#[test]
fn mixed_data_batch_gradient_matches() {
    step_matches_reference("mixed", "learned", protocol(), false);
}

/// `--precision bf16` trains mixed: the towers in bf16, loss, gradients and parameters in fp32.
/// Its step stays close to the fp32 reference: each loss term within `LOSS_TOL` relative, each
/// gradient within `GRAD_TOL` in relative L2 norm (`‖g − g_ref‖ / ‖g_ref‖`).
fn mixed_precision_step_stays_close(case: &str, params: &str, terms: LossSelection) {
    const LOSS_TOL: f64 = 1e-2;
    const GRAD_TOL: f64 = 0.05;
    let exp = expected();
    let (got, params) = fixture_step(case, Kind::BFloat16, params, terms, false);
    let e = |k: &str| &exp[&format!("train.{case}.{k}")];
    for (name, value) in [
        ("total", got.total),
        ("ce", got.ce),
        ("focal", got.focal),
        ("dice", got.dice),
    ] {
        let reference = e(&format!("loss.{name}")).double_value(&[0]);
        let rel = (value - reference).abs() / reference.abs().max(1e-12);
        println!("{case}: bf16 loss {name} relative difference {rel:.2e}");
        assert!(
            rel <= LOSS_TOL,
            "{case}: bf16 loss {name} {value} against {reference}"
        );
    }
    let mut largest = 0.0f64;
    for (name, t) in trainable(&params) {
        let g = t.grad().to_kind(Kind::Double);
        let reference = e(&format!("grad.{name}")).to_kind(Kind::Double);
        let rel = (&g - &reference).norm().double_value(&[]) / reference.norm().double_value(&[]);
        println!("{case}: bf16 gradient of {name} relative L2 difference {rel:.2e}");
        assert!(
            rel <= GRAD_TOL,
            "{case}: bf16 gradient of {name} is {rel:.3} off (relative L2)"
        );
        largest = largest.max(rel);
    }
    // fp32 agrees with the reference to about 1e-6: a step this close did not run in bf16.
    assert!(
        largest > 1e-3,
        "{case}: the step looks like fp32 ({largest:.1e})"
    );
}

#[test]
fn mixed_precision_step_stays_close_to_fp32() {
    mixed_precision_step_stays_close("learned", "learned", protocol());
    mixed_precision_step_stays_close("dynamic", "dynamic", protocol());
    mixed_precision_step_stays_close("both", "both", protocol());
}
