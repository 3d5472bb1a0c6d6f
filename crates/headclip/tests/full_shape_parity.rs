//! Parity with the PyTorch reference at the released models' full shapes, with no weights stored:
//! ViT-B/16 at S = 512, and ViT-L/14@336 at S = 518 (positional embedding resized 24 → 37,
//! patch 14, 24 layers, 1,370 tokens). The engine draws random weights and learned-style
//! parameters from a seed with its own generator (`headclip::prng`);
//! `reference/gen_full_fixtures.py` draws the same bits (the fixtures record a sha256 per group
//! of weight tensors) and keeps its outputs for one image. Random-weight scores hardly differ
//! between images, so features and maps are compared, not only scores: fp32 within
//! 1e-4·(1 + |reference|), bf16 maps and scores within 0.01 of the fp32 reference.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use headclip::clip::{
    random_clip, random_clip_digests, random_state_dict, seeded_tensor, Clip, ClipConfig, Init,
    StateDict, RANDOM_SHAPES,
};
use headclip::model::{HeadClip, HeadClipConfig, HeadClipParams, ResolvedConfig};
use headclip::prng::SeededNormals;
use headclip_data::images::{CLIP_MEAN, CLIP_STD};
use tch::{Device, Kind, Tensor};

/// Both cases use every core and a few GB: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Fixture {
    name: String,
    tensors: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

impl Fixture {
    fn read(name: &str) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/full/{name}.safetensors"));
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (reference/regen.sh full)", path.display()));
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        Self {
            name: name.into(),
            tensors: Tensor::read_safetensors(&path)
                .unwrap()
                .into_iter()
                .collect(),
            meta: meta.metadata().clone().unwrap_or_default(),
        }
    }

    fn get(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("{}: no tensor `{key}`", self.name))
    }

    fn meta(&self, key: &str) -> &str {
        self.meta
            .get(key)
            .unwrap_or_else(|| panic!("{}: no metadata `{key}`", self.name))
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> T {
        self.meta(key)
            .parse()
            .unwrap_or_else(|_| panic!("{}: metadata `{key}` is not a number", self.name))
    }

    fn indices(&self, key: &str) -> Vec<i64> {
        Vec::try_from(self.get(key)).unwrap()
    }
}

fn assert_close(what: &str, engine: &Tensor, reference: &Tensor) {
    let engine = engine.to_kind(Kind::Double).to_device(Device::Cpu);
    let reference = reference.to_kind(Kind::Double);
    assert_eq!(engine.size(), reference.size(), "{what}: shape");
    let diff = (&engine - &reference).abs();
    let excess = (&diff - (reference.abs() + 1.0) * 1e-4)
        .max()
        .double_value(&[]);
    let max_diff = diff.max().double_value(&[]);
    println!("{what}: max |engine − reference| = {max_diff:.1e}");
    assert!(
        excess <= 0.0,
        "{what}: max |engine − reference| = {max_diff:e} exceeds 1e-4·(1+|ref|)"
    );
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// The learned-style parameters `random_params` of the generator draws: prompts N(0, 0.2²),
/// θ N(0, 0.8²), U N(0, 0.5²), from streams 0, 1, 2–9, 10 and 11.
fn learned_params(clip: &ClipConfig, config: &ResolvedConfig, seed: u64) -> HeadClipParams {
    let normals = SeededNormals::new(seed);
    let draw =
        |stream, shape: &[i64], std| seeded_tensor(&normals, stream, shape, Init::normal(std));
    let (w, heads) = (clip.text.width, clip.vision.heads);
    let rows = config.lhw_rows(clip.vision.layers) as i64;
    HeadClipParams {
        ctx_pos: draw(0, &[12, w], 0.2),
        ctx_neg: draw(1, &[12, w], 0.2),
        deep: (0..8).map(|i| draw(2 + i, &[4, w], 0.2)).collect(),
        theta: draw(10, &[rows, heads], 0.8),
        u: config
            .lhw_dynamic
            .then(|| draw(11, &[rows, heads, clip.vision.width], 0.5)),
    }
}

/// The fixture's small uint8 image with each pixel repeated into a block, normalised as CLIP's
/// pre-processing does: [1, 3, S, S].
fn input_image(fx: &Fixture) -> Tensor {
    let repeat: i64 = fx.number("repeat");
    let x = fx
        .get("image")
        .to_kind(Kind::Float)
        .repeat_interleave_self_int(repeat, 1, None)
        .repeat_interleave_self_int(repeat, 2, None)
        / 255.0;
    let mean = Tensor::from_slice(&CLIP_MEAN).view([3, 1, 1]);
    let std = Tensor::from_slice(&CLIP_STD).view([3, 1, 1]);
    ((x - mean) / std).unsqueeze(0)
}

fn model(state: &StateDict, fx: &Fixture) -> HeadClip {
    let clip = Clip::from_state_dict(state, Device::Cpu).unwrap();
    let config: HeadClipConfig = serde_json::from_str(fx.meta("headclip.config")).unwrap();
    let resolved = config.resolve(&clip.config).unwrap();
    let params = learned_params(&clip.config, &resolved, fx.number("params_seed"));
    HeadClip::new(clip, Some(params), resolved).unwrap()
}

/// What is compared, at the fixture's sampled tokens and pixels.
struct Outputs {
    text: Tensor,
    global_feature: Tensor,
    /// Per read-out layer: [tokens, E]
    features: Vec<Tensor>,
    /// [R, n, n]
    layer_maps: Tensor,
    /// [n, n]
    map: Tensor,
    scores: [f32; 3],
}

const SCORES: [&str; 3] = ["global_score", "pixel_score", "score"];

fn run(model: &HeadClip, image: &Tensor, fx: &Fixture) -> Outputs {
    let _guard = tch::no_grad_guard();
    let (tokens, samples) = (
        Tensor::from_slice(&fx.indices("tokens")),
        Tensor::from_slice(&fx.indices("samples")),
    );
    let sample = |t: &Tensor, dim: i64| {
        t.index_select(dim, &samples)
            .index_select(dim + 1, &samples)
    };
    let side = image.size()[3];
    let features = model.image_features(image);
    let out = model.maps_from_features(&features, &model.text_features, side);
    let score = &model.smooth_and_score(&out)[0];
    Outputs {
        text: model.text_features.shallow_clone(),
        global_feature: features.global.shallow_clone(),
        features: features
            .patch_features
            .iter()
            .map(|f| f.select(0, 0).index_select(0, &tokens))
            .collect(),
        layer_maps: sample(&out.layer_maps.select(0, 0), 1),
        map: sample(&Tensor::from_slice(&score.map).view([side, side]), 0),
        scores: [score.global_score, score.pixel_score, score.score],
    }
}

fn check_fp32(out: &Outputs, fx: &Fixture, readout: &[usize]) {
    assert_close("text features", &out.text, fx.get("text"));
    assert_close(
        "global feature",
        &out.global_feature,
        fx.get("global_feature"),
    );
    assert_eq!(out.features.len(), readout.len());
    for (f, layer) in out.features.iter().zip(readout) {
        assert_close(
            &format!("layer {layer} token features"),
            f,
            fx.get(&format!("features.{layer}")),
        );
    }
    assert_close("per-layer maps", &out.layer_maps, fx.get("layer_maps"));
    assert_close("smoothed map", &out.map, fx.get("map"));
    for (value, key) in out.scores.iter().zip(SCORES) {
        assert_close(key, &Tensor::from_slice(&[*value]), fx.get(key));
    }
}

fn check_bf16(out: &Outputs, fx: &Fixture) {
    let layer_maps = max_abs_diff(&out.layer_maps, fx.get("layer_maps"));
    let map = max_abs_diff(&out.map, fx.get("map"));
    let score = max_abs_diff(&Tensor::from_slice(&[out.scores[2]]), fx.get("score"));
    println!(
        "bf16 against fp32 reference: per-layer maps {layer_maps:.1e}, smoothed map {map:.1e}, \
         joint score {score:.1e}"
    );
    for (what, diff) in [
        ("per-layer maps", layer_maps),
        ("smoothed map", map),
        ("joint score", score),
    ] {
        assert!(
            diff <= 0.01,
            "bf16 {what} differ from the fp32 reference by {diff}"
        );
    }
}

/// The engine's weights are the reference's, bit for bit: same groups, same digests.
fn check_digests(tensors: &[(String, Tensor)], fx: &Fixture) {
    let drawn = random_clip_digests(tensors);
    let stored: BTreeMap<String, String> =
        serde_json::from_str(fx.meta("headclip.digests")).unwrap();
    assert_eq!(drawn.len(), stored.len(), "digest groups");
    for (group, digest) in &stored {
        assert_eq!(
            drawn.get(group),
            Some(digest),
            "{}: weights of `{group}` differ from the reference's",
            fx.name
        );
    }
}

fn full_shape_case(name: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fx = Fixture::read(name);
    let shape = RANDOM_SHAPES
        .iter()
        .find(|s| s.name == fx.meta("shape"))
        .expect("a known shape");
    let clock = Instant::now();
    let tensors = random_clip(shape, fx.number("seed"));
    check_digests(&tensors, &fx);
    let mut state = random_state_dict(tensors);
    println!(
        "{name}: weights drawn and checked in {:.1?}",
        clock.elapsed()
    );
    let image = input_image(&fx);
    for kind in [Kind::Float, Kind::BFloat16] {
        let clock = Instant::now();
        state.kind = kind;
        let model = model(&state, &fx);
        assert_eq!(model.clip.vision.kind(), kind);
        let out = run(&model, &image, &fx);
        match kind {
            Kind::Float => check_fp32(&out, &fx, &model.config.readout),
            _ => check_bf16(&out, &fx),
        }
        println!("{name}: {kind:?} in {:.1?}", clock.elapsed());
    }
}

#[test]
fn vit_b_16_at_512() {
    full_shape_case("vit-b-16");
}

#[test]
fn vit_l_14_336_at_518() {
    full_shape_case("vit-l-14-336");
}
