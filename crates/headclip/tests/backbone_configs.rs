//! Checkpoints that carry their own config (`reference/gen_config_fixtures.py`): tiny OpenCLIP
//! and Hugging Face folders whose reference outputs come from open_clip and transformers, which
//! read the same folders. Head widths, activations and mean/std must come from the config, and
//! a config that contradicts the tensors or asks for what the spec does not cover is refused.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use headclip::clip::{Activation, Clip, ClipTokenizer, RulesSource};
use headclip::detector::{load_clip, Detector, ModelSpec};
use headclip::model::{HeadClip, HeadClipConfig, HeadClipParams};
use headclip::train::{loss_and_gradients, trainable, Adam, Batch, LossSelection};
use headclip_data::images::{ImageSource, RgbImage};
use tch::{Kind, Tensor};

/// An edit of a config file's JSON.
type Edit = fn(&mut serde_json::Value);

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
}

fn expected(case: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(case).join("expected.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// |engine − reference| ≤ 1e-4·(1 + |reference|), the parity tests' tolerance.
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

/// CLIP loaded as the CLI loads it: the folder as `--weights`.
fn clip_of(case: &str) -> Clip {
    load_clip(&ModelSpec::new(fixture(case))).unwrap()
}

/// The reference's pixels (PIL-resized to S), through the detector's pre-processing: checks
/// that the config's mean and std reach it, and gives the model's input.
fn prepared_images(detector: &Detector, exp: &HashMap<String, Tensor>) -> Tensor {
    let pixels = &exp["pixels"]; // [B, S, S, 3] u8
    let (b, s) = (pixels.size()[0], pixels.size()[1] as u32);
    let images: Vec<Tensor> = (0..b)
        .map(|i| {
            let bytes = Vec::<u8>::try_from(pixels.get(i).flatten(0, -1)).unwrap();
            let image = RgbImage::new(s, s, bytes).unwrap();
            let prepared = detector
                .preprocessor()
                .prepare(ImageSource::Decoded(image), false)
                .unwrap();
            Tensor::from_slice(&prepared.pixels).view([3, s as i64, s as i64])
        })
        .collect();
    let images = Tensor::stack(&images, 0);
    assert_close("pre-processed images", &images, &exp["images"]);
    images
}

/// Maps, scores and text features of the learned (dynamic head weights) case, the ensemble's
/// text features, and one training step's losses, gradients and Adam update.
fn matches_reference(case: &str) {
    let exp = expected(case);
    let clip = clip_of(case);
    let params_path = fixture(case).join("params_dynamic.safetensors");
    let (params, _, resolved) = HeadClipParams::load(&params_path, &clip.config).unwrap();
    let model = HeadClip::new(clip, Some(params), resolved).unwrap();
    let detector = Detector::from_model(model, ModelSpec::new(fixture(case)));
    let model = detector.model();
    let images = prepared_images(&detector, &exp);

    assert_close("text features", &model.text_features, &exp["dynamic.text"]);
    let out = {
        let _g = tch::no_grad_guard();
        model.forward(&images, &model.text_features)
    };
    assert_close(
        "global score",
        &out.global_score,
        &exp["dynamic.global_score"],
    );
    assert_close(
        "per-layer maps",
        &out.layer_maps,
        &exp["dynamic.layer_maps"],
    );
    let scores = model.smooth_and_score(&out);
    let side = images.size()[3];
    let maps: Vec<f32> = scores.iter().flat_map(|s| s.map.clone()).collect();
    let maps = Tensor::from_slice(&maps).view([-1, side, side]);
    assert_close("smoothed map", &maps, &exp["dynamic.map"]);
    let joint = Tensor::from_slice(&scores.iter().map(|s| s.score).collect::<Vec<_>>());
    assert_close("joint score", &joint, &exp["dynamic.score"]);

    ensemble_matches(case, &exp);
    training_step_matches(case, &exp, &images);
}

fn ensemble_matches(case: &str, exp: &HashMap<String, Tensor>) {
    let clip = clip_of(case);
    let config = HeadClipConfig {
        readout: Some(vec![1, 2]),
        dpam_start: Some(2),
        ..Default::default()
    };
    let resolved = config.resolve(&clip.config).unwrap();
    let model = HeadClip::new(clip, None, resolved).unwrap();
    assert_close(
        "ensemble text features",
        &model.text_features,
        &exp["ensemble.text"],
    );
}

fn training_step_matches(case: &str, exp: &HashMap<String, Tensor>, images: &Tensor) {
    let clip = clip_of(case);
    let params_path = fixture(case).join("params_dynamic.safetensors");
    let (params, _, config) = HeadClipParams::load(&params_path, &clip.config).unwrap();
    for (_, t) in trainable(&params) {
        let _ = t.set_requires_grad(true);
    }
    let batch = Batch {
        images: images.shallow_clone(),
        labels: exp["train.labels"].to_kind(Kind::Int64),
        masks: exp["train.masks"].shallow_clone(),
        mask_known: vec![true; images.size()[0] as usize],
    };
    let terms = loss_and_gradients(
        &clip,
        &ClipTokenizer::new(),
        &config,
        &params,
        &batch,
        LossSelection::default(),
        false,
    )
    .unwrap();
    let e = |k: &str| &exp[&format!("train.dynamic.{k}")];
    for (name, value) in [
        ("total", terms.total),
        ("ce", terms.ce),
        ("focal", terms.focal),
        ("dice", terms.dice),
    ] {
        let value = Tensor::from_slice(&[value]);
        assert_close(&format!("loss {name}"), &value, e(&format!("loss.{name}")));
    }
    let named = trainable(&params);
    let grads = exp
        .keys()
        .filter(|k| k.starts_with("train.dynamic.grad."))
        .count();
    assert_eq!(
        named.len(),
        grads,
        "trainable tensors vs the reference's gradients"
    );
    for (name, t) in &named {
        assert_close(
            &format!("gradient of {name}"),
            &t.grad(),
            e(&format!("grad.{name}")),
        );
    }
    let tensors: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
    let mut adam = Adam::new(&tensors, 1e-3, 0.5, 0.999);
    adam.step(&tensors);
    for (name, t) in &named {
        assert_close(
            &format!("{name} after one Adam step"),
            t,
            e(&format!("after.{name}")),
        );
    }
}

#[test]
fn openclip_heads_80_wide_with_gelu_match_open_clip() {
    let clip = clip_of("openclip_gelu_hw80");
    let (v, t) = (&clip.config.vision, &clip.config.text);
    assert_eq!((v.width, v.heads, v.activation), (160, 2, Activation::Gelu));
    assert_eq!((t.width, t.heads, t.activation), (12, 2, Activation::Gelu));
    assert_eq!(clip.config.normalization.mean, [0.485, 0.456, 0.406]);
    matches_reference("openclip_gelu_hw80");
}

#[test]
fn openclip_quick_gelu_matches_open_clip() {
    let clip = clip_of("openclip_quickgelu");
    let (v, t) = (&clip.config.vision, &clip.config.text);
    assert_eq!((v.heads, v.activation), (2, Activation::QuickGelu));
    assert_eq!((t.heads, t.activation), (2, Activation::QuickGelu));
    matches_reference("openclip_quickgelu");
}

#[test]
fn hugging_face_gelu_matches_transformers() {
    let clip = clip_of("hf_gelu");
    let (v, t) = (&clip.config.vision, &clip.config.text);
    assert_eq!((v.width, v.heads, v.activation), (96, 3, Activation::Gelu));
    // The text config names no hidden_act: transformers' default, quick_gelu.
    assert_eq!((t.heads, t.activation), (2, Activation::QuickGelu));
    assert_eq!(clip.config.normalization.std, [0.5; 3]);
    matches_reference("hf_gelu");
}

/// A copy of fixture `case` in a temporary folder with `file` rewritten by `edit`.
fn edited(case: &str, file: &str, edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(case)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let path = dir.path().join(file);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
    dir
}

fn load_error(weights: &Path) -> String {
    match load_clip(&ModelSpec::new(weights)) {
        Ok(_) => panic!("{} loaded, expected a refusal", weights.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_refused(case: &str, file: &str, edit: impl Fn(&mut serde_json::Value), says: &[&str]) {
    let dir = edited(case, file, edit);
    let error = load_error(dir.path());
    for part in says {
        assert!(error.contains(part), "{error:?} should say {part:?}");
    }
}

#[test]
fn configs_contradicting_the_tensors_are_refused() {
    let vision = |key: &'static str, value: serde_json::Value| {
        move |j: &mut serde_json::Value| j["model_cfg"]["vision_cfg"][key] = value.clone()
    };
    assert_refused(
        "openclip_gelu_hw80",
        "open_clip_config.json",
        vision("head_width", 64.into()),
        &[
            "model_cfg.vision_cfg.head_width",
            "160 does not split into 64-wide heads",
        ],
    );
    assert_refused(
        "openclip_gelu_hw80",
        "open_clip_config.json",
        vision("width", 1280.into()),
        &["model_cfg.vision_cfg.width is 1280", "tensors give 160"],
    );
    assert_refused(
        "openclip_gelu_hw80",
        "open_clip_config.json",
        vision("layers", 32.into()),
        &["model_cfg.vision_cfg.layers is 32", "tensors give 2"],
    );
    assert_refused(
        "hf_gelu",
        "config.json",
        |j| j["text_config"]["num_attention_heads"] = 5.into(),
        &[
            "text_config.num_attention_heads",
            "12 does not split into 5 heads",
        ],
    );
    // A missing key takes the format's default, which contradicts these tensors.
    assert_refused(
        "hf_gelu",
        "config.json",
        |j| j["vision_config"].as_object_mut().unwrap().clear(),
        &["vision_config.", "tensors give"],
    );
}

#[test]
fn options_the_spec_does_not_cover_are_refused_by_name() {
    let cases: [(&str, &str, Edit, &str); 6] = [
        (
            "openclip_gelu_hw80",
            "open_clip_config.json",
            |j| j["model_cfg"]["vision_cfg"]["ls_init_value"] = 1e-5.into(),
            "model_cfg.vision_cfg.ls_init_value",
        ),
        (
            "openclip_gelu_hw80",
            "open_clip_config.json",
            |j| j["model_cfg"]["vision_cfg"]["pool_type"] = "avg".into(),
            "model_cfg.vision_cfg.pool_type",
        ),
        (
            "openclip_quickgelu",
            "open_clip_config.json",
            |j| j["model_cfg"]["vision_cfg"]["no_ln_pre"] = true.into(),
            "model_cfg.vision_cfg.no_ln_pre",
        ),
        (
            "openclip_quickgelu",
            "open_clip_config.json",
            |j| j["model_cfg"]["vision_cfg"]["attentional_pool"] = true.into(),
            "model_cfg.vision_cfg.attentional_pool",
        ),
        (
            "hf_gelu",
            "config.json",
            |j| j["vision_config"]["hidden_act"] = "gelu_new".into(),
            "vision_config.hidden_act",
        ),
        (
            "hf_gelu",
            "config.json",
            |j| j["text_config"]["layer_norm_eps"] = 1e-6.into(),
            "text_config.layer_norm_eps",
        ),
    ];
    for (case, file, edit, key) in cases {
        let dir = edited(case, file, edit);
        let error = load_error(dir.path());
        assert!(error.contains(key), "{error:?} should name {key}");
        assert!(error.contains(file), "{error:?} should name {file}");
    }
}

#[test]
fn out_of_range_and_malformed_values_are_refused_by_name() {
    let cases: [(Edit, &str); 4] = [
        (
            |j| j["model_cfg"]["vision_cfg"]["head_width"] = 0.into(),
            "model_cfg.vision_cfg.head_width: 0 is out of range",
        ),
        (
            |j| j["model_cfg"]["quick_gelu"] = "yes".into(),
            "model_cfg.quick_gelu: \"yes\" is not true or false",
        ),
        (
            |j| j["preprocess_cfg"]["std"] = serde_json::json!([0.2, 0.0, 0.2]),
            "preprocess_cfg.std: 0 is out of range",
        ),
        (
            |j| j["preprocess_cfg"]["mean"] = serde_json::json!([0.5, 0.5]),
            "preprocess_cfg.mean: must be three numbers",
        ),
    ];
    for (edit, says) in cases {
        let dir = edited("openclip_gelu_hw80", "open_clip_config.json", edit);
        let error = load_error(dir.path());
        assert!(error.contains(says), "{error:?} should say {says:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("open_clip_model.safetensors");
    std::fs::copy(
        fixture("openclip_quickgelu").join("open_clip_model.safetensors"),
        &weights,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("open_clip_config.json"),
        "{\"model_cfg\": [1,",
    )
    .unwrap();
    let error = load_error(&weights);
    assert!(
        error.contains("open_clip_config.json: not valid JSON"),
        "{error}"
    );
}

/// Log lines written while `f` runs.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let value = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    (value, text)
}

#[test]
fn config_json_beside_a_pt_is_not_read_and_openai_rules_are_said_to_be_assumed() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let weights = dir.path().join("clip_openai.pt");
    std::fs::copy(tiny.join("clip_openai.pt"), &weights).unwrap();
    // Configs that would refuse these weights, beside them under the paired names.
    std::fs::copy(
        fixture("hf_gelu").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixture("openclip_gelu_hw80").join("open_clip_config.json"),
        dir.path().join("open_clip_config.json"),
    )
    .unwrap();
    let (clip, log) = logged(|| load_clip(&ModelSpec::new(&weights)).unwrap());
    assert_eq!(clip.config.rules, RulesSource::OpenAiAssumed);
    assert_eq!(clip.config.vision.activation, Activation::QuickGelu);
    assert_eq!(clip.config.vision.heads, 2);
    assert!(log.contains("OpenAI's rules are assumed"), "log: {log:?}");

    // Given explicitly, the same config is read (and refuses these tensors).
    let spec = ModelSpec {
        clip_config: Some(dir.path().join("config.json")),
        ..ModelSpec::new(&weights)
    };
    let error = load_clip(&spec).err().expect("refused").to_string();
    assert!(error.contains("config.json"), "{error}");
}

#[test]
fn an_explicit_config_overrides_the_paired_one() {
    // The quick_gelu folder's weights, read with the config edited to exact GELU.
    let dir = edited("openclip_quickgelu", "open_clip_config.json", |j| {
        j["model_cfg"]["quick_gelu"] = false.into()
    });
    let weights = fixture("openclip_quickgelu").join("open_clip_model.safetensors");
    let paired = load_clip(&ModelSpec::new(&weights)).unwrap();
    assert_eq!(paired.config.vision.activation, Activation::QuickGelu);
    let spec = ModelSpec {
        clip_config: Some(dir.path().join("open_clip_config.json")),
        ..ModelSpec::new(&weights)
    };
    let (explicit, log) = logged(|| load_clip(&spec).unwrap());
    assert_eq!(explicit.config.vision.activation, Activation::Gelu);
    assert_eq!(explicit.config.text.activation, Activation::Gelu);
    assert!(!log.contains("assumed"), "log: {log:?}");
    match &explicit.config.rules {
        RulesSource::Config { files } => assert_eq!(files[0].0, spec.clip_config.unwrap()),
        other => panic!("rules from {other:?}"),
    }
}
