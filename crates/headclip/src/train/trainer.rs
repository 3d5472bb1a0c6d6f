//! The training loop: deterministic epochs over a data set, Adam, and checkpoints that survive
//! faults. After every epoch the deployable parameters file and a separate training-state file
//! (parameters, optimizer moments, epoch, seed, losses) are each written atomically. The state
//! can also be written between batches ([`Trainer::save_state`]): it then records how far the
//! epoch got, and a resumed run continues with the next batch. A resumed run reads only the
//! state file, so on the CPU with the same seed and thread count it reaches the same parameters
//! bit for bit as a run that was never interrupted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::adam::Adam;
use super::loss::LossTerms;
use super::step::{loss_and_gradients, trainable, Batch, LossSelection};
use crate::clip::{Clip, ClipTokenizer};
use crate::model::{serialize_f32, HeadClipConfig, HeadClipParams, ResolvedConfig};

/// One training example after decoding: a normalised CHW image and its S×S 0/1 mask.
pub struct TrainSample {
    pub image: Vec<f32>,
    pub mask: Vec<u8>,
    pub anomalous: bool,
    /// Whether `mask` is ground truth (see [`Batch::mask_known`]).
    pub mask_known: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub seed: u64,
    pub loss: LossSelection,
    /// With `lhw_paths = both`: recompute each two-path block in the backward pass instead of
    /// keeping the whole trunk's activations.
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 15,
            batch_size: 8,
            lr: 1e-3,
            beta1: 0.5,
            beta2: 0.999,
            seed: 111,
            loss: LossSelection::default(),
            gradient_checkpointing: false,
        }
    }
}

/// The most epochs, batches of a size, Adam steps a run or a training state may ask for.
pub const MAX_EPOCHS: usize = 100_000;
pub const MAX_BATCH_SIZE: usize = 4096;
/// Adam's bias correction raises β to the step as an `i32`.
pub const MAX_ADAM_STEP: i64 = i32::MAX as i64;
pub const MAX_JOINT_WEIGHT: f64 = 100.0;

impl TrainOptions {
    /// Every option within its range; an error names the option and the range.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return Err(format!(
                "epochs {} is outside 1..={MAX_EPOCHS}",
                self.epochs
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(format!(
                "batch_size {} is outside 1..={MAX_BATCH_SIZE}",
                self.batch_size
            ));
        }
        // Any finite positive rate is a legitimate choice; one that diverges is stopped by the
        // non-finite check of every batch.
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("lr {} must be a finite number > 0", self.lr));
        }
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(format!("{name} {beta} is outside [0, 1)"));
            }
        }
        let joint = self.loss.joint_weight;
        if !(0.0..=MAX_JOINT_WEIGHT).contains(&joint) {
            return Err(format!(
                "joint_weight {joint} is outside [0, {MAX_JOINT_WEIGHT}]"
            ));
        }
        Ok(())
    }
}

/// Mean loss terms of an epoch, with how many samples went into it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: LossTerms,
    pub samples: usize,
    pub skipped: usize,
}

/// How far the current epoch has got: the batches done and the running sums of their losses.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EpochProgress {
    /// Batches of the epoch's order passed, including any whose every sample was unreadable.
    pub batches_done: usize,
    /// Batches trained on (the divisor of the epoch's mean losses).
    pub batches_trained: usize,
    pub loss_sums: LossTerms,
    pub samples: usize,
    pub skipped: usize,
}

/// What goes into the training-state file's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateMeta {
    pub epochs_done: usize,
    pub adam_step: i64,
    pub options: TrainOptions,
    pub config: HeadClipConfig,
    pub history: Vec<EpochRecord>,
    /// Free-form provenance (data sets, CLIP sha256, command line).
    pub provenance: BTreeMap<String, String>,
    /// The epoch after `epochs_done`, when the state was written between its batches.
    #[serde(default)]
    pub in_epoch: Option<EpochProgress>,
}

impl StateMeta {
    /// The counters and options within their ranges; an error names the field and the range.
    pub fn check(&self) -> Result<(), String> {
        self.options.check()?;
        if !(0..=MAX_ADAM_STEP).contains(&self.adam_step) {
            return Err(format!(
                "adam_step {} is outside 0..={MAX_ADAM_STEP}",
                self.adam_step
            ));
        }
        if self.epochs_done > MAX_EPOCHS {
            return Err(format!(
                "epochs_done {} is outside 0..={MAX_EPOCHS}",
                self.epochs_done
            ));
        }
        if let Some(p) = &self.in_epoch {
            if p.batches_trained > p.batches_done {
                return Err(format!(
                    "in_epoch: batches_trained {} is more than batches_done {}",
                    p.batches_trained, p.batches_done
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training state {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error(transparent)]
    Params(#[from] crate::model::ParamsError),
    #[error(transparent)]
    Tokenize(#[from] crate::clip::TokenizeError),
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Io(String),
    #[error("training option {0}")]
    Options(String),
    /// The loss or a parameter stopped being finite: the run cannot go on, and nothing more is
    /// written (the files of the last good epoch or checkpoint stay as they were).
    #[error(
        "training diverged in epoch {epoch}, batch {batch}: {what} is not finite (NaN or \
         infinity); nothing was saved from this batch on, the files of the last good epoch or \
         checkpoint are unchanged (try a smaller learning rate)"
    )]
    NonFinite {
        epoch: usize,
        batch: usize,
        what: String,
    },
}

pub struct Trainer<'a> {
    pub clip: &'a Clip,
    pub config: ResolvedConfig,
    pub file_config: HeadClipConfig,
    pub params: HeadClipParams,
    pub adam: Adam,
    pub options: TrainOptions,
    pub epochs_done: usize,
    pub history: Vec<EpochRecord>,
    pub provenance: BTreeMap<String, String>,
    /// The epoch under way (empty between epochs).
    pub progress: EpochProgress,
    tokenizer: ClipTokenizer,
}

const STATE_KEY: &str = "headclip.training_state";

impl<'a> Trainer<'a> {
    /// A fresh run from the untrained starting point (seeded).
    pub fn new(
        clip: &'a Clip,
        file_config: HeadClipConfig,
        options: TrainOptions,
        deep_prompts: usize,
    ) -> Result<Self, TrainError> {
        options.check().map_err(TrainError::Options)?;
        let config = file_config
            .resolve(&clip.config)
            .map_err(crate::model::ParamsError::from)?;
        tch::manual_seed(options.seed as i64);
        let params =
            HeadClipParams::init(&clip.config, &config, deep_prompts).to_device(clip.text.device());
        Ok(Self::assemble(
            clip,
            config,
            file_config,
            params,
            options,
            None,
            0,
            Vec::new(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        clip: &'a Clip,
        config: ResolvedConfig,
        file_config: HeadClipConfig,
        params: HeadClipParams,
        options: TrainOptions,
        adam: Option<Adam>,
        epochs_done: usize,
        history: Vec<EpochRecord>,
    ) -> Self {
        for (_, t) in trainable(&params) {
            let _ = t.set_requires_grad(true);
        }
        let adam = adam.unwrap_or_else(|| {
            let tensors: Vec<&Tensor> = trainable(&params).into_iter().map(|(_, t)| t).collect();
            Adam::new(&tensors, options.lr, options.beta1, options.beta2)
        });
        Self {
            clip,
            config,
            file_config,
            params,
            adam,
            options,
            epochs_done,
            history,
            provenance: BTreeMap::new(),
            progress: EpochProgress::default(),
            tokenizer: ClipTokenizer::new(),
        }
    }

    /// The sample order of an epoch: a Fisher–Yates shuffle seeded by (seed, epoch), so that a
    /// resumed run sees the same order as an uninterrupted one.
    pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
        let mut state = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move || {
            // splitmix64
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        order
    }

    /// One batch: loss, gradients, Adam update. A non-finite loss is refused before the update,
    /// a non-finite parameter or moment after it ([`TrainError::NonFinite`]); the trainer must
    /// then not be saved.
    pub fn train_batch(&mut self, samples: &[TrainSample]) -> Result<LossTerms, TrainError> {
        let batch = self.make_batch(samples);
        let terms = loss_and_gradients(
            self.clip,
            &self.tokenizer,
            &self.config,
            &self.params,
            &batch,
            self.options.loss,
            self.options.gradient_checkpointing,
        )?;
        let (epoch, batch_no) = (self.epochs_done + 1, self.progress.batches_done.max(1));
        let diverged = |what: String| TrainError::NonFinite {
            epoch,
            batch: batch_no,
            what,
        };
        let LossTerms {
            total,
            ce,
            focal,
            dice,
            joint,
        } = terms;
        if ![total, ce, focal, dice, joint]
            .iter()
            .all(|v| v.is_finite())
        {
            return Err(diverged(format!(
                "the loss (total {total}, ce {ce}, focal {focal}, dice {dice}, joint {joint})"
            )));
        }
        let tensors: Vec<&Tensor> = trainable(&self.params)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        self.adam.step(&tensors);
        if let Some(what) = self.first_non_finite() {
            return Err(diverged(what));
        }
        Ok(terms)
    }

    /// The first trainable parameter or Adam moment with a NaN or infinite value, described.
    pub fn first_non_finite(&self) -> Option<String> {
        for (i, (name, t)) in trainable(&self.params).into_iter().enumerate() {
            for (what, tensor) in [
                ("parameter", t),
                ("Adam's first moment of", &self.adam.m[i]),
                ("Adam's second moment of", &self.adam.v[i]),
            ] {
                let bad = crate::non_finite_count(tensor);
                if bad > 0 {
                    return Some(format!(
                        "{what} `{name}` ({bad} of {} values)",
                        tensor.numel()
                    ));
                }
            }
        }
        None
    }

    fn make_batch(&self, samples: &[TrainSample]) -> Batch {
        let device = self.clip.text.device();
        let s = self.config.image_size;
        let b = samples.len() as i64;
        let images: Vec<f32> = samples
            .iter()
            .flat_map(|x| x.image.iter().copied())
            .collect();
        let masks: Vec<f32> = samples
            .iter()
            .flat_map(|x| x.mask.iter().map(|&m| f32::from(m.min(1))))
            .collect();
        let labels: Vec<i64> = samples.iter().map(|x| i64::from(x.anomalous)).collect();
        Batch {
            mask_known: samples.iter().map(|x| x.mask_known).collect(),
            images: Tensor::from_slice(&images)
                .view([b, 3, s, s])
                .to_device(device),
            labels: Tensor::from_slice(&labels).to_device(device),
            masks: Tensor::from_slice(&masks).view([b, s, s]).to_device(device),
        }
    }

    /// Trains the next batch of the current epoch over `n` samples, loading each with `load` (a
    /// sample that fails to load is skipped and reported through `on_skip`). Returns the number
    /// of images trained on and the batch's loss, or `None` once every batch of the epoch is
    /// done; then [`Trainer::finish_epoch`] closes it.
    pub fn next_batch(
        &mut self,
        n: usize,
        load: &(dyn Fn(usize) -> Result<TrainSample, String> + Sync),
        on_skip: &mut dyn FnMut(usize, &str),
    ) -> Result<Option<(usize, LossTerms)>, TrainError> {
        let order = Self::epoch_order(self.options.seed, self.epochs_done, n);
        loop {
            let Some(chunk) = order
                .chunks(self.options.batch_size)
                .nth(self.progress.batches_done)
            else {
                return Ok(None);
            };
            let mut samples = Vec::with_capacity(chunk.len());
            for &i in chunk {
                match load(i) {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        self.progress.skipped += 1;
                        on_skip(i, &e);
                    }
                }
            }
            self.progress.batches_done += 1;
            if samples.is_empty() {
                continue;
            }
            let terms = self.train_batch(&samples)?;
            self.progress.loss_sums.accumulate(&terms);
            self.progress.samples += samples.len();
            self.progress.batches_trained += 1;
            return Ok(Some((samples.len(), terms)));
        }
    }

    /// Closes the epoch whose batches [`Trainer::next_batch`] has run: its mean losses go into
    /// the history.
    pub fn finish_epoch(&mut self) -> Result<EpochRecord, TrainError> {
        let progress = std::mem::take(&mut self.progress);
        if progress.samples == 0 {
            return Err(TrainError::Data(
                "no training sample could be loaded in this epoch".into(),
            ));
        }
        let record = EpochRecord {
            epoch: self.epochs_done + 1,
            loss: progress.loss_sums.mean_of(progress.batches_trained),
            samples: progress.samples,
            skipped: progress.skipped,
        };
        self.epochs_done += 1;
        self.history.push(record.clone());
        Ok(record)
    }

    /// Runs the rest of the current epoch (all of it when none has run yet); `on_batch` sees each
    /// batch's size and loss.
    pub fn run_epoch(
        &mut self,
        n: usize,
        load: &(dyn Fn(usize) -> Result<TrainSample, String> + Sync),
        on_batch: &mut dyn FnMut(usize, &LossTerms),
        on_skip: &mut dyn FnMut(usize, &str),
    ) -> Result<EpochRecord, TrainError> {
        while let Some((images, terms)) = self.next_batch(n, load, on_skip)? {
            on_batch(images, &terms);
        }
        self.finish_epoch()
    }

    /// Writes the deployable parameters and, beside them, the training state; each atomically.
    /// The state goes first: a crash between the two leaves a state that is ahead of the
    /// parameters file, which a resume then rewrites, never the other way round.
    pub fn save(&self, params_path: &Path, state_path: &Path) -> Result<(), TrainError> {
        self.save_state(state_path)?;
        let mut extra = self.provenance.clone();
        extra.insert("headclip.epochs".into(), self.epochs_done.to_string());
        extra.insert(
            "headclip.losses".into(),
            serde_json::to_string(&self.history).map_err(|e| TrainError::State {
                path: state_path.into(),
                message: e.to_string(),
            })?,
        );
        extra.insert(
            "headclip.train_options".into(),
            serde_json::to_string(&self.options).unwrap_or_default(),
        );
        self.params.save(params_path, &self.file_config, &extra)?;
        Ok(())
    }

    /// Writes the training state alone, atomically: between epochs, or between the batches of
    /// one (then with how far the epoch got). The deployable parameters file keeps the last
    /// complete epoch.
    pub fn save_state(&self, state_path: &Path) -> Result<(), TrainError> {
        let state_err = |message: String| TrainError::State {
            path: state_path.into(),
            message,
        };
        // Never replace a good state with a broken one.
        if let Some(what) = self.first_non_finite() {
            return Err(TrainError::NonFinite {
                epoch: self.epochs_done + 1,
                batch: self.progress.batches_done,
                what,
            });
        }
        let meta = StateMeta {
            epochs_done: self.epochs_done,
            adam_step: self.adam.step,
            options: self.options.clone(),
            config: self.file_config.clone(),
            history: self.history.clone(),
            provenance: self.provenance.clone(),
            in_epoch: (self.progress.batches_done > 0).then(|| self.progress.clone()),
        };
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (i, (name, t)) in trainable(&self.params).into_iter().enumerate() {
            named.push((format!("param.{name}"), t.detach()));
            named.push((format!("adam.m.{name}"), self.adam.m[i].shallow_clone()));
            named.push((format!("adam.v.{name}"), self.adam.v[i].shallow_clone()));
        }
        let json = serde_json::to_string(&meta).map_err(|e| state_err(e.to_string()))?;
        let bytes = serialize_f32(&named, HashMap::from([(STATE_KEY.to_string(), json)]))
            .map_err(state_err)?;
        crate::write_atomically(state_path, &bytes).map_err(|e| state_err(e.to_string()))
    }

    /// Continues a run from its training-state file.
    pub fn resume(clip: &'a Clip, state_path: &Path) -> Result<Self, TrainError> {
        let state_err = |message: String| TrainError::State {
            path: state_path.into(),
            message,
        };
        let bytes = std::fs::read(state_path).map_err(|e| state_err(e.to_string()))?;
        let meta = read_state_meta(&bytes).map_err(state_err)?;
        let config = meta
            .config
            .resolve(&clip.config)
            .map_err(|e| state_err(format!("metadata `{STATE_KEY}`: config: {e}")))?;
        let tensors = StateTensors {
            st: safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| state_err(e.to_string()))?,
            device: clip.text.device(),
        };
        let params = tensors.params(config.lhw_dynamic).map_err(state_err)?;
        let expected_rows = config.lhw_rows(clip.vision.config.layers) as i64;
        if params.theta.size()[0] != expected_rows
            || params.ctx_pos.size()[1] != clip.text.config.width
        {
            return Err(state_err(
                "its tensors do not fit this CLIP backbone".into(),
            ));
        }
        let adam = tensors.adam(&params, &meta).map_err(state_err)?;
        let mut trainer = Self::assemble(
            clip,
            config,
            meta.config,
            params,
            meta.options,
            Some(adam),
            meta.epochs_done,
            meta.history,
        );
        trainer.provenance = meta.provenance;
        trainer.progress = meta.in_epoch.unwrap_or_default();
        Ok(trainer)
    }
}

/// The checked metadata of a training-state file.
fn read_state_meta(bytes: &[u8]) -> Result<StateMeta, String> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| format!("no `{STATE_KEY}` metadata: not a training-state file"))?;
    let meta: StateMeta = serde_json::from_str(json).map_err(|e| e.to_string())?;
    meta.check()
        .map_err(|e| format!("metadata `{STATE_KEY}`: {e}"))?;
    Ok(meta)
}

/// The tensors of a training-state file, read as checked f32 on the training device.
struct StateTensors<'b> {
    st: safetensors::SafeTensors<'b>,
    device: tch::Device,
}

impl StateTensors<'_> {
    fn get(&self, name: &str) -> Result<Tensor, String> {
        let view = self
            .st
            .tensor(name)
            .map_err(|_| format!("missing tensor `{name}`"))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!(
                "tensor `{name}` has dtype {:?}, expected F32",
                view.dtype()
            ));
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, Kind::Float)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        let bad = crate::non_finite_count(&t);
        if bad > 0 {
            return Err(format!(
                "tensor `{name}` has {bad} non-finite values (NaN or infinity) of {}",
                t.numel()
            ));
        }
        Ok(t.to_device(self.device))
    }

    fn params(&self, dynamic: bool) -> Result<HeadClipParams, String> {
        let deep_count = self
            .st
            .names()
            .iter()
            .filter(|n| n.starts_with("param.prompt.deep."))
            .count();
        Ok(HeadClipParams {
            ctx_pos: self.get("param.prompt.ctx_pos")?,
            ctx_neg: self.get("param.prompt.ctx_neg")?,
            deep: (0..deep_count)
                .map(|i| self.get(&format!("param.prompt.deep.{i}")))
                .collect::<Result<_, _>>()?,
            theta: self.get("param.lhw.theta")?,
            u: if dynamic {
                Some(self.get("param.lhw.u")?)
            } else {
                None
            },
        })
    }

    /// Adam with its step and the moments of every trainable tensor of `params`.
    fn adam(&self, params: &HeadClipParams, meta: &StateMeta) -> Result<Adam, String> {
        let o = &meta.options;
        let mut adam = Adam::new(&[], o.lr, o.beta1, o.beta2);
        adam.step = meta.adam_step;
        for (name, _) in trainable(params) {
            adam.m.push(self.get(&format!("adam.m.{name}"))?);
            adam.v.push(self.get(&format!("adam.v.{name}"))?);
        }
        Ok(adam)
    }
}
