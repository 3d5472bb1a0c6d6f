//! A whole training run: epochs over a training set, the loss log, checkpoints on a policy, and
//! a stop between batches when asked. Front ends (the CLI, the Python package) supply the data,
//! the files, an observer for progress and a stop flag; the guarantees (atomic files, bit-exact
//! resume) are kept here, once.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use headclip_data::datasets::{Category, Sample};
use headclip_data::images::{self, DecodeLimits, ImageSource, Normalization, Preprocessor};

use super::{
    EpochProgress, EpochRecord, LossSelection, LossTerms, TrainError, TrainSample, Trainer,
};

/// The training images: their samples and the decode stage every entry point shares.
pub struct TrainSet {
    pub images: Vec<TrainImage>,
    preprocessor: Preprocessor,
}

/// A training image, and whether its pixels are labelled: its category has masks (a normal
/// image's mask is then empty). The pixel loss terms cover these images only.
#[derive(Debug, Clone)]
pub struct TrainImage {
    pub sample: Sample,
    pub mask_known: bool,
}

impl TrainImage {
    /// Every image of `category`.
    pub fn all_of(category: Category) -> impl Iterator<Item = TrainImage> {
        let mask_known = category.has_masks;
        category
            .samples
            .into_iter()
            .map(move |sample| TrainImage { sample, mask_known })
    }
}

/// How many images of each kind a training set has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainSetCounts {
    pub anomalous: usize,
    pub normal: usize,
    /// Images whose masks are ground truth (the pixel terms' images).
    pub mask_known: usize,
}

impl TrainSetCounts {
    pub fn of(images: &[TrainImage]) -> Self {
        let anomalous = images.iter().filter(|i| i.sample.anomalous).count();
        Self {
            anomalous,
            normal: images.len() - anomalous,
            mask_known: images.iter().filter(|i| i.mask_known).count(),
        }
    }
}

impl TrainSet {
    /// `images` decoded for a model of side `side` that normalises with `normalization`.
    pub fn new(images: Vec<TrainImage>, side: u32, normalization: Normalization) -> Self {
        Self {
            images,
            preprocessor: Preprocessor {
                side,
                limits: DecodeLimits::default(),
                normalization,
            },
        }
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn counts(&self) -> TrainSetCounts {
        TrainSetCounts::of(&self.images)
    }

    /// The loss terms this set can train: the pixel terms when some image has a known mask.
    pub fn loss_selection(&self, joint_weight: f64) -> LossSelection {
        LossSelection {
            global: true,
            pixel: self.counts().mask_known > 0,
            joint_weight,
        }
    }

    /// Decodes image `i` with its S×S mask (all zero for a normal image or an unknown mask).
    pub fn load(&self, i: usize) -> Result<TrainSample, String> {
        let TrainImage { sample, mask_known } = &self.images[i];
        let side = self.preprocessor.side;
        let image = self
            .preprocessor
            .prepare(ImageSource::Path(sample.image.clone()), false)
            .map_err(|e| e.to_string())?;
        let mask = match sample.mask.as_ref().filter(|_| *mask_known) {
            Some(path) => {
                let m = images::read_mask(path, side, &self.preprocessor.limits)
                    .map_err(|e| e.to_string())?;
                if (m.original_width, m.original_height) != (image.width, image.height) {
                    tracing::warn!(
                        "{}: mask is {}×{}, image {}×{}; resized",
                        path.display(),
                        m.original_width,
                        m.original_height,
                        image.width,
                        image.height
                    );
                }
                m.values
            }
            None => vec![0; (side * side) as usize],
        };
        Ok(TrainSample {
            image: image.pixels,
            mask,
            anomalous: sample.anomalous,
            mask_known: *mask_known,
        })
    }
}

/// The files of a run, each written atomically except the append-only loss log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFiles {
    /// The deployable parameters, rewritten after every epoch.
    pub params: PathBuf,
    /// The training state for resuming.
    pub state: PathBuf,
    /// One JSON line per batch and a summary per epoch.
    pub loss_log: PathBuf,
}

impl RunFiles {
    /// `P.safetensors`, with `P.state.safetensors` and `P.losses.jsonl` beside it.
    pub fn beside(params: &Path) -> Self {
        Self {
            params: params.to_path_buf(),
            state: sibling(params, ".state.safetensors"),
            loss_log: sibling(params, ".losses.jsonl"),
        }
    }
}

impl RunFiles {
    /// Every output path can be written: its folder exists, it is not a folder itself, and a
    /// file can be created beside it. Checked before any compute, so that a bad path fails in
    /// a second, not after an epoch.
    pub fn check(&self) -> Result<(), TrainError> {
        for (what, path) in [
            ("parameters file", &self.params),
            ("training state", &self.state),
            ("loss log", &self.loss_log),
        ] {
            let problem =
                |message: &str| TrainError::Io(format!("the {what} {}: {message}", path.display()));
            if path.is_dir() {
                return Err(problem("is a folder, not a file"));
            }
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !dir.is_dir() {
                return Err(problem(&format!(
                    "its folder {} does not exist",
                    dir.display()
                )));
            }
            tempfile::NamedTempFile::new_in(dir)
                .map_err(|e| problem(&format!("cannot write in {}: {e}", dir.display())))?;
            if path.exists() && std::fs::OpenOptions::new().append(true).open(path).is_err() {
                return Err(problem("exists and cannot be written"));
            }
        }
        Ok(())
    }

    /// The files a fresh run would overwrite or append to: the state and the loss log.
    pub fn existing_run(&self) -> Vec<&Path> {
        [&self.state, &self.loss_log]
            .into_iter()
            .filter(|p| p.exists())
            .map(PathBuf::as_path)
            .collect()
    }

    /// Starts the loss log afresh (an empty file), for a run that overwrites an old one.
    pub fn clear_loss_log(&self) -> Result<(), TrainError> {
        std::fs::write(&self.loss_log, b"").map_err(|e| {
            TrainError::Io(format!(
                "clearing the loss log {}: {e}",
                self.loss_log.display()
            ))
        })
    }
}

/// The settings of a run that change its result, by name, as text: what a resumed run must
/// share with the run in its state.
pub type RunSettings = std::collections::BTreeMap<&'static str, String>;

/// [`RunSettings`] of a run with this configuration, these options, `deep_prompts` deep prompts
/// and this provenance (`headclip.clip_sha256`, `headclip.clip_config`, `headclip.data`,
/// `headclip.precision`). The
/// run's length, and how gradients are computed, are left out: they may change on resume.
pub fn run_settings(
    config: &crate::model::HeadClipConfig,
    options: &super::TrainOptions,
    deep_prompts: usize,
    provenance: &std::collections::BTreeMap<String, String>,
) -> RunSettings {
    let from = |key: &str| provenance.get(key).cloned().unwrap_or_default();
    let debug = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase();
    RunSettings::from([
        ("weights (sha256)", from("headclip.clip_sha256")),
        ("CLIP config", from("headclip.clip_config")),
        ("data", from("headclip.data")),
        ("precision", from("headclip.precision")),
        ("seed", options.seed.to_string()),
        ("batch_size", options.batch_size.to_string()),
        ("lr", options.lr.to_string()),
        ("beta1", options.beta1.to_string()),
        ("beta2", options.beta2.to_string()),
        ("joint_loss_weight", options.loss.joint_weight.to_string()),
        ("image_size", debug(&config.image_size)),
        ("readout", debug(&config.readout)),
        ("dpam_start", debug(&config.dpam_start)),
        ("deep_prompts", deep_prompts.to_string()),
        ("lhw_form", debug(&config.lhw_form)),
        ("lhw_paths", debug(&config.lhw_paths)),
        ("lhw_dynamic", config.lhw_dynamic.to_string()),
        ("jas_lambda", config.jas_lambda.to_string()),
        ("global_ln_post", config.global_ln_post.to_string()),
    ])
}

/// One setting that differs between a training state and the run asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingDifference {
    pub name: &'static str,
    pub in_state: String,
    pub requested: String,
}

/// The settings that differ. A setting the state did not record (an older state) is not
/// compared.
pub fn setting_differences(state: &RunSettings, requested: &RunSettings) -> Vec<SettingDifference> {
    requested
        .iter()
        .filter_map(|(name, want)| {
            let have = state.get(name)?;
            (!have.is_empty() && have != want).then(|| SettingDifference {
                name,
                in_state: have.clone(),
                requested: want.clone(),
            })
        })
        .collect()
}

impl Trainer<'_> {
    /// The [`RunSettings`] of the run this trainer holds.
    pub fn settings(&self) -> RunSettings {
        run_settings(
            &self.file_config,
            &self.options,
            self.params.deep.len(),
            &self.provenance,
        )
    }
}

/// `dir/stem.ext` → `dir/stem{suffix}`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}{suffix}"))
}

/// When the state is written inside an epoch (it always is at epoch ends and on a stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Time between checkpoints inside an epoch; `None`: epoch ends only.
    pub interval: Option<Duration>,
}

/// What a front end sees of a run; every method runs on the training thread, in order.
pub trait TrainObserver {
    /// An epoch starts, or continues where `progress` says (a resumed run).
    fn epoch_started(&mut self, _epoch: usize, _progress: &EpochProgress) {}
    /// A batch of `images` was trained.
    fn batch_done(&mut self, _images: usize, _loss: &LossTerms) {}
    /// A sample could not be read; it is left out of the epoch.
    fn skipped(&mut self, _image: &Path, _message: &str) {}
    /// An epoch ended and its files were written.
    fn epoch_done(&mut self, _record: &EpochRecord, _seconds_per_image: f64) {}
}

/// An observer that does nothing.
impl TrainObserver for () {}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every epoch is done. The unreadable files, sorted, once each, with why.
    Finished { skipped: Vec<String> },
    /// The stop flag was seen; the state was saved after this batch of this epoch.
    Stopped { epoch: usize, batch: usize },
}

impl Trainer<'_> {
    /// Trains the remaining epochs of `set`, writing `files` as it goes: the loss log after
    /// every batch, the state when `policy` says and after every epoch with the parameters.
    /// When `stop` is set, the run stops after the batch under way and saves the state.
    pub fn run(
        &mut self,
        set: &TrainSet,
        files: &RunFiles,
        policy: CheckpointPolicy,
        stop: &AtomicBool,
        observer: &mut dyn TrainObserver,
    ) -> Result<RunOutcome, TrainError> {
        let mut log = LossLog::open(&files.loss_log)?;
        let mut skipped: Vec<String> = Vec::new();
        while self.epochs_done < self.options.epochs {
            let epoch = self.epochs_done + 1;
            let started = Instant::now();
            let images_before = self.progress.samples;
            observer.epoch_started(epoch, &self.progress);
            let mut last_checkpoint = Instant::now();
            let load = |i: usize| set.load(i);
            let mut unreadable: Vec<(usize, String)> = Vec::new();
            loop {
                let next = self.next_batch(set.len(), &load, &mut |i, message| {
                    unreadable.push((i, message.to_string()))
                })?;
                for (i, message) in unreadable.drain(..) {
                    let path = &set.images[i].sample.image;
                    observer.skipped(path, &message);
                    skipped.push(format!("{}: {message}", path.display()));
                }
                let Some((n, terms)) = next else {
                    break;
                };
                let batch = self.progress.batches_done;
                log.batch(epoch, batch, n, &terms)?;
                observer.batch_done(n, &terms);
                let stopping = stop.load(Ordering::SeqCst);
                let due = policy
                    .interval
                    .is_some_and(|every| last_checkpoint.elapsed() >= every);
                if stopping || due {
                    self.save_state(&files.state)?;
                    last_checkpoint = Instant::now();
                }
                if stopping {
                    return Ok(RunOutcome::Stopped { epoch, batch });
                }
            }
            let record = self.finish_epoch()?;
            self.save(&files.params, &files.state)?;
            let seconds = started.elapsed().as_secs_f64();
            let per_image = seconds / (record.samples - images_before).max(1) as f64;
            log.epoch(&record, seconds, per_image)?;
            observer.epoch_done(&record, per_image);
        }
        skipped.sort();
        skipped.dedup();
        Ok(RunOutcome::Finished { skipped })
    }
}

/// The append-only loss log: one JSON line per batch, a summary line per epoch.
struct LossLog {
    path: PathBuf,
    file: File,
}

impl LossLog {
    fn open(path: &Path) -> Result<Self, TrainError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::Io(format!("opening the loss log {}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    fn batch(
        &mut self,
        epoch: usize,
        batch: usize,
        images: usize,
        loss: &LossTerms,
    ) -> Result<(), TrainError> {
        self.write(
            serde_json::json!({"epoch": epoch, "batch": batch, "images": images, "loss": loss}),
        )
    }

    fn epoch(
        &mut self,
        record: &EpochRecord,
        seconds: f64,
        per_image: f64,
    ) -> Result<(), TrainError> {
        self.write(serde_json::json!({
            "epoch": record.epoch, "summary": true, "loss": record.loss, "images": record.samples,
            "skipped": record.skipped, "seconds": seconds, "seconds_per_image": per_image,
        }))
    }

    fn write(&mut self, line: serde_json::Value) -> Result<(), TrainError> {
        writeln!(self.file, "{line}").map_err(|e| {
            TrainError::Io(format!("writing the loss log {}: {e}", self.path.display()))
        })
    }
}
