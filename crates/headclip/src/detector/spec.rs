//! The model description: everything that decides what a score means, in one place.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tch::{Device, Kind};

/// Precision of the CLIP towers; maps and scores are always fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    /// CPUs with AMX or AVX512-BF16, and CUDA.
    Bf16,
    /// CUDA only.
    Fp16,
}

impl Precision {
    /// The tensor kind the towers run in.
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
        }
    }

    /// `fp32`, `bf16` or `fp16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" => Ok(Precision::Fp16),
            other => Err(format!("unknown precision {other:?}: fp32, bf16 or fp16")),
        }
    }
}

/// Where a model runs, as users write it: `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let device = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => return Err(format!("unknown device {other:?}: use cpu, cuda or cuda:N")),
        },
    };
    if let Device::Cuda(_) = device {
        crate::runtime::load_cuda_backend();
        if !tch::Cuda::is_available() {
            return Err(format!(
                "device {s}: no CUDA device is usable (libtorch's CUDA libraries or a GPU are missing)"
            ));
        }
    }
    Ok(device)
}

/// Few-shot references: normal images of the part, or a bank saved from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum References {
    /// A folder of normal images (searched recursively; files that are not images are named
    /// and left out).
    Folder(PathBuf),
    /// Normal image files (`headclip test --shots` draws them).
    Images(Vec<PathBuf>),
    /// A bank saved by `headclip bank`, refused when built for another model.
    Bank(PathBuf),
}

impl References {
    /// A folder of images, or a saved bank file.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        if path.is_file() {
            References::Bank(path)
        } else {
            References::Folder(path)
        }
    }
}

/// The default cap on the bank: patch features per read-out layer, 16 references of 37×37
/// patches (ViT-L/14 at S = 518: 64 MiB per read-out layer of width 768, 257 MiB for four).
pub const DEFAULT_BANK_CAP: usize = 16 * 37 * 37;

/// The default weight of the few-shot map in the fused one.
pub const DEFAULT_BETA: f64 = 0.5;

/// What a [`super::Detector`] is built from. Later parts of the description (a calibration)
/// become fields here.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The CLIP checkpoint (any format [`crate::clip::load_state_dict`] reads), or a folder
    /// holding OpenCLIP's or Hugging Face's weights beside their config.
    pub weights: PathBuf,
    /// The backbone's config (OpenCLIP's or Hugging Face's), overriding the one paired with the
    /// weights by name; with neither, OpenAI's rules are assumed.
    pub clip_config: Option<PathBuf>,
    /// HeadCLIP's learned parameters; `None` runs the training-free prompt ensemble.
    pub params: Option<PathBuf>,
    /// The input side S; `None` takes the parameters file's, or the backbone's default.
    pub image_size: Option<i64>,
    pub device: Device,
    pub precision: Precision,
    /// Few-shot references; `None` is the zero-shot model.
    pub references: Option<References>,
    /// The most patch features per read-out layer the bank may hold (references × G²).
    pub bank_cap: usize,
    /// β of the fused map `(1 − β)·M + β·M_fs`, in [0, 1]; used with references only.
    pub beta: f64,
    /// The object's class name in the training-free prompt ensemble (`None`: "object").
    /// Learned prompts ignore it.
    pub class_name: Option<String>,
}

impl ModelSpec {
    /// The weights on the CPU in fp32, training-free, at the default side.
    pub fn new(weights: impl Into<PathBuf>) -> Self {
        Self {
            weights: weights.into(),
            clip_config: None,
            params: None,
            image_size: None,
            device: Device::Cpu,
            precision: Precision::Fp32,
            references: None,
            bank_cap: DEFAULT_BANK_CAP,
            beta: DEFAULT_BETA,
            class_name: None,
        }
    }

    /// Refuses combinations that cannot run, before anything is loaded.
    pub fn check(&self) -> Result<(), String> {
        if self.precision == Precision::Fp16 && self.device == Device::Cpu {
            return Err("precision fp16 needs a CUDA device; on the CPU use bf16".into());
        }
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(format!("beta {} is outside [0, 1]", self.beta));
        }
        if self.bank_cap == 0 {
            return Err("the bank cap must be at least 1 patch feature".into());
        }
        if matches!(&self.references, Some(References::Images(files)) if files.is_empty()) {
            return Err("no reference images given".into());
        }
        Ok(())
    }
}
