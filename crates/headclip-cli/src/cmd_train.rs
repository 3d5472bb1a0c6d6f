//! `headclip train`: learn the prompts and head weights on annotated auxiliary data sets (the
//! zero-shot protocol trains on one data set's test split and evaluates on others).
//!
//! After every epoch the parameters file and a training-state file beside it are written
//! atomically, and the state alone every `--checkpoint-interval` seconds between batches;
//! `--resume` continues from the state file, mid-epoch if that is where it stopped. Ctrl-C or
//! SIGTERM stops after the batch under way and saves the state (exit status 130); a second one,
//! or SIGKILL, stops at once, and the last checkpoint written is still intact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use headclip::clip::{Clip, RulesSource};
use headclip::detector::load_clip;
use headclip::model::{HeadClipConfig, LhwForm, LhwPaths, DEFAULT_DEEP_PROMPTS};
use headclip::train::{
    memory, run_settings, setting_differences, CheckpointPolicy, EpochProgress, EpochRecord,
    LossSelection, LossTerms, RunFiles, RunOutcome, TrainImage, TrainObserver, TrainOptions,
    TrainSet, TrainSetCounts, Trainer,
};
use headclip_data::datasets::{self, DataSpec, LoadOptions, DATA_SPEC_HELP};
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::ModelArgs;

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
    /// With --resume: continue although options that change the result (data, weights, seed,
    /// batch size, learning rate, image size, …) differ from the state's.
    #[arg(long, requires = "resume")]
    pub force_resume: bool,
    /// Start afresh over an existing training state and loss log (the log starts empty).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
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
    /// Train a category whose anomalous images lack some masks, as image-level data: its images
    /// then take no part in the pixel loss terms.
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

pub fn run(args: TrainArgs) -> Result<i32> {
    let files = checked_files(&args)?;
    // Data first: every problem with it is reported before any compute.
    let images = load_images(&args)?;
    check_classes(TrainSetCounts::of(&images), args.allow_single_class)?;
    let spec = args.model.spec()?;
    let clip = load_clip(&spec)?;
    let mut trainer = trainer(&args, &clip, &files.state, &spec.weights)?;
    let set = TrainSet::new(
        images,
        trainer.config.image_size as u32,
        clip.config.normalization,
    );
    trainer.options.loss = set.loss_selection(trainer.options.loss.joint_weight);
    check_memory(&trainer)?;
    tracing::info!(
        "training on {} images ({} anomalous) at S = {}, epochs {}..={}, batch {}",
        set.len(),
        set.counts().anomalous,
        trainer.config.image_size,
        trainer.epochs_done + 1,
        trainer.options.epochs,
        trainer.options.batch_size
    );
    if args.overwrite && !(args.resume && files.state.exists()) {
        files.clear_loss_log()?;
    }
    install_stop_handler();
    let policy = CheckpointPolicy {
        interval: (args.checkpoint_interval > 0)
            .then(|| Duration::from_secs(args.checkpoint_interval)),
    };
    let mut progress = Progress::new(set.len(), &trainer, &files.params);
    let outcome = trainer.run(&set, &files, policy, &STOP, &mut progress)?;
    Ok(report_outcome(outcome, &files, &progress))
}

/// The options and output files checked before anything is read: a bad path or an existing
/// run fails now, not after an epoch.
fn checked_files(args: &TrainArgs) -> Result<RunFiles> {
    if args.batch_size == 0 || args.epochs == 0 {
        bail!("--batch-size and --epochs must be at least 1");
    }
    if !(args.joint_loss_weight.is_finite() && args.joint_loss_weight >= 0.0) {
        bail!(
            "--joint-loss-weight must be a finite number ≥ 0, not {}",
            args.joint_loss_weight
        );
    }
    train_options(args)
        .check()
        .map_err(|e| anyhow::anyhow!("training option {e}"))?;
    let files = run_files(args);
    files.check()?;
    let existing = files.existing_run();
    if !args.resume && !args.overwrite && !existing.is_empty() {
        bail!(
            "{} already exist{}: pass --resume to continue that run or --overwrite to start afresh",
            existing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and "),
            if existing.len() == 1 { "s" } else { "" }
        );
    }
    Ok(files)
}

/// Says how the run ended; the exit status (130 after a stop, as after Ctrl-C).
fn report_outcome(outcome: RunOutcome, files: &RunFiles, progress: &Progress) -> i32 {
    match outcome {
        RunOutcome::Stopped { epoch, batch } => {
            progress.bar.abandon();
            eprintln!(
                "stopped after batch {batch} of epoch {epoch}; the training state is saved in {} \
                 (continue with --resume); {} holds the last complete epoch",
                files.state.display(),
                files.params.display()
            );
            130
        }
        RunOutcome::Finished { skipped } => {
            if !skipped.is_empty() {
                eprintln!("{} unreadable files were skipped:", skipped.len());
                for s in &skipped {
                    eprintln!("  {s}");
                }
            }
            0
        }
    }
}

fn run_files(args: &TrainArgs) -> RunFiles {
    let mut files = RunFiles::beside(&args.out);
    if let Some(state) = &args.state {
        files.state = state.clone();
    }
    if let Some(log) = &args.loss_log {
        files.loss_log = log.clone();
    }
    files
}

/// Every image of every `--data`, checked on disk (no image decoded yet).
fn load_images(args: &TrainArgs) -> Result<Vec<TrainImage>> {
    let load_opts = LoadOptions {
        allow_missing_masks: args.allow_missing_masks,
        check_sizes: true,
    };
    let mut images = Vec::new();
    for spec in &args.data {
        let set = datasets::load(spec, &load_opts).with_context(|| format!("--data {spec}"))?;
        for w in &set.warnings {
            tracing::warn!("{}: {w}", set.name);
        }
        images.extend(set.categories.into_iter().flat_map(TrainImage::all_of));
    }
    Ok(images)
}

fn check_classes(counts: TrainSetCounts, allow_single_class: bool) -> Result<()> {
    if (counts.anomalous == 0 || counts.normal == 0) && !allow_single_class {
        bail!(
            "the training data has {} anomalous and {} normal images: both classes are needed \
             (pass --allow-single-class to train anyway)",
            counts.anomalous,
            counts.normal
        );
    }
    let total = counts.anomalous + counts.normal;
    if counts.mask_known < total {
        tracing::warn!(
            "{} of {total} images have no pixel ground truth (image-level data): the focal and \
             Dice terms are computed over the other {}",
            total - counts.mask_known,
            counts.mask_known
        );
    }
    Ok(())
}

/// A fresh trainer as the arguments say, or the one the state file holds with `--resume`.
fn trainer<'c>(
    args: &TrainArgs,
    clip: &'c Clip,
    state: &Path,
    weights: &Path,
) -> Result<Trainer<'c>> {
    let sha = headclip::weights::sha256_file(weights)?;
    let provenance = provenance(args, &sha, &clip.config.rules);
    let mut trainer = if args.resume && state.exists() {
        resume(args, clip, state, &sha, &provenance)?
    } else {
        if args.resume {
            tracing::warn!("no training state at {}: starting afresh", state.display());
        }
        Trainer::new(
            clip,
            file_config(args, sha.clone()),
            train_options(args),
            args.deep_prompts,
        )?
    };
    trainer.provenance = provenance;
    Ok(trainer)
}

/// What a run records of where it came from: the weights' sha256, the backbone's config files
/// and their sha256 (head widths, activations and mean/std move results), the data and the
/// precision.
fn provenance(args: &TrainArgs, sha: &str, rules: &RulesSource) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("headclip.clip_sha256".to_string(), sha.to_string()),
        ("headclip.clip_config".to_string(), rules.provenance()),
        (
            "headclip.data".to_string(),
            args.data
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "headclip.precision".to_string(),
            args.model.precision.to_string(),
        ),
    ])
}

fn file_config(args: &TrainArgs, clip_sha256: String) -> HeadClipConfig {
    HeadClipConfig {
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
        clip_sha256: Some(clip_sha256),
        ..Default::default()
    }
}

fn train_options(args: &TrainArgs) -> TrainOptions {
    TrainOptions {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        loss: LossSelection {
            joint_weight: args.joint_loss_weight,
            ..Default::default()
        },
        gradient_checkpointing: args.gradient_checkpointing,
        ..Default::default()
    }
}

/// The run in the state file. Its length and how the backward pass is computed are as asked
/// now; every option that changes the result must match the state's (or --force-resume, and
/// then the state's are used).
fn resume<'c>(
    args: &TrainArgs,
    clip: &'c Clip,
    state: &Path,
    sha: &str,
    provenance: &BTreeMap<String, String>,
) -> Result<Trainer<'c>> {
    let mut t = Trainer::resume(clip, state)?;
    let requested = run_settings(
        &file_config(args, sha.to_string()),
        &train_options(args),
        args.deep_prompts,
        provenance,
    );
    let differences = setting_differences(&t.settings(), &requested);
    if !differences.is_empty() {
        let list = differences
            .iter()
            .map(|d| {
                format!(
                    "{}: {} in the state, {} now",
                    d.name, d.in_state, d.requested
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        if !args.force_resume {
            bail!(
                "cannot resume {}: options differ from the run it holds ({list}); run with the \
                 state's options, or pass --force-resume to continue with the state's",
                state.display()
            );
        }
        tracing::warn!("resuming with the state's options although they differ: {list}");
    }
    t.options.epochs = args.epochs;
    t.options.gradient_checkpointing = args.gradient_checkpointing;
    tracing::info!("resuming {} after epoch {}", state.display(), t.epochs_done);
    Ok(t)
}

/// Refuses a batch that would not fit in memory, before the first epoch.
fn check_memory(trainer: &Trainer) -> Result<()> {
    let batch = trainer.options.batch_size;
    let estimate = memory::estimate(trainer, batch);
    let need_gb = estimate.bytes / 1e9;
    tracing::info!("estimated memory per batch of {batch}: {need_gb:.1} GB");
    let device = trainer.clip.text.device();
    let Some(available) = estimate.available else {
        tracing::info!("free memory on {device:?} unknown: not checked");
        return Ok(());
    };
    if estimate.fits() {
        return Ok(());
    }
    let hint = match estimate.bytes_with_checkpointing {
        Some(bytes) if estimate.checkpointing_would_fit() => format!(
            "pass --gradient-checkpointing (about {:.1} GB) or use a smaller --batch-size",
            bytes / 1e9
        ),
        _ => "use a smaller --batch-size".to_string(),
    };
    bail!(
        "a batch of {batch} needs about {need_gb:.1} GB, but only {:.1} GB is available on {device:?}: {hint}",
        available / 1e9
    )
}

/// The progress bar and the log lines of a run.
struct Progress {
    bar: ProgressBar,
    total: usize,
    epochs: usize,
    joint: bool,
    params: PathBuf,
}

impl Progress {
    fn new(total: usize, trainer: &Trainer, params: &Path) -> Self {
        Self {
            bar: ProgressBar::hidden(),
            total,
            epochs: trainer.options.epochs,
            joint: trainer.options.loss.joint_weight > 0.0,
            params: params.to_path_buf(),
        }
    }
}

impl TrainObserver for Progress {
    fn epoch_started(&mut self, epoch: usize, progress: &EpochProgress) {
        self.bar = ProgressBar::new(self.total as u64);
        self.bar.set_style(
            ProgressStyle::with_template("epoch {prefix} {bar:25} {pos}/{len} {msg} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        self.bar.set_prefix(format!("{epoch}/{}", self.epochs));
        if progress.batches_done > 0 {
            tracing::info!(
                "epoch {epoch}: continuing after batch {}",
                progress.batches_done
            );
            self.bar
                .set_position((progress.samples + progress.skipped) as u64);
            self.bar.reset_eta();
        }
    }

    fn batch_done(&mut self, images: usize, loss: &LossTerms) {
        self.bar.inc(images as u64);
        self.bar.set_message(describe_loss(loss, self.joint));
    }

    fn skipped(&mut self, image: &Path, message: &str) {
        self.bar
            .suspend(|| tracing::warn!("skipping {}: {message}", image.display()));
    }

    fn epoch_done(&mut self, record: &EpochRecord, seconds_per_image: f64) {
        self.bar.finish_and_clear();
        tracing::info!(
            "epoch {}/{}: {}, {seconds_per_image:.2} s/image; saved {}",
            record.epoch,
            self.epochs,
            describe_loss(&record.loss, self.joint),
            self.params.display()
        );
    }
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
