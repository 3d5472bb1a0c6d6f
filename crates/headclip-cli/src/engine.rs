//! What every model-running command shares: finding the CLIP weights, the device and threads,
//! and building the HeadCLIP model from the weights and an optional parameters file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use headclip::clip::{load_state_dict, Clip};
use headclip::model::{HeadClip, HeadClipConfig, HeadClipParams};
use headclip::weights;
use tch::Device;

/// The official checkpoint the paper uses, fetched when no weights are given.
const DEFAULT_CHECKPOINT: &str = "ViT-L-14-336";

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// CLIP checkpoint: OpenAI .pt (TorchScript), OpenAI/OpenCLIP or Hugging Face safetensors.
    /// Without it, the official ViT-L/14@336 file is taken from the cache or downloaded.
    #[arg(long, env = weights::ENV_WEIGHTS)]
    pub weights: Option<PathBuf>,
    /// HeadCLIP parameters (safetensors from `headclip train`). Without it: training-free mode.
    #[arg(long)]
    pub params: Option<PathBuf>,
    /// Input side S (a multiple of the patch size; default 518 for patch 14, else nearest to 518).
    #[arg(long)]
    pub image_size: Option<i64>,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Precision of the CLIP towers: fp32, bf16 (CPUs with AMX/AVX512-BF16, or CUDA) or fp16
    /// (CUDA only). Maps and scores are always computed in fp32.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
}

fn parse_precision(s: &str, device: Device) -> Result<tch::Kind> {
    Ok(match (s, device) {
        ("fp32", _) => tch::Kind::Float,
        ("bf16", _) => tch::Kind::BFloat16,
        ("fp16", Device::Cuda(_)) => tch::Kind::Half,
        ("fp16", _) => bail!("--precision fp16 needs --device cuda; on the CPU use bf16"),
        (other, _) => bail!("unknown --precision {other:?}: fp32, bf16 or fp16"),
    })
}

pub fn parse_device(s: &str) -> Result<Device> {
    let device = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => bail!("unknown device {other:?}: use cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(_) = device {
        load_cuda_backend();
        if !tch::Cuda::is_available() {
            bail!("--device {s}: no CUDA device is usable (libtorch's CUDA libraries or a GPU are missing)");
        }
    }
    Ok(device)
}

/// libtorch's CUDA half is a separate library that the CPU build does not need at start-up; it
/// registers its kernels when loaded, so load it only when CUDA is asked for.
fn load_cuda_backend() {
    // The libtorch this binary was built against first, then the loader's search path
    // (LD_LIBRARY_PATH), for a binary moved to a machine whose libtorch lives elsewhere.
    let built = format!("{}/libtorch_cuda.so", env!("HEADCLIP_LIBTORCH_LIB"));
    for candidate in [built.as_str(), "libtorch_cuda.so"] {
        let Ok(path) = std::ffi::CString::new(candidate) else {
            continue;
        };
        // SAFETY: dlopen with a valid C string; the handle is intentionally never closed.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            return;
        }
        tracing::debug!("could not load {candidate}");
    }
}

/// The weights file to use: the one given, or the official default from the cache or network.
pub fn resolve_weights(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            bail!(
                "CLIP weights {} not found (from --weights or {})",
                path.display(),
                weights::ENV_WEIGHTS
            );
        }
        weights::verify_official(path).with_context(|| format!("checking {}", path.display()))?;
        return Ok(path.to_path_buf());
    }
    let official = weights::lookup(DEFAULT_CHECKPOINT)?;
    tracing::info!(
        "no --weights given: looking for {} in the cache or downloading it",
        official.file_name
    );
    weights::fetch(DEFAULT_CHECKPOINT, weights::FetchOptions::new()).with_context(|| {
        format!(
            "no CLIP weights given (--weights PATH or {env}=PATH) and {file} (sha256 {sha}) \
             could not be fetched",
            env = weights::ENV_WEIGHTS,
            file = official.file_name,
            sha = official.sha256,
        )
    })
}

/// CLIP as the arguments say (device, threads, weights), and the weights file it came from.
pub fn load_clip(args: &ModelArgs) -> Result<(Clip, PathBuf)> {
    let device = parse_device(&args.device)?;
    if let Some(n) = args.threads {
        if n < 1 {
            bail!("--threads must be at least 1");
        }
        tch::set_num_threads(n);
    }
    let kind = parse_precision(&args.precision, device)?;
    let weights_path = resolve_weights(args.weights.as_deref())?;
    let mut state = load_state_dict(&weights_path)?;
    state.kind = kind;
    if state.random {
        tracing::warn!(
            "{} holds RANDOM weights (made for tests and benchmarks): its scores mean nothing",
            weights_path.display()
        );
    }
    let clip = Clip::from_state_dict(&state, device)
        .with_context(|| format!("building CLIP from {}", weights_path.display()))?;
    Ok((clip, weights_path))
}

/// Loads CLIP and HeadCLIP as the arguments say.
pub fn load_model(args: &ModelArgs) -> Result<HeadClip> {
    let started = Instant::now();
    let (clip, weights_path) = load_clip(args)?;
    let device = clip.text.device();
    let (params, resolved) = match &args.params {
        Some(path) => {
            let (params, mut config, _) = HeadClipParams::load(path, &clip.config)?;
            if let Some(recorded) = &config.clip_sha256 {
                let actual = weights::sha256_file(&weights_path)?;
                if !recorded.eq_ignore_ascii_case(&actual) {
                    tracing::warn!(
                        "{} was trained with CLIP sha256 {recorded}, but {} has {actual} \
                         (fine if it is the same model in another format)",
                        path.display(),
                        weights_path.display()
                    );
                }
            }
            if args.image_size.is_some() {
                config.image_size = args.image_size;
            }
            let resolved = config.resolve(&clip.config)?;
            (Some(params), resolved)
        }
        None => {
            let config = HeadClipConfig {
                image_size: args.image_size,
                ..Default::default()
            };
            (None, config.resolve(&clip.config)?)
        }
    };
    let model = HeadClip::new(clip, params, resolved)?;
    tracing::info!(
        "{} ({:?} prompts) from {} at S = {}, on {:?}, loaded in {:.1} s",
        model.clip.config.name(),
        model.mode,
        weights_path.display(),
        model.image_size(),
        device,
        started.elapsed().as_secs_f64()
    );
    Ok(model)
}
