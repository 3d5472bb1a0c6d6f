//! The two text features `t_n` (normal) and `t_a` (abnormal): from learned prompts, or from
//! WinCLIP's prompt ensemble in the training-free mode. Neither depends on the image, so a run
//! computes them once.

use tch::{Kind, Tensor};

use super::params::{HeadClipParams, PROMPT_CONTEXT};
use crate::clip::{ClipTokenizer, TextTransformer, TokenizeError};

pub const NORMAL_TEMPLATE: &str = "X X X X X X X X X X X X object.";
pub const ABNORMAL_TEMPLATE: &str = "X X X X X X X X X X X X damaged object.";

pub const NORMAL_STATES: [&str; 7] = [
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
];
pub const ABNORMAL_STATES: [&str; 5] = [
    "damaged {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
];
pub const ENSEMBLE_TEMPLATES: [&str; 35] = [
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "a dark photo of a {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
];

/// Token ids of the two learned-prompt templates: [2, 77].
pub fn template_tokens(tokenizer: &ClipTokenizer) -> Result<Tensor, TokenizeError> {
    let ids = [
        tokenizer.tokenize(NORMAL_TEMPLATE)?,
        tokenizer.tokenize(ABNORMAL_TEMPLATE)?,
    ]
    .concat();
    Ok(Tensor::from_slice(&ids).view([2, -1]))
}

/// `[t_n, t_a]` from learned prompts: the 12 `X` embeddings replaced by `ctx_pos` / `ctx_neg`,
/// deep prompts before the following blocks. Differentiable in the prompt tensors. [2, E]
pub fn learned_text_features(
    text: &TextTransformer,
    tokenizer: &ClipTokenizer,
    params: &HeadClipParams,
) -> Result<Tensor, TokenizeError> {
    let ids = template_tokens(tokenizer)?.to_device(text.device());
    let x = text.embed_tokens(&ids); // [2, 77, W]
    let c = x.size()[1];
    let ctx = Tensor::stack(&[&params.ctx_pos, &params.ctx_neg], 0).to_kind(x.kind()); // [2, 12, W]
    let x = Tensor::cat(
        &[
            x.narrow(1, 0, 1),
            ctx,
            x.narrow(1, 1 + PROMPT_CONTEXT, c - 1 - PROMPT_CONTEXT),
        ],
        1,
    );
    let eot = ids.argmax(-1, false);
    Ok(text.encode_embeddings(&x, &eot, &params.deep))
}

/// Sentences of one side of the ensemble, in the spec's order (state-major).
pub fn ensemble_sentences(states: &[&str], object: &str) -> Vec<String> {
    states
        .iter()
        .flat_map(|s| {
            let state = s.replace("{}", object);
            ENSEMBLE_TEMPLATES
                .iter()
                .map(move |t| t.replace("{}", &state))
        })
        .collect()
}

/// `[t_n, t_a]` of the training-free mode: each sentence encoded by plain CLIP and
/// L2-normalised, averaged per side, the averages L2-normalised. [2, E]
pub fn ensemble_text_features(
    text: &TextTransformer,
    tokenizer: &ClipTokenizer,
    object: &str,
) -> Result<Tensor, TokenizeError> {
    let _guard = tch::no_grad_guard();
    let mut sides = Vec::with_capacity(2);
    for states in [&NORMAL_STATES[..], &ABNORMAL_STATES[..]] {
        let sentences = ensemble_sentences(states, object);
        let ids = sentences
            .iter()
            .map(|s| tokenizer.tokenize(s))
            .collect::<Result<Vec<_>, _>>()?
            .concat();
        let ids = Tensor::from_slice(&ids)
            .view([sentences.len() as i64, -1])
            .to_device(text.device());
        let features: Vec<Tensor> = ids
            .split(64, 0)
            .iter()
            .map(|chunk| text.encode_tokens(chunk))
            .collect();
        let mean = Tensor::cat(&features, 0).mean_dim(0, false, Kind::Float);
        sides.push(&mean / mean.norm().clamp_min(1e-12));
    }
    Ok(Tensor::stack(&sides, 0))
}
