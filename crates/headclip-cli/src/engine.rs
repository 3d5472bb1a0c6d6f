//! What every model-running command shares: the model options, turned into the library's
//! model description once the weights are found (or fetched).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use headclip::detector::{
    parse_device, Detector, ModelSpec, Precision, References, DEFAULT_BANK_CAP, DEFAULT_BETA,
};
use headclip::weights;

/// The official checkpoint the paper uses, fetched when no weights are given.
const DEFAULT_CHECKPOINT: &str = "ViT-L-14-336";

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// CLIP checkpoint: OpenAI .pt (TorchScript), OpenAI/OpenCLIP or Hugging Face safetensors,
    /// or a folder with OpenCLIP's or Hugging Face's weights and config. Without it, the
    /// official ViT-L/14@336 file is taken from the cache or downloaded.
    #[arg(long, env = weights::ENV_WEIGHTS)]
    pub weights: Option<PathBuf>,
    /// The checkpoint's config (OpenCLIP's open_clip_config.json or model config, or Hugging
    /// Face's config.json): head widths, MLP activation, mean and std. Overrides the config
    /// paired with the weights by name; with neither, OpenAI's rules are assumed.
    #[arg(long)]
    pub clip_config: Option<PathBuf>,
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
    pub precision: Precision,
    /// Few-shot references and class name, for the commands that take them.
    #[arg(skip)]
    pub few_shot: Option<FewShotArgs>,
}

/// Few-shot references and the class name of `predict` and `serve`.
#[derive(Args, Debug, Clone)]
pub struct FewShotArgs {
    /// Few-shot: a folder of normal images of the part (searched recursively), or a bank saved
    /// by `headclip bank`. Their patch features are compared with every image's.
    #[arg(long, value_name = "DIR|BANK")]
    pub references: Option<PathBuf>,
    /// Weight β of the few-shot map in the fused map (1 − β)·zero-shot + β·few-shot, in [0, 1].
    #[arg(long, default_value_t = DEFAULT_BETA)]
    pub beta: f64,
    /// The most patch features per read-out layer the bank may hold (references × (S/P)²);
    /// more references are refused.
    #[arg(long, default_value_t = DEFAULT_BANK_CAP)]
    pub bank_cap: usize,
    /// The object's name in the training-free prompts ("metal_nut" reads "metal nut"); learned
    /// prompts ignore it.
    #[arg(long)]
    pub class_name: Option<String>,
}

impl FewShotArgs {
    /// Writes the references, β, the cap and the class name into `spec`.
    fn apply(&self, spec: &mut ModelSpec) -> Result<()> {
        if let Some(path) = &self.references {
            if !path.exists() {
                bail!(
                    "--references {}: no such folder or bank file",
                    path.display()
                );
            }
            spec.references = Some(References::from_path(path));
        }
        spec.beta = self.beta;
        spec.bank_cap = self.bank_cap;
        spec.class_name = self.class_name.clone();
        Ok(())
    }
}

/// The weights file to use: the one given (or in the folder given), or the official default from
/// the cache or network.
pub fn resolve_weights(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        let path = &headclip::clip::find_checkpoint(path)?;
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

impl ModelArgs {
    /// The model description these arguments make: the weights found (or fetched), the device
    /// checked, the thread count set for the process.
    pub fn spec(&self) -> Result<ModelSpec> {
        let device = parse_device(&self.device).map_err(|e| anyhow!("--device: {e}"))?;
        if let Some(n) = self.threads {
            if n < 1 {
                bail!("--threads must be at least 1");
            }
            tch::set_num_threads(n);
        }
        let mut spec = ModelSpec {
            clip_config: self.clip_config.clone(),
            params: self.params.clone(),
            image_size: self.image_size,
            device,
            precision: self.precision,
            ..ModelSpec::new(resolve_weights(self.weights.as_deref())?)
        };
        if let Some(few_shot) = &self.few_shot {
            few_shot.apply(&mut spec)?;
        }
        spec.check().map_err(|e| anyhow!("{e}"))?;
        if let Some(config) = &spec.clip_config {
            if !config.is_file() {
                bail!("--clip-config {} not found", config.display());
            }
        }
        Ok(spec)
    }
}

/// The detector the arguments describe.
pub fn load_detector(args: &ModelArgs) -> Result<Detector> {
    Ok(Detector::load(&args.spec()?)?)
}
