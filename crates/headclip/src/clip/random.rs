//! Random-weight CLIP checkpoints with the shapes of the released models, for tests and
//! benchmarks only. They are marked in their metadata so that every tool can say loudly that its
//! scores mean nothing. They are drawn with the engine's own generator ([`SeededNormals`]), so a
//! seed gives the same bits everywhere and the Python reference can draw them too.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use super::checkpoint::{CheckpointFormat, StateDict};
use crate::prng::SeededNormals;

/// Metadata key that marks a random checkpoint.
pub const RANDOM_MARKER: &str = "headclip.random_weights";

/// Shapes of a CLIP to generate.
#[derive(Debug, Clone, Copy)]
pub struct RandomClipShape {
    pub name: &'static str,
    pub embed: i64,
    pub vision_layers: i64,
    pub vision_width: i64,
    pub patch: i64,
    pub resolution: i64,
    pub text_width: i64,
    pub text_layers: i64,
}

pub const RANDOM_SHAPES: [RandomClipShape; 5] = [
    RandomClipShape {
        name: "ViT-L-14-336",
        embed: 768,
        vision_layers: 24,
        vision_width: 1024,
        patch: 14,
        resolution: 336,
        text_width: 768,
        text_layers: 12,
    },
    RandomClipShape {
        name: "ViT-L-14",
        embed: 768,
        vision_layers: 24,
        vision_width: 1024,
        patch: 14,
        resolution: 224,
        text_width: 768,
        text_layers: 12,
    },
    RandomClipShape {
        name: "ViT-B-16",
        embed: 512,
        vision_layers: 12,
        vision_width: 768,
        patch: 16,
        resolution: 224,
        text_width: 512,
        text_layers: 12,
    },
    RandomClipShape {
        name: "ViT-B-32",
        embed: 512,
        vision_layers: 12,
        vision_width: 768,
        patch: 32,
        resolution: 224,
        text_width: 512,
        text_layers: 12,
    },
    RandomClipShape {
        name: "tiny",
        embed: 64,
        vision_layers: 6,
        vision_width: 128,
        patch: 16,
        resolution: 64,
        text_width: 64,
        text_layers: 9,
    },
];

const VOCAB: i64 = 49408;
const CONTEXT: i64 = 77;
/// ln(1/0.07), CLIP's initial logit scale, written out so that no maths library rounds it.
const LOGIT_SCALE: f64 = 2.659_260_036_932_778;

/// How one tensor of a random checkpoint is drawn: `mean + std·z`, z from [`SeededNormals`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Init {
    pub mean: f64,
    pub std: f64,
}

impl Init {
    /// Weights and embeddings: mean 0.
    pub const fn normal(std: f64) -> Self {
        Self { mean: 0.0, std }
    }
}

/// Norm gains near 1 and biases near 0, perturbed so that every parameter reaches the outputs.
const NORM_GAIN: Init = Init {
    mean: 1.0,
    std: 0.05,
};
const BIAS: Init = Init::normal(0.05);

/// One tensor of a random checkpoint; its place in [`random_clip_specs`] is its stream.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub init: Init,
}

fn spec(name: impl Into<String>, shape: &[i64], init: Init) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: shape.to_vec(),
        init,
    }
}

/// 1/√x, exactly rounded (`powf` is not, on every maths library).
fn inverse_sqrt(x: i64) -> f64 {
    1.0 / (x as f64).sqrt()
}

/// A residual block with OpenAI's init scales: attention std width^−½, the two output
/// projections also scaled down by (2·layers)^−½, the MLP's input (2·width)^−½.
fn block_specs(prefix: &str, w: i64, layers: i64) -> Vec<TensorSpec> {
    let attn = Init::normal(inverse_sqrt(w));
    let out = Init::normal(inverse_sqrt(2 * layers * w));
    let fc = Init::normal(inverse_sqrt(2 * w));
    [
        ("ln_1.weight", vec![w], NORM_GAIN),
        ("ln_1.bias", vec![w], BIAS),
        ("attn.in_proj_weight", vec![3 * w, w], attn),
        ("attn.in_proj_bias", vec![3 * w], BIAS),
        ("attn.out_proj.weight", vec![w, w], out),
        ("attn.out_proj.bias", vec![w], BIAS),
        ("ln_2.weight", vec![w], NORM_GAIN),
        ("ln_2.bias", vec![w], BIAS),
        ("mlp.c_fc.weight", vec![4 * w, w], fc),
        ("mlp.c_fc.bias", vec![4 * w], BIAS),
        ("mlp.c_proj.weight", vec![w, 4 * w], out),
        ("mlp.c_proj.bias", vec![w], BIAS),
    ]
    .into_iter()
    .map(|(k, shape, init)| spec(format!("{prefix}.{k}"), &shape, init))
    .collect()
}

fn vision_specs(shape: &RandomClipShape) -> Vec<TensorSpec> {
    let (w, p, g) = (
        shape.vision_width,
        shape.patch,
        shape.resolution / shape.patch,
    );
    let mut out = vec![
        spec("visual.conv1.weight", &[w, 3, p, p], Init::normal(0.02)),
        spec(
            "visual.class_embedding",
            &[w],
            Init::normal(inverse_sqrt(w)),
        ),
        spec(
            "visual.positional_embedding",
            &[g * g + 1, w],
            Init::normal(inverse_sqrt(w)),
        ),
        spec("visual.ln_pre.weight", &[w], NORM_GAIN),
        spec("visual.ln_pre.bias", &[w], BIAS),
    ];
    for i in 0..shape.vision_layers {
        out.extend(block_specs(
            &format!("visual.transformer.resblocks.{i}"),
            w,
            shape.vision_layers,
        ));
    }
    out.extend([
        spec("visual.ln_post.weight", &[w], NORM_GAIN),
        spec("visual.ln_post.bias", &[w], BIAS),
        spec(
            "visual.proj",
            &[w, shape.embed],
            Init::normal(inverse_sqrt(w)),
        ),
    ]);
    out
}

fn text_specs(shape: &RandomClipShape) -> Vec<TensorSpec> {
    let w = shape.text_width;
    let mut out = vec![
        spec("token_embedding.weight", &[VOCAB, w], Init::normal(0.02)),
        spec("positional_embedding", &[CONTEXT, w], Init::normal(0.01)),
    ];
    for i in 0..shape.text_layers {
        out.extend(block_specs(
            &format!("transformer.resblocks.{i}"),
            w,
            shape.text_layers,
        ));
    }
    out.extend([
        spec("ln_final.weight", &[w], NORM_GAIN),
        spec("ln_final.bias", &[w], BIAS),
        spec(
            "text_projection",
            &[w, shape.embed],
            Init::normal(inverse_sqrt(w)),
        ),
    ]);
    out
}

/// Every random tensor of a CLIP in OpenAI's layout, in stream order (vision, then text).
/// `logit_scale` is not drawn: it is always ln(1/0.07).
pub fn random_clip_specs(shape: &RandomClipShape) -> Vec<TensorSpec> {
    let mut specs = vision_specs(shape);
    specs.extend(text_specs(shape));
    specs
}

/// A tensor drawn from stream `stream`: `mean + std·z` in f64, rounded to f32. [shape]
pub fn seeded_tensor(normals: &SeededNormals, stream: u64, shape: &[i64], init: Init) -> Tensor {
    let n = shape.iter().product::<i64>() as usize;
    let values: Vec<f32> = normals
        .stream(stream, n)
        .map(|z| (init.mean + init.std * z) as f32)
        .collect();
    Tensor::from_slice(&values).view(shape)
}

/// A random state dict in OpenAI's layout, fp16 like OpenAI's files (each value rounded from
/// f64 to f32, then to f16), with OpenAI's init scales. The same seed gives the same bits on
/// every CPU, and `reference/gen_full_fixtures.py` draws the same tensors.
pub fn random_clip(shape: &RandomClipShape, seed: u64) -> Vec<(String, Tensor)> {
    let normals = SeededNormals::new(seed);
    let mut out: Vec<(String, Tensor)> = random_clip_specs(shape)
        .into_iter()
        .enumerate()
        .map(|(stream, s)| {
            let t = seeded_tensor(&normals, stream as u64, &s.shape, s.init);
            (s.name, t.to_kind(Kind::Half))
        })
        .collect();
    let logit_scale = Tensor::from(LOGIT_SCALE as f32).to_kind(Kind::Half);
    out.push(("logit_scale".into(), logit_scale));
    out
}

/// [`random_clip`]'s tensors as the loaders give a checkpoint: fp32 (of fp16 values), marked
/// random.
pub fn random_state_dict(tensors: Vec<(String, Tensor)>) -> StateDict {
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| (k, t.to_kind(Kind::Float)))
        .collect();
    let mut state = StateDict::from_tensors(tensors, CheckpointFormat::OpenAiSafetensors);
    state.random = true;
    state
}

/// The digest group of a tensor: its block (`visual.transformer.resblocks.3`), or else its
/// tower (`visual`, `text`).
fn digest_group(name: &str) -> String {
    match name.find("resblocks.") {
        Some(at) => {
            let rest = &name[at + "resblocks.".len()..];
            let index = rest.split('.').next().unwrap_or(rest);
            format!("{}{index}", &name[..at + "resblocks.".len()])
        }
        None if name.starts_with("visual.") => "visual".into(),
        None => "text".into(),
    }
}

/// sha256 (hex) per digest group of the tensors' stored bytes (little-endian), in their order:
/// what the fixtures record to prove that the engine and the reference drew the same weights.
pub fn random_clip_digests(tensors: &[(String, Tensor)]) -> BTreeMap<String, String> {
    let mut hashers: BTreeMap<String, Sha256> = BTreeMap::new();
    for (name, t) in tensors {
        let hasher = hashers.entry(digest_group(name)).or_default();
        hasher.update(tensor_bytes(t));
    }
    hashers
        .into_iter()
        .map(|(group, h)| (group, format!("{:x}", h.finalize())))
        .collect()
}

/// A CPU tensor's bytes, as stored (row-major).
fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous();
    let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut bytes, t.numel());
    bytes
}

/// Serialises a random checkpoint as safetensors bytes, with the random marker.
pub fn random_clip_safetensors(
    shape: &RandomClipShape,
    seed: u64,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = random_clip(shape, seed)
        .iter()
        .map(|(k, t)| {
            let dims = t.size().iter().map(|&d| d as usize).collect();
            (k.clone(), tensor_bytes(t), dims)
        })
        .collect();
    let views = data
        .iter()
        .map(|(k, b, s)| {
            Ok((
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([
        (RANDOM_MARKER.to_string(), "true".to_string()),
        ("headclip.random_shape".to_string(), shape.name.to_string()),
        ("headclip.random_seed".to_string(), seed.to_string()),
    ]);
    safetensors::serialize(views, &Some(metadata))
}
