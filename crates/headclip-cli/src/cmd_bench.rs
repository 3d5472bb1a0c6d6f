//! `headclip bench`: times inference or one training step on random input, for the side-by-side
//! comparison with the PyTorch reference (`benches/compare.sh`). Prints one JSON line.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use headclip::detector::{load_clip, Detector};
use headclip::model::HeadClipConfig;
use headclip::train::{TrainOptions, TrainSample, Trainer};
use headclip_data::images::PreparedImage;
use tch::{Kind, Tensor};

use crate::cmd_train::LhwPathsArg;
use crate::engine::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// What to time: `infer` (scores, maps, smoothing) or `train` (loss, gradients, Adam).
    #[arg(long, value_enum, default_value = "infer")]
    pub mode: BenchMode,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed repetitions.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Untimed repetitions first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// With `--mode train`: which attention paths the trained head weights scale (`both` runs
    /// autograd through the whole trunk).
    #[arg(long, value_enum, default_value = "vv")]
    pub lhw_paths: LhwPathsArg,
    /// With `--mode train --lhw-paths both`: recompute the two-path blocks in the backward pass.
    #[arg(long)]
    pub gradient_checkpointing: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchMode {
    Infer,
    Train,
}

pub fn run(args: BenchArgs) -> Result<i32> {
    if args.batch == 0 || args.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    if args.mode == BenchMode::Infer
        && (args.gradient_checkpointing || args.lhw_paths != LhwPathsArg::Vv)
    {
        bail!("--lhw-paths and --gradient-checkpointing apply to --mode train only");
    }
    // The spec sets CUDA up before the first libtorch call, which would otherwise settle on "no
    // CUDA" for the rest of the process.
    let spec = args.model.spec()?;
    tch::manual_seed(0);
    match args.mode {
        BenchMode::Infer => {
            let detector = Detector::load(&spec)?;
            let s = i64::from(detector.side());
            let images: Vec<PreparedImage> = (0..args.batch).map(|_| random_image(s)).collect();
            time_steps(&args, || {
                for result in detector.score(images.clone()) {
                    result?;
                }
                Ok(())
            })
        }
        BenchMode::Train => {
            let clip = load_clip(&spec)?;
            let config = HeadClipConfig {
                image_size: args.model.image_size,
                lhw_paths: args.lhw_paths.into(),
                ..Default::default()
            };
            let options = TrainOptions {
                batch_size: args.batch,
                gradient_checkpointing: args.gradient_checkpointing,
                ..Default::default()
            };
            let mut trainer = Trainer::new(&clip, config, options, 8)?;
            let side = trainer.config.image_size as usize;
            let samples: Vec<TrainSample> = (0..args.batch)
                .map(|i| {
                    let image =
                        Tensor::randn([3 * (side * side) as i64], (Kind::Float, tch::Device::Cpu));
                    let mut mask = vec![0u8; side * side];
                    if i % 2 == 0 {
                        mask[side * side / 3..side * side / 2].fill(1);
                    }
                    TrainSample {
                        image: Vec::try_from(&image).unwrap_or_default(),
                        mask,
                        anomalous: i % 2 == 0,
                        mask_known: true,
                    }
                })
                .collect();
            time_steps(&args, || {
                trainer
                    .train_batch(&samples)
                    .map(|_| ())
                    .map_err(Into::into)
            })
        }
    }
}

/// Normal random pixels in the model's input layout, the same in every run (seeded above).
fn random_image(side: i64) -> PreparedImage {
    let pixels = Tensor::randn([3 * side * side], (Kind::Float, tch::Device::Cpu));
    PreparedImage {
        pixels: Vec::try_from(&pixels).unwrap_or_default(),
        width: side as u32,
        height: side as u32,
        format: None,
        original: None,
    }
}

/// Runs `step` for the warm-up and the timed repetitions and prints the JSON line.
fn time_steps(args: &BenchArgs, mut step: impl FnMut() -> Result<()>) -> Result<i32> {
    for _ in 0..args.warmup {
        step()?;
    }
    let mut times = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mut line = serde_json::json!({
        "engine": "headclip",
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "batch": args.batch,
        "device": args.model.device,
        "precision": args.model.precision.as_str(),
        "threads": tch::get_num_threads(),
        "ms_per_batch_median": median,
        "ms_per_batch_min": times[0],
        "images_per_s": args.batch as f64 * 1e3 / median,
        "peak_rss_mb": peak_rss_mb(),
    });
    if args.mode == BenchMode::Train {
        line["lhw_paths"] = format!("{:?}", args.lhw_paths).to_lowercase().into();
        line["gradient_checkpointing"] = args.gradient_checkpointing.into();
    }
    println!("{line}");
    Ok(0)
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
