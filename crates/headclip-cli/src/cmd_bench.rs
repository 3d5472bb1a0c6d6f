//! `headclip bench`: times inference, one training step or the model load on random input, for
//! the side-by-side comparison with the PyTorch reference (`benches/compare.sh`). Prints one JSON
//! line. Inference is set against its arithmetic floor: the FLOPs counted from the model's shapes
//! ([`headclip::clip::workload_flops`]) at the rate of a large matrix product in the same
//! precision, measured in the same run on the same threads between the timed repetitions (the
//! clocks and core counts of virtual machines say little about what a process gets).

use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use headclip::clip::{workload_flops, WorkloadFlops, WorkloadShape};
use headclip::detector::{load_clip, Detector};
use headclip::model::HeadClipConfig;
use headclip::train::{TrainOptions, TrainSample, Trainer};
use headclip_data::images::PreparedImage;
use tch::{Device, Kind, Tensor};

use crate::cmd_train::LhwPathsArg;
use crate::engine::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// What to time: `infer` (scores, maps, smoothing), `train` (loss, gradients, Adam) or `load`
    /// (reading the weights and parameters until the model is ready to score).
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
    Load,
}

pub fn run(args: BenchArgs) -> Result<i32> {
    if args.batch == 0 || args.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    if args.mode != BenchMode::Train
        && (args.gradient_checkpointing || args.lhw_paths != LhwPathsArg::Vv)
    {
        bail!("--lhw-paths and --gradient-checkpointing apply to --mode train only");
    }
    if args.mode == BenchMode::Load && args.batch != 1 {
        bail!("--batch does not apply to --mode load");
    }
    // The spec sets CUDA up before the first libtorch call, which would otherwise settle on "no
    // CUDA" for the rest of the process.
    let spec = args.model.spec()?;
    tch::manual_seed(0);
    match args.mode {
        BenchMode::Load => {
            let mut precision = String::new();
            time_steps(&args, None, || {
                precision = Detector::load(&spec)?.info().precision;
                Ok(())
            })
            .map(|line| print_line(line, &precision))
        }
        BenchMode::Infer => {
            let detector = Detector::load(&spec)?;
            let s = i64::from(detector.side());
            let images: Vec<PreparedImage> = (0..args.batch).map(|_| random_image(s)).collect();
            let model = detector.model();
            let flops = workload_flops(
                &model.clip.config.vision,
                &WorkloadShape {
                    side: s,
                    dpam_start: model.config.dpam_start,
                    readout: &model.config.readout,
                    embed_dim: model.clip.config.embed_dim,
                    // Zero-shot: the bench scores without few-shot references.
                    few_shot_references: 0,
                },
            );
            let floor = Floor {
                flops,
                kind: model.clip.vision.kind(),
                device: model.device(),
            };
            time_steps(&args, Some(&floor), || {
                for result in detector.score(images.clone()) {
                    result?;
                }
                Ok(())
            })
            .map(|line| print_line(line, &detector.info().precision))
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
            let precision = precision_name(clip.vision.kind());
            time_steps(&args, None, || {
                trainer
                    .train_batch(&samples)
                    .map(|_| ())
                    .map_err(Into::into)
            })
            .map(|line| print_line(line, precision))
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

/// What inference is set against: its FLOPs and the precision and device of the towers.
struct Floor {
    flops: WorkloadFlops,
    kind: Kind,
    device: Device,
}

/// Runs `step` for the warm-up and the timed repetitions and returns the JSON line. With a floor,
/// one timed large matrix product runs before the first repetition and after each.
fn time_steps(
    args: &BenchArgs,
    floor: Option<&Floor>,
    mut step: impl FnMut() -> Result<()>,
) -> Result<serde_json::Value> {
    for _ in 0..args.warmup {
        step()?;
    }
    let mut times = Vec::with_capacity(args.iters);
    let mut rates = Vec::with_capacity(args.iters);
    if let Some(floor) = floor {
        matmul_gflops(floor.kind, floor.device); // first call: allocation and kernel choice
        rates.push(matmul_gflops(floor.kind, floor.device));
    }
    for _ in 0..args.iters {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(floor) = floor {
            rates.push(matmul_gflops(floor.kind, floor.device));
        }
    }
    let median_ms = median(&mut times);
    let mut line = serde_json::json!({
        "engine": "headclip",
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "batch": args.batch,
        "device": args.model.device,
        "precision_requested": args.model.precision.as_str(),
        "threads": tch::get_num_threads(),
        "ms_per_batch_median": median_ms,
        "ms_per_batch_min": times[0],
        "images_per_s": args.batch as f64 * 1e3 / median_ms,
        "peak_rss_mb": peak_rss_mb(),
    });
    if args.mode == BenchMode::Train {
        line["lhw_paths"] = format!("{:?}", args.lhw_paths).to_lowercase().into();
        line["gradient_checkpointing"] = args.gradient_checkpointing.into();
    }
    if let Some(floor) = floor {
        let rate = median(&mut rates);
        let floor_ms = floor.flops.total * args.batch as f64 / (rate * 1e9) * 1e3;
        line["flops_per_image"] = serde_json::to_value(floor.flops)?;
        line["matmul_gflops"] = rate.into();
        line["matmul_side"] = matmul_side(floor.device).into();
        line["floor_ms_per_batch"] = floor_ms.into();
        line["times_floor"] = (median_ms / floor_ms).into();
        eprintln!(
            "floor: {:.4} TFLOP per image × {} at {rate:.1} GFLOP/s (a {n}×{n}×{n} {} matrix \
             product on {} threads, median of {} around the repetitions) = {floor_ms:.0} ms; \
             measured {median_ms:.0} ms per batch: {:.2}× the floor, {:.0}% of the matrix rate",
            floor.flops.total / 1e12,
            args.batch,
            precision_name(floor.kind),
            tch::get_num_threads(),
            rates.len(),
            median_ms / floor_ms,
            100.0 * floor_ms / median_ms,
            n = matmul_side(floor.device),
        );
    }
    Ok(line)
}

/// Prints the JSON line with the precision the towers ran in (bf16 may fall back to fp32).
fn print_line(mut line: serde_json::Value, precision: &str) -> i32 {
    line["precision"] = precision.into();
    println!("{line}");
    0
}

fn precision_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bf16",
        Kind::Half => "fp16",
        _ => "fp32",
    }
}

/// Side of the square matrices of the rate measurement: large enough that the product runs at
/// the kernel's full rate (a GPU needs far more work per call than a CPU to leave launch costs
/// behind), small enough to take about a second on a 2-core CPU.
fn matmul_side(device: Device) -> i64 {
    if device.is_cuda() {
        8192
    } else {
        2048
    }
}

/// GFLOP/s of one large square matrix product in `kind` on `device`.
fn matmul_gflops(kind: Kind, device: Device) -> f64 {
    let n = matmul_side(device);
    let a = Tensor::randn([n, n], (Kind::Float, device)).to_kind(kind);
    let b = Tensor::randn([n, n], (Kind::Float, device)).to_kind(kind);
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    sync();
    let t = Instant::now();
    let c = a.matmul(&b);
    sync();
    let seconds = t.elapsed().as_secs_f64();
    drop(c);
    2.0 * (n * n * n) as f64 / seconds / 1e9
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
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
