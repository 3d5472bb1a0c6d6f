//! The HeadCLIP parameters file: the learned tensors in safetensors, with every option in the
//! JSON metadata entry `headclip.config`. A file with only the tensors is valid (defaults apply).
//!
//! Tensors: `prompt.ctx_pos` [12, W], `prompt.ctx_neg` [12, W], `prompt.deep.{i}` [4, W],
//! `lhw.theta` [L − l₀ + 1, H], and `lhw.u` [L − l₀ + 1, H, D] for the dynamic variant.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::config::{ConfigError, HeadClipConfig, LhwForm, ResolvedConfig};
use crate::clip::ClipConfig;

/// Learnable context vectors per prompt (the 12 `X` words of the templates).
pub const PROMPT_CONTEXT: i64 = 12;
pub const DEEP_PROMPT_TOKENS: i64 = 4;
pub const DEFAULT_DEEP_PROMPTS: usize = 8;
pub const CONFIG_KEY: &str = "headclip.config";

#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("cannot read parameters file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("parameters file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write parameters file {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The learned tensors (fp32).
#[derive(Debug)]
pub struct HeadClipParams {
    pub ctx_pos: Tensor,
    pub ctx_neg: Tensor,
    pub deep: Vec<Tensor>,
    pub theta: Tensor,
    pub u: Option<Tensor>,
}

impl HeadClipParams {
    /// The untrained starting point: prompts `N(0, 0.02²)`, θ giving every head weight 1
    /// (so the model equals AnomalyCLIP), `U = 0`.
    pub fn init(clip: &ClipConfig, config: &ResolvedConfig, deep_prompts: usize) -> Self {
        let w = clip.text.width;
        let rows = config.lhw_rows(clip.vision.layers) as i64;
        let heads = clip.vision.heads;
        let normal = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.02;
        let theta = match config.lhw_form {
            LhwForm::Softmax | LhwForm::Sigmoid => {
                Tensor::zeros([rows, heads], (Kind::Float, Device::Cpu))
            }
            LhwForm::Identity => Tensor::ones([rows, heads], (Kind::Float, Device::Cpu)),
        };
        Self {
            ctx_pos: normal(&[PROMPT_CONTEXT, w]),
            ctx_neg: normal(&[PROMPT_CONTEXT, w]),
            deep: (0..deep_prompts)
                .map(|_| normal(&[DEEP_PROMPT_TOKENS, w]))
                .collect(),
            theta,
            u: config.lhw_dynamic.then(|| {
                Tensor::zeros([rows, heads, clip.vision.width], (Kind::Float, Device::Cpu))
            }),
        }
    }

    /// Reads a parameters file and checks its tensors against the backbone.
    pub fn load(
        path: &Path,
        clip: &ClipConfig,
    ) -> Result<(Self, HeadClipConfig, ResolvedConfig), ParamsError> {
        let read_err = |message: String| ParamsError::Read {
            path: path.into(),
            message,
        };
        let invalid = |message: String| ParamsError::Invalid {
            path: path.into(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| read_err(format!("not a safetensors file (truncated?): {e}")))?;
        let config: HeadClipConfig =
            match metadata.metadata().as_ref().and_then(|m| m.get(CONFIG_KEY)) {
                Some(json) => serde_json::from_str(json)
                    .map_err(|e| invalid(format!("metadata `{CONFIG_KEY}`: {e}")))?,
                None => HeadClipConfig::default(),
            };
        let resolved = config
            .resolve(clip)
            .map_err(|e| invalid(format!("metadata `{CONFIG_KEY}`: {e}")))?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| read_err(e.to_string()))?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, view) in st.tensors() {
            let kind = match view.dtype() {
                safetensors::Dtype::F32 => Kind::Float,
                safetensors::Dtype::F16 => Kind::Half,
                safetensors::Dtype::BF16 => Kind::BFloat16,
                other => {
                    return Err(invalid(format!(
                        "tensor `{name}` has dtype {other:?}, expected a float type"
                    )))
                }
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &shape, kind)
                .map_err(|e| invalid(format!("tensor `{name}`: {e}")))?
                .to_kind(Kind::Float);
            let bad = crate::non_finite_count(&t);
            if bad > 0 {
                return Err(invalid(format!(
                    "tensor `{name}` has {bad} non-finite values (NaN or infinity) of {}; \
                     these parameters are broken (did their training diverge?)",
                    t.numel()
                )));
            }
            tensors.insert(name, t);
        }

        let n_deep = (0..)
            .take_while(|i| tensors.contains_key(&format!("prompt.deep.{i}")))
            .count();
        let w = clip.text.width;
        let rows = resolved.lhw_rows(clip.vision.layers) as i64;
        let heads = clip.vision.heads;
        let mut take = |key: &str, shape: &[i64], why: &str| -> Result<Tensor, ParamsError> {
            let t = tensors
                .remove(key)
                .ok_or_else(|| invalid(format!("missing tensor `{key}`")))?;
            if t.size() != shape {
                return Err(invalid(format!(
                    "tensor `{key}` has shape {:?}, but this CLIP ({}) needs {shape:?} ({why}); \
                     were these parameters trained for another backbone or configuration?",
                    t.size(),
                    clip.name()
                )));
            }
            Ok(t)
        };
        let ctx_pos = take("prompt.ctx_pos", &[PROMPT_CONTEXT, w], "12 × text width")?;
        let ctx_neg = take("prompt.ctx_neg", &[PROMPT_CONTEXT, w], "12 × text width")?;
        let theta = take(
            "lhw.theta",
            &[rows, heads],
            "one row per block from dpam_start, one column per head",
        )?;
        let u = if resolved.lhw_dynamic {
            Some(take(
                "lhw.u",
                &[rows, heads, clip.vision.width],
                "rows × heads × vision width",
            )?)
        } else {
            None
        };
        let deep = (0..n_deep)
            .map(|i| {
                take(
                    &format!("prompt.deep.{i}"),
                    &[DEEP_PROMPT_TOKENS, w],
                    "4 × text width",
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        if deep.len() + 1 > clip.text.layers {
            return Err(invalid(format!(
                "{} deep prompts need {} text blocks, this CLIP has {}",
                deep.len(),
                deep.len() + 1,
                clip.text.layers
            )));
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(invalid(format!("unexpected tensor `{extra}`")));
        }
        Ok((
            Self {
                ctx_pos,
                ctx_neg,
                deep,
                theta,
                u,
            },
            config,
            resolved,
        ))
    }

    /// Writes the parameters atomically: a temporary file beside `path`, then a rename.
    pub fn save(
        &self,
        path: &Path,
        config: &HeadClipConfig,
        extra_metadata: &BTreeMap<String, String>,
    ) -> Result<(), ParamsError> {
        let write_err = |message: String| ParamsError::Write {
            path: path.into(),
            message,
        };
        let mut named: Vec<(String, Tensor)> = vec![
            ("prompt.ctx_pos".into(), self.ctx_pos.shallow_clone()),
            ("prompt.ctx_neg".into(), self.ctx_neg.shallow_clone()),
            ("lhw.theta".into(), self.theta.shallow_clone()),
        ];
        named.extend(
            self.deep
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("prompt.deep.{i}"), t.shallow_clone())),
        );
        if let Some(u) = &self.u {
            named.push(("lhw.u".into(), u.shallow_clone()));
        }
        let mut metadata: HashMap<String, String> = extra_metadata.clone().into_iter().collect();
        metadata.insert(
            CONFIG_KEY.into(),
            serde_json::to_string(config).map_err(|e| write_err(e.to_string()))?,
        );
        let bytes = serialize_f32(&named, metadata).map_err(write_err)?;
        crate::write_atomically(path, &bytes).map_err(|e| write_err(e.to_string()))
    }

    pub fn to_device(&self, device: Device) -> Self {
        Self {
            ctx_pos: self.ctx_pos.to_device(device),
            ctx_neg: self.ctx_neg.to_device(device),
            deep: self.deep.iter().map(|t| t.to_device(device)).collect(),
            theta: self.theta.to_device(device),
            u: self.u.as_ref().map(|t| t.to_device(device)),
        }
    }
}

/// Safetensors bytes of tensors as f32 (moved to the CPU, detached), with metadata.
pub(crate) fn serialize_f32(
    named: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = named
        .iter()
        .map(|(k, t)| {
            let t = t
                .detach()
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous();
            let n = t.numel();
            let mut v = vec![0f32; n];
            t.copy_data(&mut v, n);
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
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
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    safetensors::serialize(views, &Some(metadata)).map_err(|e| e.to_string())
}
