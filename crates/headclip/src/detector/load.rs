//! Building a [`Detector`] from a [`ModelSpec`]: CLIP from its checkpoint, HeadCLIP's
//! parameters checked against it, the side S resolved.

use std::time::Instant;

use tch::Device;

use super::{Detector, ModelSpec, Precision};
use crate::clip::{
    find_checkpoint, load_state_dict, rules_for_checkpoint, CheckpointError, Clip, ConfigFileError,
    RulesSource,
};
use crate::model::{
    ConfigError, HeadClip, HeadClipConfig, HeadClipParams, ModelError, ParamsError,
};
use crate::weights;

/// Why a detector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The spec asks for something that cannot run.
    #[error("{0}")]
    Spec(String),
    #[error("{}: {source}", path.display())]
    Checkpoint {
        path: std::path::PathBuf,
        source: CheckpointError,
    },
    #[error("building CLIP from {}: {source}", path.display())]
    Clip {
        path: std::path::PathBuf,
        source: CheckpointError,
    },
    #[error("CLIP config: {0}")]
    ClipConfig(#[from] ConfigFileError),
    #[error(transparent)]
    Params(#[from] ParamsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The few-shot references could not make a bank.
    #[error("{0}")]
    References(String),
}

/// CLIP from the spec's weights, on its device and in its precision, computed as its config
/// says (or as OpenAI's rules say, with a note in the log, when it has none).
pub fn load_clip(spec: &ModelSpec) -> Result<Clip, LoadError> {
    spec.check().map_err(LoadError::Spec)?;
    let path = &find_checkpoint(&spec.weights)?;
    let rules = rules_for_checkpoint(path, spec.clip_config.as_deref())?;
    let mut state = load_state_dict(path).map_err(|source| LoadError::Checkpoint {
        path: path.clone(),
        source,
    })?;
    match &rules.source {
        RulesSource::OpenAiAssumed => tracing::info!(
            "{}: no CLIP config with it, so OpenAI's rules are assumed \
             (64-wide heads, QuickGELU, CLIP's mean and std)",
            path.display()
        ),
        source => tracing::info!("CLIP config: {}", source.describe()),
    }
    state.kind = effective_precision(spec).kind();
    if state.random {
        tracing::warn!(
            "{} holds RANDOM weights (made for tests and benchmarks): its scores mean nothing",
            path.display()
        );
    }
    Clip::from_state_dict_with(&state, &rules, spec.device).map_err(|source| LoadError::Clip {
        path: path.clone(),
        source,
    })
}

impl Detector {
    /// Loads CLIP and HeadCLIP as the spec says.
    pub fn load(spec: &ModelSpec) -> Result<Self, LoadError> {
        let started = Instant::now();
        let spec = &ModelSpec {
            precision: effective_precision(spec),
            ..spec.clone()
        };
        let clip = load_clip(spec)?;
        let (params, mut config) = match &spec.params {
            Some(path) => {
                let (params, config, _) = HeadClipParams::load(path, &clip.config)?;
                warn_if_trained_on_other_weights(path, &config, spec);
                (Some(params), config)
            }
            None => (None, HeadClipConfig::default()),
        };
        if spec.image_size.is_some() {
            config.image_size = spec.image_size;
        }
        let resolved = config.resolve(&clip.config)?;
        let learned = params.is_some();
        let model = HeadClip::with_class_name(clip, params, resolved, spec.class_name.as_deref())?;
        if let (true, Some(name)) = (learned, &spec.class_name) {
            tracing::info!("class name {name:?} ignored: learned prompts are object-agnostic");
        }
        let mut detector = Detector::from_model(model, spec.clone());
        detector
            .set_references(spec.references.clone())
            .map_err(LoadError::References)?;
        let info = detector.info();
        tracing::info!(
            "{} ({}) from {} at S = {}, on {} in {}, loaded in {:.1} s",
            info.model,
            info.mode,
            spec.weights.display(),
            info.image_size,
            info.device,
            info.precision,
            started.elapsed().as_secs_f64()
        );
        Ok(detector)
    }
}

/// Set to `1` to run bf16 on a CPU whose libtorch has no fast bf16 matrix product (tests and
/// measurements of the bf16 arithmetic there).
pub const ENV_FORCE_CPU_BF16: &str = "HEADCLIP_FORCE_CPU_BF16";

/// The precision the towers will run in: the spec's, except bf16 on a CPU without a fast bf16
/// matrix product, which runs in fp32 with a warning. There libtorch multiplies bf16 matrices with
/// a plain loop instead of oneDNN: 3.3–3.9 GFLOP/s against 19–28 for fp32 on a 2-core AMD EPYC
/// with AVX2 only (BENCHMARKS.md), so bf16 would be about 6× slower than fp32, not faster.
pub fn effective_precision(spec: &ModelSpec) -> Precision {
    let forced = std::env::var(ENV_FORCE_CPU_BF16).is_ok_and(|v| v == "1");
    if spec.precision != Precision::Bf16
        || spec.device != Device::Cpu
        || forced
        || cpu_has_fast_bf16_matmul()
    {
        return spec.precision;
    }
    tracing::warn!(
        "--precision bf16: this CPU has no AVX-512 (BW, VL, DQ), so libtorch has no fast bf16 \
         matrix product here (about 6x slower than fp32); running in fp32 instead \
         ({ENV_FORCE_CPU_BF16}=1 forces bf16)"
    );
    Precision::Fp32
}

/// Whether libtorch multiplies bf16 matrices with oneDNN on this CPU: its own condition is
/// AVX-512 BW, VL and DQ on x86 (with AVX512-BF16 or AMX the products are native, without them
/// oneDNN emulates bf16 with AVX-512), any bf16-capable Arm core elsewhere.
pub fn cpu_has_fast_bf16_matmul() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// A parameters file records the sha256 of the CLIP file it was trained with; another file is
/// fine when it is the same model in another format, so this warns rather than refuses.
fn warn_if_trained_on_other_weights(
    params: &std::path::Path,
    config: &HeadClipConfig,
    spec: &ModelSpec,
) {
    let Some(recorded) = &config.clip_sha256 else {
        return;
    };
    match weights::sha256_file_cached(&spec.weights, None) {
        Ok(actual) if recorded.eq_ignore_ascii_case(&actual) => {}
        Ok(actual) => tracing::warn!(
            "{} was trained with CLIP sha256 {recorded}, but {} has {actual} \
             (fine if it is the same model in another format)",
            params.display(),
            spec.weights.display()
        ),
        Err(e) => tracing::warn!("cannot checksum {}: {e}", spec.weights.display()),
    }
}
