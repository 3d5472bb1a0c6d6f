//! The model's own OS thread: it loads HeadCLIP, owns it for the life of the server (libtorch
//! tensors are not `Sync`), and scores images in dynamic batches taken off a bounded channel.
//!
//! A batch starts with the first image that arrives and closes when it holds `max_batch` images
//! or `batch_wait` has passed since it started, whichever comes first. Images whose request has
//! gone (client disconnected, timed out) are dropped before the model runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{
    sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use headclip::detector::{Detection, Detector, ModelInfo, ScoreIdentity};
use headclip_data::images::{DecodeLimits, PreparedImage, Preprocessor};
use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::engine::{load_detector, ModelArgs};

/// One image's result from the model.
pub struct Scored {
    pub detection: Detection,
    /// Images in the batch this one was scored in.
    pub batch_size: usize,
    /// Time from entering the queue to the batch starting.
    pub queue_ms: f64,
    /// Time the batch spent in the model.
    pub model_ms: f64,
}

/// One image waiting for the model.
pub struct Job {
    pub image: PreparedImage,
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
    /// Cleared when the model thread ends, however it ends (a panic included).
    running: Arc<AtomicBool>,
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

    /// Whether the model thread is still there to score images.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}

/// Clears the running flag when dropped, on the model thread's way out.
struct ClearOnExit(Arc<AtomicBool>);

impl Drop for ClearOnExit {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
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

/// The loaded model, as the handlers see it.
pub struct Ready {
    pub info: ModelInfo,
    /// The model's decode and pre-process stage, run by the handlers.
    pub preprocessor: Preprocessor,
    /// What its scores depend on, when asked for (to check a calibration against).
    pub identity: Option<Result<ScoreIdentity, String>>,
}

/// Starts the thread, loads the model on it and returns once it is ready (or failed to load).
pub fn start(
    args: ModelArgs,
    limits: DecodeLimits,
    batch: BatchConfig,
    metrics: Arc<Metrics>,
    want_identity: bool,
) -> Result<(Ready, Submitter, Worker)> {
    let (tx, rx) = sync_channel::<Job>(batch.capacity.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Ready>>();
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(true));
    let thread = {
        let stop = stop.clone();
        let metrics = metrics.clone();
        let running = ClearOnExit(running.clone());
        std::thread::Builder::new()
            .name("headclip-model".into())
            .spawn(move || {
                let _running = running;
                // Loaded here, not on the caller's thread: the model never changes threads, and
                // libtorch's thread settings apply to the thread that runs it.
                let detector = match load_detector(&args) {
                    Ok(d) => d.with_limits(limits),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let ready = Ready {
                    info: detector.info(),
                    preprocessor: *detector.preprocessor(),
                    identity: want_identity
                        .then(|| detector.score_identity().map_err(|e| e.to_string())),
                };
                if ready_tx.send(Ok(ready)).is_err() {
                    return;
                }
                run_loop(&detector, &rx, batch, &stop, &metrics);
            })?
    };
    let ready = ready_rx
        .recv()
        .map_err(|_| anyhow!("the model thread stopped while loading the model"))??;
    let worker = Worker {
        stop,
        thread: Some(thread),
    };
    let submitter = Submitter {
        tx,
        metrics,
        running,
    };
    Ok((ready, submitter, worker))
}

fn run_loop(
    detector: &Detector,
    rx: &Receiver<Job>,
    cfg: BatchConfig,
    stop: &AtomicBool,
    metrics: &Metrics,
) {
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let batch = fill_batch(first, rx, cfg, metrics);
        if !batch.is_empty() {
            score_and_answer(detector, batch, metrics);
        }
    }
}

/// The jobs that arrive within `batch_wait` of the first, up to `max_batch`, less those whose
/// request has gone.
fn fill_batch(first: Job, rx: &Receiver<Job>, cfg: BatchConfig, metrics: &Metrics) -> Vec<Job> {
    let mut batch = Vec::with_capacity(cfg.max_batch);
    let deadline = Instant::now() + cfg.batch_wait;
    let mut next = Some(first);
    while let Some(job) = next.take() {
        metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        if !job.reply.is_closed() {
            batch.push(job);
        }
        if batch.len() >= cfg.max_batch {
            break;
        }
        next = match rx.try_recv() {
            Ok(job) => Some(job),
            Err(TryRecvError::Disconnected) => None,
            Err(TryRecvError::Empty) => {
                let left = deadline.saturating_duration_since(Instant::now());
                (!left.is_zero())
                    .then(|| rx.recv_timeout(left).ok())
                    .flatten()
            }
        };
    }
    batch.retain(|j| !j.reply.is_closed());
    batch
}

fn score_and_answer(detector: &Detector, batch: Vec<Job>, metrics: &Metrics) {
    let started = Instant::now();
    let (jobs, images): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|job| ((job.reply, job.enqueued), job.image))
        .unzip();
    let results = detector.score(images);
    let elapsed = started.elapsed();
    let n = jobs.len();
    metrics.record_batch(n, elapsed);
    for ((reply, enqueued), result) in jobs.into_iter().zip(results) {
        let answer = result
            .map(|detection| Scored {
                detection,
                batch_size: n,
                queue_ms: started.duration_since(enqueued).as_secs_f64() * 1e3,
                model_ms: elapsed.as_secs_f64() * 1e3,
            })
            .map_err(|e| {
                tracing::error!("scoring an image failed: {e}");
                e.to_string()
            });
        let _ = reply.send(answer);
    }
}
