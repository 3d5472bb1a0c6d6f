//! The model's own OS thread: it loads HeadCLIP, owns it for the life of the server (libtorch
//! tensors are not `Sync`), and scores images in dynamic batches taken off a bounded channel.
//!
//! A batch starts with the first image that arrives and closes when it holds `max_batch` images
//! or `batch_wait` has passed since it started, whichever comes first. Images whose request has
//! gone (client disconnected, timed out) are dropped before the model runs.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{
    sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use headclip::model::{HeadClip, ImageScore};
use tch::Tensor;
use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::engine::{load_model, ModelArgs};

/// What `/healthz` says about the model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// CLIP's architecture, e.g. `ViT-B/16`.
    pub model: String,
    /// The side S images are resized to.
    pub image_size: u32,
    /// `learned` (HeadCLIP parameters) or `training_free`.
    pub mode: headclip::model::PromptMode,
    /// Where the model runs.
    pub device: String,
}

/// One image's result from the model.
pub struct Scored {
    pub score: ImageScore,
    /// Images in the batch this one was scored in.
    pub batch_size: usize,
    /// Time from entering the queue to the batch starting.
    pub queue_ms: f64,
    /// Time the batch spent in the model.
    pub model_ms: f64,
}

/// One image waiting for the model: pre-processed pixels, CHW, S×S.
pub struct Job {
    pub pixels: Vec<f32>,
    pub reply: oneshot::Sender<Result<Scored, String>>,
    pub enqueued: Instant,
}

/// Why an image could not be queued.
#[derive(Debug)]
pub enum SubmitError {
    /// The channel is full (should not happen while admission is bounded by the same number).
    Full,
    /// The model thread has stopped.
    Stopped,
}

/// The handlers' side of the channel.
#[derive(Clone)]
pub struct Submitter {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl Submitter {
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        self.tx.try_send(job).map_err(|e| {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => SubmitError::Full,
                TrySendError::Disconnected(_) => SubmitError::Stopped,
            }
        })
    }
}

/// The running model thread.
pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Asks the thread to stop once idle and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Batching knobs.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub batch_wait: Duration,
    /// Capacity of the channel.
    pub capacity: usize,
}

/// Starts the thread, loads the model on it and returns once it is ready (or failed to load).
pub fn start(
    args: ModelArgs,
    batch: BatchConfig,
    metrics: Arc<Metrics>,
) -> Result<(ModelInfo, Submitter, Worker)> {
    let (tx, rx) = sync_channel::<Job>(batch.capacity.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<ModelInfo>>();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name("headclip-model".into())
            .spawn(move || {
                // Loaded here, not on the caller's thread: the model never changes threads, and
                // libtorch's thread settings apply to the thread that runs it.
                let model = match load_model(&args) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let info = ModelInfo {
                    model: model.clip.config.name(),
                    image_size: model.image_size() as u32,
                    mode: model.mode,
                    device: format!("{:?}", model.device()).to_lowercase(),
                };
                if ready_tx.send(Ok(info)).is_err() {
                    return;
                }
                run_loop(&model, &rx, batch, &stop, &metrics);
            })?
    };
    let info = ready_rx
        .recv()
        .map_err(|_| anyhow!("the model thread stopped while loading the model"))??;
    let worker = Worker {
        stop,
        thread: Some(thread),
    };
    Ok((info, Submitter { tx, metrics }, worker))
}

fn run_loop(
    model: &HeadClip,
    rx: &Receiver<Job>,
    cfg: BatchConfig,
    stop: &AtomicBool,
    metrics: &Metrics,
) {
    let side = model.image_size();
    let take = |job: Job, batch: &mut Vec<Job>| {
        metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        if !job.reply.is_closed() {
            batch.push(job);
        }
    };
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = Vec::with_capacity(cfg.max_batch);
        take(first, &mut batch);
        let deadline = Instant::now() + cfg.batch_wait;
        while batch.len() < cfg.max_batch {
            let next = match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    match rx.recv_timeout(deadline - now) {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                }
            };
            take(next, &mut batch);
        }
        batch.retain(|j| !j.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| score(model, &batch, side)));
        let elapsed = started.elapsed();
        let n = batch.len();
        match result {
            Ok(scores) if scores.len() == n => {
                metrics.record_batch(n, elapsed);
                for (job, score) in batch.into_iter().zip(scores) {
                    let queue_ms = started.duration_since(job.enqueued).as_secs_f64() * 1e3;
                    let _ = job.reply.send(Ok(Scored {
                        score,
                        batch_size: n,
                        queue_ms,
                        model_ms: elapsed.as_secs_f64() * 1e3,
                    }));
                }
            }
            other => {
                let message = match other {
                    Ok(scores) => {
                        format!("the model returned {} results for {n} images", scores.len())
                    }
                    Err(panic) => panic_message(&panic),
                };
                tracing::error!("scoring a batch of {n} failed: {message}");
                for job in batch {
                    let _ = job.reply.send(Err(format!("the model failed: {message}")));
                }
            }
        }
    }
}

fn score(model: &HeadClip, batch: &[Job], side: i64) -> Vec<ImageScore> {
    let flat: Vec<f32> = batch
        .iter()
        .flat_map(|j| j.pixels.iter().copied())
        .collect();
    let images = Tensor::from_slice(&flat).view([batch.len() as i64, 3, side, side]);
    model.score(&images)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}
