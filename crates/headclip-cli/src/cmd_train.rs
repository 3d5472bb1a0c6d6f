//! `headclip train`: learn the prompts and head weights on annotated auxiliary data sets (the
//! zero-shot protocol trains on one data set's test split and evaluates on others).
//!
//! After every epoch the parameters file and a training-state file beside it are written
//! atomically, and the state alone every `--checkpoint-interval` seconds between batches;
//! `--resume` continues from the state file, mid-epoch if that is where it stopped. Ctrl-C or
//! SIGTERM stops after the batch under way and saves the state (exit status 130); a second one,
//! or SIGKILL, stops at once, and the last checkpoint written is still intact.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use headclip_data::images::{self, DecodeLimits};
use headclip_data::datasets::{self, DataSpec, LoadOptions, Sample, DATA_SPEC_HELP};
use headclip::model::{HeadClipConfig, LhwForm, LhwPaths, DEFAULT_DEEP_PROMPTS};
use headclip::train::{LossSelection, LossTerms, TrainOptions, TrainSample, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::{load_clip, ModelArgs};

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Training data (repeatable). Its test split by default, per the zero-shot protocol.
    #[arg(long = "data", required = true, long_help = DATA_SPEC_HELP)]
    pub data: Vec<DataSpec>,
    /// Where the learned parameters go (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Training state for --resume [default: OUT with `.state.safetensors`].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Loss log, one JSON line per batch and per epoch [default: OUT with `.losses.jsonl`].
    #[arg(long)]
    pub loss_log: Option<PathBuf>,
    /// Continue from the training state instead of starting afresh.
    #[arg(long)]
    pub resume: bool,
    /// Seconds between training-state checkpoints inside an epoch (0: only at epoch ends).
    #[arg(long, default_value_t = 300)]
    pub checkpoint_interval: u64,
    #[arg(long, default_value_t = 15)]
    pub epochs: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 111)]
    pub seed: u64,
    /// Head-weight form.
    #[arg(long, value_enum, default_value = "softmax")]
    pub lhw_form: LhwFormArg,
    /// Which attention paths the head weights scale (`both` back-propagates through the trunk).
    #[arg(long, value_enum, default_value = "vv")]
    pub lhw_paths: LhwPathsArg,
    /// With `--lhw-paths both`: recompute each two-path block during the backward pass instead
    /// of keeping the activations of the whole trunk (one more forward pass, a fraction of the
    /// memory).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Image-dependent head weights (`w = H·softmax(θ + U ĉ)`).
    #[arg(long)]
    pub lhw_dynamic: bool,
    /// Read-out layers, comma-separated [default: the backbone's].
    #[arg(long, value_delimiter = ',')]
    pub readout: Option<Vec<usize>>,
    /// First two-path block l₀ [default: the backbone's].
    #[arg(long)]
    pub dpam_start: Option<usize>,
    #[arg(long, default_value_t = DEFAULT_DEEP_PROMPTS)]
    pub deep_prompts: usize,
    /// λ of the joint score recorded in the parameters file.
    #[arg(long, default_value_t = 0.5)]
    pub jas_lambda: f64,
    /// Weight of an extra loss term: the binary cross-entropy of the joint anomaly score (the
    /// image score that `predict` and `test` report) against the image label. 0 leaves it out,
    /// as the AnomalyCLIP protocol does.
    #[arg(long, default_value_t = 0.0)]
    pub joint_loss_weight: f64,
    /// Standard CLIP's ln_post on the global token.
    #[arg(long)]
    pub global_ln_post: bool,
    /// Train anomalous images that have no mask: the pixel loss is then left out entirely.
    #[arg(long)]
    pub allow_missing_masks: bool,
    /// Train although the data has only one class (normally refused).
    #[arg(long)]
    pub allow_single_class: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LhwFormArg {
    Softmax,
    Sigmoid,
    Identity,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LhwPathsArg {
    Vv,
    Both,
}

impl From<LhwPathsArg> for LhwPaths {
    fn from(paths: LhwPathsArg) -> Self {
        match paths {
            LhwPathsArg::Vv => LhwPaths::Vv,
            LhwPathsArg::Both => LhwPaths::Both,
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}{suffix}"))
}

pub fn run(args: TrainArgs) -> Result<i32> {
    if args.batch_size == 0 || args.epochs == 0 {
        bail!("--batch-size and --epochs must be at least 1");
    }
    let state_path = args
        .state
        .clone()
        .unwrap_or_else(|| with_suffix(&args.out, ".state.safetensors"));
    let log_path = args
        .loss_log
        .clone()
        .unwrap_or_else(|| with_suffix(&args.out, ".losses.jsonl"));

    // Data first: every problem with it is reported before any compute.
    let load_opts = LoadOptions {
        allow_missing_masks: args.allow_missing_masks,
        check_sizes: true,
    };
    let mut samples: Vec<Sample> = Vec::new();
    for spec in &args.data {
        let set = datasets::load(spec, &load_opts).with_context(|| format!("--data {spec}"))?;
        for w in &set.warnings {
            tracing::warn!("{}: {w}", set.name);
        }
        samples.extend(set.categories.into_iter().flat_map(|c| c.samples));
    }
    let anomalous = samples.iter().filter(|s| s.anomalous).count();
    let normal = samples.len() - anomalous;
    if (anomalous == 0 || normal == 0) && !args.allow_single_class {
        bail!(
            "the training data has {anomalous} anomalous and {normal} normal images: both classes are needed \
             (pass --allow-single-class to train anyway)"
        );
    }
    let missing_masks = samples
        .iter()
        .filter(|s| s.anomalous && s.mask.is_none())
        .count();
    if !(args.joint_loss_weight.is_finite() && args.joint_loss_weight >= 0.0) {
        bail!(
            "--joint-loss-weight must be a finite number ≥ 0, not {}",
            args.joint_loss_weight
        );
    }
    let loss = LossSelection {
        global: true,
        pixel: missing_masks == 0,
        joint_weight: args.joint_loss_weight,
    };
    if missing_masks > 0 {
        tracing::warn!(
            "{missing_masks} anomalous images have no mask: training the global term only"
        );
    }

    let (clip, weights_path) = load_clip(&args.model)?;
    let sha = headclip::weights::sha256_file(&weights_path)?;
    let file_config = HeadClipConfig {
        readout: args.readout.clone(),
        dpam_start: args.dpam_start,
        lhw_form: match args.lhw_form {
            LhwFormArg::Softmax => LhwForm::Softmax,
            LhwFormArg::Sigmoid => LhwForm::Sigmoid,
            LhwFormArg::Identity => LhwForm::Identity,
        },
        lhw_paths: args.lhw_paths.into(),
        lhw_dynamic: args.lhw_dynamic,
        jas_lambda: args.jas_lambda,
        image_size: args.model.image_size,
        global_ln_post: args.global_ln_post,
        clip_sha256: Some(sha.clone()),
        ..Default::default()
    };
    let options = TrainOptions {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        loss,
        gradient_checkpointing: args.gradient_checkpointing,
        ..Default::default()
    };
    let mut trainer = if args.resume && state_path.exists() {
        let mut t = Trainer::resume(&clip, &state_path)?;
        // The run's length and how the backward pass is computed are as asked now; everything
        // else comes from the state.
        t.options.epochs = args.epochs;
        t.options.gradient_checkpointing = args.gradient_checkpointing;
        if t.options.seed != options.seed || t.options.batch_size != options.batch_size {
            tracing::warn!(
                "resuming with the state's seed {} and batch size {}",
                t.options.seed,
                t.options.batch_size
            );
        }
        if t.options.loss.joint_weight != options.loss.joint_weight {
            tracing::warn!(
                "resuming with the state's joint-loss weight {}",
                t.options.loss.joint_weight
            );
        }
        tracing::info!(
            "resuming {} after epoch {}",
            state_path.display(),
            t.epochs_done
        );
        t
    } else {
        if args.resume {
            tracing::warn!(
                "no training state at {}: starting afresh",
                state_path.display()
            );
        }
        Trainer::new(&clip, file_config, options, args.deep_prompts)?
    };
    let mut provenance = BTreeMap::new();
    provenance.insert("headclip.clip_sha256".to_string(), sha);
    provenance.insert(
        "headclip.data".to_string(),
        args.data
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" "),
    );
    trainer.provenance = provenance;

    let side = trainer.config.image_size as u32;
    check_memory(&trainer, args.batch_size)?;
    let limits = DecodeLimits::default();
    let load = |i: usize| -> Result<TrainSample, String> {
        let s = &samples[i];
        let img = data::read_rgb(&s.image, &limits).map_err(|e| e.to_string())?;
        let mask = match &s.mask {
            Some(path) => {
                let m = data::read_mask(path, side, &limits).map_err(|e| e.to_string())?;
                if (m.original_width, m.original_height) != (img.width, img.height) {
                    tracing::warn!(
                        "{}: mask is {}×{}, image {}×{}; resized",
                        path.display(),
                        m.original_width,
                        m.original_height,
                        img.width,
                        img.height
                    );
                }
                m.values
            }
            None => vec![0; (side * side) as usize],
        };
        Ok(TrainSample {
            image: data::preprocess(&img, side),
            mask,
            anomalous: s.anomalous,
        })
    };

    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening the loss log {}", log_path.display()))?;
    let mut skipped: Vec<String> = Vec::new();
    let total_epochs = trainer.options.epochs;
    let joint_on = trainer.options.loss.joint_weight > 0.0;
    tracing::info!(
        "training on {} images ({anomalous} anomalous) at S = {side}, epochs {}..={total_epochs}, batch {}",
        samples.len(),
        trainer.epochs_done + 1,
        trainer.options.batch_size
    );
    install_stop_handler();
    let checkpoint_every = Duration::from_secs(args.checkpoint_interval);
    while trainer.epochs_done < total_epochs {
        let epoch = trainer.epochs_done + 1;
        let bar = ProgressBar::new(samples.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} {bar:25} {pos}/{len} {msg} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{epoch}/{total_epochs}"));
        if trainer.progress.batches_done > 0 {
            tracing::info!(
                "epoch {epoch}: continuing after batch {}",
                trainer.progress.batches_done
            );
            bar.set_position((trainer.progress.samples + trainer.progress.skipped) as u64);
            bar.reset_eta();
        }
        let started = Instant::now();
        let images_before = trainer.progress.samples;
        let mut last_checkpoint = Instant::now();
        let mut on_skip = |i: usize, message: &str| {
            let path = samples[i].image.display().to_string();
            bar.suspend(|| tracing::warn!("skipping {path}: {message}"));
            skipped.push(format!("{path}: {message}"));
        };
        while let Some((n, terms)) = trainer.next_batch(samples.len(), &load, &mut on_skip)? {
            bar.inc(n as u64);
            bar.set_message(describe_loss(&terms, joint_on));
            let batch = trainer.progress.batches_done;
            let line =
                serde_json::json!({"epoch": epoch, "batch": batch, "images": n, "loss": terms});
            writeln!(log, "{line}")?;
            let stopping = STOP.load(Ordering::SeqCst);
            let due = !checkpoint_every.is_zero() && last_checkpoint.elapsed() >= checkpoint_every;
            if stopping || due {
                trainer.save_state(&state_path)?;
                last_checkpoint = Instant::now();
            }
            if stopping {
                bar.abandon();
                eprintln!(
                    "stopped after batch {batch} of epoch {epoch}; the training state is saved in {} \
                     (continue with --resume); {} holds the last complete epoch",
                    state_path.display(),
                    args.out.display()
                );
                return Ok(130);
            }
        }
        bar.finish_and_clear();
        let record = trainer.finish_epoch()?;
        trainer.save(&args.out, &state_path)?;
        let seconds = started.elapsed().as_secs_f64();
        let trained_now = record.samples - images_before;
        let line = serde_json::json!({
            "epoch": epoch, "summary": true, "loss": record.loss, "images": record.samples,
            "skipped": record.skipped, "seconds": seconds,
            "seconds_per_image": seconds / trained_now.max(1) as f64,
        });
        writeln!(log, "{line}")?;
        tracing::info!(
            "epoch {epoch}/{total_epochs}: {}, {:.2} s/image; saved {}",
            describe_loss(&record.loss, joint_on),
            seconds / trained_now.max(1) as f64,
            args.out.display()
        );
    }
    if !skipped.is_empty() {
        skipped.sort();
        skipped.dedup();
        eprintln!("{} unreadable files were skipped:", skipped.len());
        for s in &skipped {
            eprintln!("  {s}");
        }
    }
    Ok(0)
}

/// Set by the first SIGINT or SIGTERM: stop after the batch under way.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // The second signal: stop now. The last checkpoint on disk is complete (atomic writes).
        unsafe { libc::_exit(130) };
    }
    let message =
        b"\nstopping after this batch to save the training state (signal again to stop now)\n";
    // write(2) is async-signal-safe; eprintln! is not.
    unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
}

fn install_stop_handler() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// "loss T (ce C, focal F, dice D[, joint J])", the joint term only when it is trained.
fn describe_loss(terms: &LossTerms, joint: bool) -> String {
    let mut text = format!(
        "loss {:.4} (ce {:.4}, focal {:.4}, dice {:.4}",
        terms.total, terms.ce, terms.focal, terms.dice
    );
    if joint {
        text += &format!(", joint {:.4}", terms.joint);
    }
    text + ")"
}

/// Refuses a batch that would not fit in memory, before the first epoch. The estimate counts
/// the tensors one step keeps alive, in units of one [B, N, D] fp32 token tensor: with `vv`, the
/// value–value outputs of every two-path block, the read-out tokens and their gradients; with
/// `both`, about 18 per block for autograd (measured: ViT-B/16 shapes, S = 512, batch 8 peaked
/// at 6.4 GB, 3.3 GB with checkpointing), or with checkpointing two per two-path block plus one
/// block's worth; and the S×S probability maps of each read-out layer.
fn check_memory(trainer: &Trainer, batch: usize) -> Result<()> {
    let v = &trainer.clip.vision.config;
    let s = trainer.config.image_size as f64;
    let n = (s / v.patch as f64).powi(2) + 1.0;
    let b = batch as f64;
    let d = v.width as f64;
    let blocks = (v.layers + 1 - trainer.config.dpam_start) as f64;
    let readout = trainer.config.readout.len() as f64;
    let tokens = b * n * d * 4.0;
    let maps = readout * b * 2.0 * s * s * 4.0 * 6.0;
    const PER_BLOCK_AUTOGRAD: f64 = 18.0;
    let both_plain = v.layers as f64 * PER_BLOCK_AUTOGRAD * tokens + maps;
    let both_checkpointed = (2.0 * blocks + PER_BLOCK_AUTOGRAD) * tokens + maps;
    let bytes = match trainer.config.lhw_paths {
        LhwPaths::Vv => blocks * tokens + readout * tokens * 4.0 + maps + 8.0 * tokens,
        LhwPaths::Both if trainer.options.gradient_checkpointing => both_checkpointed,
        LhwPaths::Both => both_plain,
    };
    let need_gb = bytes / 1e9;
    tracing::info!("estimated memory per batch of {batch}: {need_gb:.1} GB");
    let device = trainer.clip.text.device();
    let Some(available) = available_memory(device).map(|a| a as f64 * 0.9) else {
        tracing::info!("free memory on {device:?} unknown: not checked");
        return Ok(());
    };
    if bytes > available {
        let hint = if trainer.config.lhw_paths == LhwPaths::Both
            && !trainer.options.gradient_checkpointing
            && both_checkpointed <= available
        {
            format!(
                "pass --gradient-checkpointing (about {:.1} GB) or use a smaller --batch-size",
                both_checkpointed / 1e9
            )
        } else {
            "use a smaller --batch-size".to_string()
        };
        bail!(
            "a batch of {batch} needs about {need_gb:.1} GB, but only {:.1} GB is available on {device:?}: {hint}",
            available / 0.9 / 1e9
        );
    }
    Ok(())
}

/// Free memory where the step runs: MemAvailable for the CPU; for a CUDA device what
/// `nvidia-smi` reports free (libtorch's C API does not expose cudaMemGetInfo).
fn available_memory(device: tch::Device) -> Option<u64> {
    if let tch::Device::Cuda(index) = device {
        let out = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.free",
                "--format=csv,noheader,nounits",
                &format!("--id={index}"),
            ])
            .output()
            .ok()?;
        let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        return Some(mib * 1024 * 1024);
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
