//! Parity with the PyTorch reference (`reference/gen_fixtures.py`) on a tiny random-weight CLIP:
//! both checkpoint formats, every head-weight variant, and the training-free mode. The model is
//! fed the reference's input tensor; fp32 throughout; |engine − reference| ≤ 1e-4·(1 + |reference|).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use headclip::clip::{load_state_dict, CheckpointFormat, Clip, ClipTokenizer};
use headclip::model::{prompts, HeadClip, HeadClipConfig, HeadClipParams};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

fn expected() -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let path = fixtures().join("expected.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let tensors = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .collect();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

fn assert_close(what: &str, engine: &Tensor, reference: &Tensor) {
    let engine = engine.to_kind(Kind::Double).to_device(Device::Cpu);
    let reference = reference.to_kind(Kind::Double);
    assert_eq!(engine.size(), reference.size(), "{what}: shape");
    let excess = (&engine - &reference).abs() - (reference.abs() + 1.0) * 1e-4;
    let worst = excess.max().double_value(&[]);
    let max_diff = (&engine - &reference).abs().max().double_value(&[]);
    assert!(
        worst <= 0.0,
        "{what}: max |engine − reference| = {max_diff:e} exceeds 1e-4·(1+|ref|)"
    );
}

fn clip(file: &str) -> Clip {
    let state = load_state_dict(&fixtures().join(file)).unwrap();
    Clip::from_state_dict(&state, Device::Cpu).unwrap()
}

fn check_case(model: &HeadClip, case: &str, exp: &HashMap<String, Tensor>) {
    let e = |k: &str| &exp[&format!("{case}.{k}")];
    assert_close(
        &format!("{case}: text features"),
        &model.text_features,
        e("text"),
    );
    let images = &exp["images"];
    let out = {
        let _g = tch::no_grad_guard();
        model.forward(images, &model.text_features)
    };
    assert_close(
        &format!("{case}: global score"),
        &out.global_score,
        e("global_score"),
    );
    assert_close(
        &format!("{case}: per-layer maps"),
        &out.layer_maps,
        e("layer_maps"),
    );
    let scores = model.smooth_and_score(&out);
    let side = images.size()[3];
    let maps: Vec<f32> = scores.iter().flat_map(|s| s.map.clone()).collect();
    let maps = Tensor::from_slice(&maps).view([-1, side, side]);
    assert_close(&format!("{case}: smoothed map"), &maps, e("map"));
    let col = |f: fn(&headclip::model::ImageScore) -> f32| {
        Tensor::from_slice(&scores.iter().map(f).collect::<Vec<_>>())
    };
    assert_close(
        &format!("{case}: pixel score"),
        &col(|s| s.pixel_score),
        e("pixel_score"),
    );
    assert_close(
        &format!("{case}: joint score"),
        &col(|s| s.score),
        e("score"),
    );
    // `score` (one image at a time on the CPU) gives the batch's results.
    let one_by_one = model.score(images);
    let maps: Vec<f32> = one_by_one.iter().flat_map(|s| s.map.clone()).collect();
    let maps = Tensor::from_slice(&maps).view([-1, side, side]);
    assert_close(&format!("{case}: smoothed map via score"), &maps, e("map"));
    let joint = Tensor::from_slice(&one_by_one.iter().map(|s| s.score).collect::<Vec<_>>());
    assert_close(
        &format!("{case}: joint score via score"),
        &joint,
        e("score"),
    );
}

fn learned_case(weights: &str, case: &str) {
    let (exp, _) = expected();
    let clip = clip(weights);
    let (params, _, resolved) = HeadClipParams::load(
        &fixtures().join(format!("params_{case}.safetensors")),
        &clip.config,
    )
    .unwrap();
    let model = HeadClip::new(clip, Some(params), resolved).unwrap();
    check_case(&model, case, &exp);
}

#[test]
fn template_token_ids_match_openai() {
    let (exp, _) = expected();
    let ids = prompts::template_tokens(&ClipTokenizer::new()).unwrap();
    assert_eq!(ids.size(), exp["tokens"].size());
    assert!(
        ids.equal(&exp["tokens"]),
        "token ids differ from OpenAI's tokenizer"
    );
    let first: Vec<i64> = Vec::try_from(ids.get(1).narrow(0, 0, 18)).unwrap();
    assert_eq!(first[..4], [49406, 343, 343, 343]);
    assert_eq!(first[13..17], [13568, 14115, 269, 49407]);
}

#[test]
fn both_archive_formats_load_the_same_weights() {
    let a = load_state_dict(&fixtures().join("clip_openai.safetensors")).unwrap();
    let b = load_state_dict(&fixtures().join("clip_openai.pt")).unwrap();
    assert_eq!(a.format, CheckpointFormat::OpenAiSafetensors);
    assert_eq!(b.format, CheckpointFormat::TorchScript);
    let mut keys: Vec<_> = a.keys().cloned().collect();
    keys.sort();
    for k in &keys {
        let (x, y) = (a.get(k).unwrap(), b.get(k).unwrap());
        assert!(
            x.equal(y),
            "{k} differs between the safetensors and TorchScript fixtures"
        );
    }
    let cfg = headclip::clip::ClipConfig::infer(&a).unwrap();
    assert_eq!(
        (
            cfg.vision.width,
            cfg.vision.heads,
            cfg.vision.layers,
            cfg.vision.patch
        ),
        (128, 2, 6, 16)
    );
    assert_eq!(
        (cfg.text.width, cfg.text.heads, cfg.text.layers),
        (64, 1, 9)
    );
}

#[test]
fn learned_softmax_safetensors() {
    learned_case("clip_openai.safetensors", "learned");
}

#[test]
fn learned_softmax_torchscript() {
    learned_case("clip_openai.pt", "learned");
}

#[test]
fn dynamic_head_weights() {
    learned_case("clip_openai.safetensors", "dynamic");
}

#[test]
fn sigmoid_on_both_paths_with_global_ln_post() {
    learned_case("clip_openai.safetensors", "both");
}

#[test]
fn identity_head_weights() {
    learned_case("clip_openai.pt", "identity");
}

/// The training-free case's configuration, as the fixture generator recorded it.
fn ensemble_config(meta: &HashMap<String, String>) -> HeadClipConfig {
    HeadClipConfig {
        readout: Some(serde_json::from_str(&meta["readout"]).unwrap()),
        dpam_start: Some(meta["dpam_start"].parse().unwrap()),
        image_size: Some(meta["image_size"].parse().unwrap()),
        ..Default::default()
    }
}

#[test]
fn training_free_ensemble() {
    let (exp, meta) = expected();
    for weights in ["clip_openai.safetensors", "clip_openai.pt"] {
        let clip = clip(weights);
        let resolved = ensemble_config(&meta).resolve(&clip.config).unwrap();
        let model = HeadClip::new(clip, None, resolved).unwrap();
        check_case(&model, "ensemble", &exp);
    }
}

#[test]
fn hugging_face_layout_gives_the_same_model() {
    let (exp, _) = expected();
    let hf = load_state_dict(&fixtures().join("clip_hf.safetensors")).unwrap();
    assert_eq!(hf.format, CheckpointFormat::HuggingFaceSafetensors);
    let clip = Clip::from_state_dict(&hf, Device::Cpu).unwrap();
    let (params, _, resolved) =
        HeadClipParams::load(&fixtures().join("params_learned.safetensors"), &clip.config).unwrap();
    let model = HeadClip::new(clip, Some(params), resolved).unwrap();
    check_case(&model, "learned", &exp);
}

/// `--precision bf16`: the towers run in bfloat16 (maps and scores are still computed in fp32).
/// On every parity case the smoothed anomaly maps stay within 0.01 (max abs) of the fp32
/// reference, and the joint scores too.
#[test]
fn bf16_maps_stay_within_0_01_of_fp32() {
    let (exp, meta) = expected();
    let bf16_clip = || {
        let mut state = load_state_dict(&fixtures().join("clip_openai.safetensors")).unwrap();
        state.kind = Kind::BFloat16;
        Clip::from_state_dict(&state, Device::Cpu).unwrap()
    };
    let mut cases: Vec<(String, HeadClip)> = ["learned", "dynamic", "both", "identity"]
        .iter()
        .map(|case| {
            let clip = bf16_clip();
            let (params, _, resolved) = HeadClipParams::load(
                &fixtures().join(format!("params_{case}.safetensors")),
                &clip.config,
            )
            .unwrap();
            (
                case.to_string(),
                HeadClip::new(clip, Some(params), resolved).unwrap(),
            )
        })
        .collect();
    let clip = bf16_clip();
    let resolved = ensemble_config(&meta).resolve(&clip.config).unwrap();
    cases.push((
        "ensemble".into(),
        HeadClip::new(clip, None, resolved).unwrap(),
    ));

    let images = &exp["images"];
    let side = images.size()[3];
    for (case, model) in &cases {
        // Otherwise this would compare fp32 with itself.
        assert_eq!(model.clip.vision.kind(), Kind::BFloat16, "{case}");
        let scores = model.score(images);
        let maps: Vec<f32> = scores.iter().flat_map(|s| s.map.clone()).collect();
        let maps = Tensor::from_slice(&maps).view([-1, side, side]);
        let reference = &exp[&format!("{case}.map")];
        let map_diff = (maps - reference).abs().max().double_value(&[]);
        let joint: Vec<f32> = scores.iter().map(|s| s.score).collect();
        let score_diff = (Tensor::from_slice(&joint) - &exp[&format!("{case}.score")])
            .abs()
            .max()
            .double_value(&[]);
        println!(
            "{case}: bf16 max |map − fp32| = {map_diff:.2e}, max |score − fp32| = {score_diff:.2e}"
        );
        assert!(
            map_diff <= 0.01,
            "{case}: bf16 maps differ from fp32 by {map_diff}"
        );
        assert!(
            score_diff <= 0.01,
            "{case}: bf16 joint scores differ from fp32 by {score_diff}"
        );
    }
}
