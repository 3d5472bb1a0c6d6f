//! Random-weight CLIP checkpoints with the shapes of the released models, for tests and
//! benchmarks only. They are marked in their metadata so that every tool can say loudly that its
//! scores mean nothing.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

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

/// A random state dict in OpenAI's layout, fp16 like OpenAI's files, with OpenAI's init scales
/// (and norms and biases perturbed so every parameter matters).
pub fn random_clip(shape: &RandomClipShape, seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    let randn = |dims: &[i64], std: f64| Tensor::randn(dims, opts) * std;
    let norm = |dims: &[i64]| Tensor::ones(dims, opts) + Tensor::randn(dims, opts) * 0.05;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let block = |out: &mut Vec<(String, Tensor)>, prefix: String, w: i64, layers: i64| {
        let attn_std = (w as f64).powf(-0.5);
        let proj_std = attn_std * ((2 * layers) as f64).powf(-0.5);
        let fc_std = (2.0 * w as f64).powf(-0.5);
        for (k, t) in [
            ("ln_1.weight", norm(&[w])),
            ("ln_1.bias", randn(&[w], 0.05)),
            ("attn.in_proj_weight", randn(&[3 * w, w], attn_std)),
            ("attn.in_proj_bias", randn(&[3 * w], 0.05)),
            ("attn.out_proj.weight", randn(&[w, w], proj_std)),
            ("attn.out_proj.bias", randn(&[w], 0.05)),
            ("ln_2.weight", norm(&[w])),
            ("ln_2.bias", randn(&[w], 0.05)),
            ("mlp.c_fc.weight", randn(&[4 * w, w], fc_std)),
            ("mlp.c_fc.bias", randn(&[4 * w], 0.05)),
            ("mlp.c_proj.weight", randn(&[w, 4 * w], proj_std)),
            ("mlp.c_proj.bias", randn(&[w], 0.05)),
        ] {
            out.push((format!("{prefix}.{k}"), t));
        }
    };
    let (vw, g) = (shape.vision_width, shape.resolution / shape.patch);
    let scale = (vw as f64).powf(-0.5);
    out.push((
        "visual.conv1.weight".into(),
        randn(&[vw, 3, shape.patch, shape.patch], 0.02),
    ));
    out.push(("visual.class_embedding".into(), randn(&[vw], scale)));
    out.push((
        "visual.positional_embedding".into(),
        randn(&[g * g + 1, vw], scale),
    ));
    out.push(("visual.ln_pre.weight".into(), norm(&[vw])));
    out.push(("visual.ln_pre.bias".into(), randn(&[vw], 0.05)));
    for i in 0..shape.vision_layers {
        block(
            &mut out,
            format!("visual.transformer.resblocks.{i}"),
            vw,
            shape.vision_layers,
        );
    }
    out.push(("visual.ln_post.weight".into(), norm(&[vw])));
    out.push(("visual.ln_post.bias".into(), randn(&[vw], 0.05)));
    out.push(("visual.proj".into(), randn(&[vw, shape.embed], scale)));
    let tw = shape.text_width;
    out.push(("token_embedding.weight".into(), randn(&[VOCAB, tw], 0.02)));
    out.push(("positional_embedding".into(), randn(&[CONTEXT, tw], 0.01)));
    for i in 0..shape.text_layers {
        block(
            &mut out,
            format!("transformer.resblocks.{i}"),
            tw,
            shape.text_layers,
        );
    }
    out.push(("ln_final.weight".into(), norm(&[tw])));
    out.push(("ln_final.bias".into(), randn(&[tw], 0.05)));
    out.push((
        "text_projection".into(),
        randn(&[tw, shape.embed], (tw as f64).powf(-0.5)),
    ));
    out.push((
        "logit_scale".into(),
        Tensor::from_slice(&[(1.0f32 / 0.07).ln()]),
    ));
    out.into_iter()
        .map(|(k, t)| (k, t.to_kind(Kind::Half).contiguous()))
        .collect()
}

/// Serialises a random checkpoint as safetensors bytes, with the random marker.
pub fn random_clip_safetensors(
    shape: &RandomClipShape,
    seed: i64,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let tensors = random_clip(shape, seed);
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            let n = t.numel();
            let mut bytes = vec![0u8; n * 2];
            t.copy_data_u8(&mut bytes, n);
            (
                k.clone(),
                bytes,
                t.size().iter().map(|&d| d as usize).collect(),
            )
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
