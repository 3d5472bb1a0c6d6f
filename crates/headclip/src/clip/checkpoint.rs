//! Reading the CLIP checkpoint formats users hold into one state dict in OpenAI's key layout:
//! OpenAI's TorchScript archives (`ViT-B-16.pt`, …), OpenAI/OpenCLIP state dicts as safetensors
//! (same key names), and Hugging Face `transformers` CLIP safetensors (other key names).
//! The format is told by the file's bytes, not its name.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("not a CLIP checkpoint: missing tensor `{0}`")]
    MissingKey(String),
    #[error("tensor `{key}` has shape {actual:?}, expected {expected}")]
    Shape {
        key: String,
        expected: String,
        actual: Vec<i64>,
    },
    #[error("not a CLIP checkpoint: {0}")]
    NotClip(String),
    /// The checkpoint's config contradicts its tensors (`config` names the config).
    #[error("{config}: {message}")]
    Config { config: String, message: String },
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        source: Box<CheckpointError>,
    },
}

impl CheckpointError {
    pub(crate) fn shape(key: &str, expected: &str, actual: &[i64]) -> Self {
        Self::Shape {
            key: key.into(),
            expected: expected.into(),
            actual: actual.to_vec(),
        }
    }
}

/// How a checkpoint file was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum CheckpointFormat {
    TorchScript,
    OpenAiSafetensors,
    HuggingFaceSafetensors,
}

/// CLIP weights by OpenAI key name, as fp32 tensors on the CPU.
pub struct StateDict {
    tensors: HashMap<String, Tensor>,
    pub format: CheckpointFormat,
    /// Marked as random weights (tests and benchmarks only) by `headclip weights random`.
    pub random: bool,
    /// The precision the model is built in (fp32 unless a reduced precision is asked for).
    pub kind: Kind,
}

impl StateDict {
    pub fn from_tensors(tensors: HashMap<String, Tensor>, format: CheckpointFormat) -> Self {
        Self {
            tensors,
            format,
            random: false,
            kind: Kind::Float,
        }
    }

    pub fn get(&self, key: &str) -> Result<&Tensor, CheckpointError> {
        self.tensors
            .get(key)
            .ok_or_else(|| CheckpointError::MissingKey(key.into()))
    }

    pub fn shape(&self, key: &str) -> Result<Vec<i64>, CheckpointError> {
        Ok(self.get(key)?.size())
    }

    /// The tensor under `key`, checked to have exactly `expected` as its shape.
    pub fn get_shaped(&self, key: &str, expected: &[i64]) -> Result<&Tensor, CheckpointError> {
        let t = self.get(key)?;
        if t.size() != expected {
            return Err(CheckpointError::shape(
                key,
                &format!("{expected:?}"),
                &t.size(),
            ));
        }
        Ok(t)
    }

    /// Number of consecutive blocks `prefix0.`, `prefix1.`, … present.
    pub fn count_blocks(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.tensors
                    .keys()
                    .any(|k| k.starts_with(&format!("{prefix}{i}.")))
            })
            .count()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// Reads a CLIP checkpoint in any supported format. Errors name the file and the problem.
pub fn load_state_dict(path: &Path) -> Result<StateDict, CheckpointError> {
    let in_file = |source: CheckpointError| CheckpointError::InFile {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format_err = |message: String| CheckpointError::Format {
        path: path.to_path_buf(),
        message,
    };

    let mut head = [0u8; 9];
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Err(format_err("the file is empty".into()));
    }
    let n = read_up_to(&mut file, &mut head).map_err(io)?;
    let head = &head[..n];
    let state = if head.starts_with(ZIP_MAGIC) {
        load_torchscript(path).map_err(format_err)?
    } else if n == 9 && head[8] == b'{' {
        load_safetensors(path).map_err(|e| match e {
            LoadError::Format(m) => format_err(m),
            LoadError::Clip(c) => in_file(c),
        })?
    } else if head.first() == Some(&0x80) {
        return Err(format_err(
            "this is a Python pickle (torch.save); save the state dict as safetensors instead \
             (safetensors.torch.save_file(state_dict, 'clip.safetensors'))"
                .into(),
        ));
    } else {
        return Err(format_err(
            "neither a TorchScript archive (OpenAI's .pt) nor a safetensors file".into(),
        ));
    };
    super::config::check_shapes(&state).map_err(in_file)?;
    Ok(state)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn load_torchscript(path: &Path) -> Result<StateDict, String> {
    let module = tch::CModule::load(path).map_err(|e| {
        format!(
            "cannot read it as a TorchScript archive (truncated or damaged download?): {}",
            first_line(&e.to_string())
        )
    })?;
    let params = module
        .named_parameters()
        .map_err(|e| first_line(&e.to_string()))?;
    let mut tensors = HashMap::new();
    for (name, t) in params {
        let t = t.to_kind(Kind::Float).contiguous();
        check_finite(&name, &t)?;
        tensors.insert(name, t);
    }
    Ok(StateDict::from_tensors(
        tensors,
        CheckpointFormat::TorchScript,
    ))
}

/// Refuses a weight tensor with NaN or infinite values: it would make every score NaN.
fn check_finite(name: &str, t: &Tensor) -> Result<(), String> {
    let bad = crate::non_finite_count(t);
    if bad > 0 {
        return Err(non_finite_message(name, bad as usize, t.numel()));
    }
    Ok(())
}

fn non_finite_message(name: &str, bad: usize, numel: usize) -> String {
    format!(
        "tensor `{name}` has {bad} non-finite values (NaN or infinity) of {numel}: \
         the weights are damaged"
    )
}

/// NaN and infinite values among little-endian floats as stored, counted on the raw bits (all
/// exponent bits set) in one pass over the mapped file: libtorch's `isfinite` would allocate two
/// masks of the weights' size and wake its thread pool for every tensor, most of a second for a
/// ViT-L/14 on two cores.
fn non_finite_in_bytes(data: &[u8], dtype: safetensors::Dtype) -> usize {
    // All exponent bits set, read as the stored width (chunks_exact makes the conversion total).
    macro_rules! count {
        ($int:ty, $mask:expr) => {
            data.chunks_exact(std::mem::size_of::<$int>())
                .filter(|c| {
                    (*c).try_into()
                        .is_ok_and(|b| <$int>::from_le_bytes(b) & $mask == $mask)
                })
                .count()
        };
    }
    match dtype {
        safetensors::Dtype::F32 => count!(u32, 0x7f80_0000),
        safetensors::Dtype::F16 => count!(u16, 0x7c00),
        safetensors::Dtype::BF16 => count!(u16, 0x7f80),
        safetensors::Dtype::F64 => count!(u64, 0x7ff0_0000_0000_0000),
        _ => 0,
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

enum LoadError {
    Format(String),
    Clip(CheckpointError),
}

fn load_safetensors(path: &Path) -> Result<StateDict, LoadError> {
    let file = File::open(path).map_err(|e| LoadError::Format(e.to_string()))?;
    // SAFETY: the map is read-only and dropped before this function returns; a file changed
    // underneath us can at worst give wrong numbers, which the shape checks then catch.
    let bytes =
        unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LoadError::Format(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        LoadError::Format(format!("not a valid safetensors file (truncated?): {e}"))
    })?;
    let random = safetensors::SafeTensors::read_metadata(&bytes)
        .ok()
        .and_then(|(_, m)| {
            m.metadata()
                .as_ref()
                .map(|m| m.get(super::RANDOM_MARKER).is_some_and(|v| v == "true"))
        })
        .unwrap_or(false);
    let mapped = map_whole_file(path, bytes.len());
    let finite_known = crate::weights::remembered_fact(path, FINITE_FACT, None).is_some();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            safetensors::Dtype::F32 => Kind::Float,
            safetensors::Dtype::F16 => Kind::Half,
            safetensors::Dtype::BF16 => Kind::BFloat16,
            safetensors::Dtype::F64 => Kind::Double,
            safetensors::Dtype::I64 => Kind::Int64,
            other => {
                return Err(LoadError::Format(format!(
                    "tensor `{name}` has unsupported dtype {other:?}"
                )))
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let offset = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
        let t = match mapped
            .as_ref()
            .and_then(|file| view_in_file(file, offset, view.data().len(), kind, &shape))
        {
            Some(t) => t,
            None => Tensor::f_from_data_size(view.data(), &shape, kind)
                .map_err(|e| LoadError::Format(format!("tensor `{name}`: {e}")))?,
        };
        let bad = if finite_known {
            0
        } else {
            non_finite_in_bytes(view.data(), view.dtype())
        };
        if bad > 0 {
            return Err(LoadError::Format(non_finite_message(&name, bad, t.numel())));
        }
        let t = if kind == Kind::Int64 {
            t
        } else {
            t.to_kind(Kind::Float)
        };
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        tensors.insert(name, t);
    }
    let mut state = if tensors.keys().any(|k| k.starts_with("vision_model.")) {
        from_hugging_face(tensors).map_err(LoadError::Clip)?
    } else {
        StateDict::from_tensors(tensors, CheckpointFormat::OpenAiSafetensors)
    };
    state.random = random;
    if !finite_known {
        crate::weights::remember_fact(path, FINITE_FACT, None, "every value finite");
    }
    Ok(state)
}

/// The cache entry saying a safetensors file's values were all found finite: a version of a
/// file is scanned once (a ViT-L/14 in fp32 is 1.7 GB to read), see
/// [`crate::weights::remembered_fact`].
pub const FINITE_FACT: &str = "finite-weights";

/// The whole file as one byte tensor over a private, copy-on-write memory map that libtorch
/// owns: tensors viewing it keep the map alive however long they live, and the weights are read
/// from the page cache instead of being copied (a ViT-L/14 file is 1.7 GB in fp32). `None` (the
/// caller copies instead) when libtorch cannot map it or the path is not UTF-8.
fn map_whole_file(path: &Path, len: usize) -> Option<Tensor> {
    let name = path.to_str()?;
    Tensor::f_from_file(name, false, len as i64, (Kind::Uint8, tch::Device::Cpu)).ok()
}

/// The tensor stored at `offset` (bytes) in `file` as a view, without a copy; `None` when its
/// bytes are not aligned for its element type.
fn view_in_file(
    file: &Tensor,
    offset: usize,
    len: usize,
    kind: Kind,
    shape: &[i64],
) -> Option<Tensor> {
    let element = kind.elt_size_in_bytes();
    if !offset.is_multiple_of(element) || !len.is_multiple_of(element) {
        return None;
    }
    file.f_narrow(0, offset as i64, len as i64)
        .and_then(|bytes| bytes.f_view_dtype(kind))
        .and_then(|t| t.f_view(shape))
        .ok()
}

/// Renames Hugging Face `transformers` CLIP keys to OpenAI's, merging the separate q/k/v
/// projections into MultiheadAttention's `in_proj` and transposing the two projections.
fn from_hugging_face(mut hf: HashMap<String, Tensor>) -> Result<StateDict, CheckpointError> {
    let mut out = HashMap::new();
    let mut take = |key: &str| {
        hf.remove(key)
            .ok_or_else(|| CheckpointError::MissingKey(key.to_string()))
    };
    let renames = [
        (
            "vision_model.embeddings.class_embedding",
            "visual.class_embedding",
        ),
        (
            "vision_model.embeddings.patch_embedding.weight",
            "visual.conv1.weight",
        ),
        (
            "vision_model.embeddings.position_embedding.weight",
            "visual.positional_embedding",
        ),
        ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"),
        ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"),
        (
            "vision_model.post_layernorm.weight",
            "visual.ln_post.weight",
        ),
        ("vision_model.post_layernorm.bias", "visual.ln_post.bias"),
        (
            "text_model.embeddings.token_embedding.weight",
            "token_embedding.weight",
        ),
        (
            "text_model.embeddings.position_embedding.weight",
            "positional_embedding",
        ),
        ("text_model.final_layer_norm.weight", "ln_final.weight"),
        ("text_model.final_layer_norm.bias", "ln_final.bias"),
    ];
    for (src, dst) in renames {
        out.insert(dst.to_string(), take(src)?);
    }
    out.insert(
        "visual.proj".into(),
        take("visual_projection.weight")?.tr().contiguous(),
    );
    out.insert(
        "text_projection".into(),
        take("text_projection.weight")?.tr().contiguous(),
    );
    for (hf_tower, oa_prefix) in [
        ("vision_model", "visual.transformer"),
        ("text_model", "transformer"),
    ] {
        for i in 0.. {
            let src = format!("{hf_tower}.encoder.layers.{i}");
            let dst = format!("{oa_prefix}.resblocks.{i}");
            let Ok(ln1) = take(&format!("{src}.layer_norm1.weight")) else {
                break;
            };
            out.insert(format!("{dst}.ln_1.weight"), ln1);
            for (s, d) in [
                ("layer_norm1.bias", "ln_1.bias"),
                ("layer_norm2.weight", "ln_2.weight"),
                ("layer_norm2.bias", "ln_2.bias"),
                ("mlp.fc1.weight", "mlp.c_fc.weight"),
                ("mlp.fc1.bias", "mlp.c_fc.bias"),
                ("mlp.fc2.weight", "mlp.c_proj.weight"),
                ("mlp.fc2.bias", "mlp.c_proj.bias"),
                ("self_attn.out_proj.weight", "attn.out_proj.weight"),
                ("self_attn.out_proj.bias", "attn.out_proj.bias"),
            ] {
                out.insert(format!("{dst}.{d}"), take(&format!("{src}.{s}"))?);
            }
            for part in ["weight", "bias"] {
                let qkv = ["q", "k", "v"]
                    .iter()
                    .map(|p| take(&format!("{src}.self_attn.{p}_proj.{part}")))
                    .collect::<Result<Vec<_>, _>>()?;
                out.insert(format!("{dst}.attn.in_proj_{part}"), Tensor::cat(&qkv, 0));
            }
        }
    }
    Ok(StateDict::from_tensors(
        out,
        CheckpointFormat::HuggingFaceSafetensors,
    ))
}
