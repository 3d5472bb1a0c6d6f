//! Scoring many images: decoding workers run a few batches ahead of the model, so that the
//! cores the model leaves idle decode the next images; results come back in input order.

use std::ops::ControlFlow;
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::Instant;

use headclip_data::images::PreparedImage;

use super::{DetectError, Detection, Detector};

/// How [`Detector::detect_stream`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// Images scored together (at least 1).
    pub batch_size: usize,
    /// Threads that decode and pre-process ahead of the model (at least 1).
    pub workers: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            batch_size: 1,
            workers: 1,
        }
    }
}

/// Time spent in a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamStats {
    /// Images whose preparation succeeded and that were scored.
    pub scored: usize,
    /// Seconds inside the model (forward pass, smoothing, maps to the CPU).
    pub model_seconds: f64,
}

/// Why an item of a stream has no result.
#[derive(Debug)]
pub enum StreamFailure<E> {
    /// The caller's `prepare` failed.
    Prepare(E),
    /// The model gave no usable result.
    Score(DetectError),
}

/// An item on its way through the stream: prepared (with whatever the caller's `prepare` adds,
/// a mask say) or failed.
type Prepared<X, E> = Result<(PreparedImage, X), E>;

impl Detector {
    /// Scores `items` in order. `prepare` runs on [`StreamOptions::workers`] threads and turns
    /// an item into its pre-processed image plus anything the caller needs beside it (a mask);
    /// the successes are scored in batches of [`StreamOptions::batch_size`]; `sink` then gets
    /// each item's index and result, in input order, on the calling thread. A failure reaches
    /// `sink` as a [`StreamFailure`] and the stream goes on; `sink` returning
    /// [`ControlFlow::Break`] stops it (the workers stop too).
    pub fn detect_stream<T, X, E>(
        &self,
        items: &[T],
        options: &StreamOptions,
        prepare: impl Fn(&T) -> Prepared<X, E> + Sync,
        mut sink: impl FnMut(usize, Result<(Detection, X), StreamFailure<E>>) -> ControlFlow<()>,
    ) -> StreamStats
    where
        T: Sync,
        X: Send,
        E: Send,
    {
        let batch_size = options.batch_size.max(1);
        let workers = options.workers.clamp(1, items.len().max(1));
        let ahead = (2 * batch_size).div_ceil(workers).max(1);
        let mut stats = StreamStats::default();
        std::thread::scope(|scope| {
            // Worker w prepares items w, w + n, w + 2n, …; reading the channels round-robin
            // restores the order. A worker stops when its receiver is gone.
            let receivers: Vec<Receiver<Prepared<X, E>>> = (0..workers)
                .map(|w| {
                    let (tx, rx) = sync_channel(ahead);
                    let prepare = &prepare;
                    scope.spawn(move || {
                        for item in items.iter().skip(w).step_by(workers) {
                            if tx.send(prepare(item)).is_err() {
                                break;
                            }
                        }
                    });
                    rx
                })
                .collect();
            let mut pending = Pending::new(batch_size);
            for index in 0..items.len() {
                let Ok(item) = receivers[index % workers].recv() else {
                    break; // a worker panicked; the scope re-raises it
                };
                pending.push(index, item);
                let last = index + 1 == items.len();
                if (pending.full() || last) && pending.flush(self, &mut stats, &mut sink).is_break()
                {
                    break;
                }
            }
            drop(receivers);
        });
        stats
    }
}

/// Items waiting for a batch to fill, failures included so that results keep their order.
struct Pending<X, E> {
    batch_size: usize,
    items: Vec<(usize, Prepared<X, E>)>,
    ready: usize,
}

impl<X, E> Pending<X, E> {
    fn new(batch_size: usize) -> Self {
        Self {
            batch_size,
            items: Vec::with_capacity(batch_size),
            ready: 0,
        }
    }

    fn push(&mut self, index: usize, item: Prepared<X, E>) {
        self.ready += usize::from(item.is_ok());
        self.items.push((index, item));
    }

    fn full(&self) -> bool {
        self.ready >= self.batch_size
    }

    /// Scores the prepared images and hands every waiting item to `sink`, in order.
    fn flush(
        &mut self,
        detector: &Detector,
        stats: &mut StreamStats,
        sink: &mut impl FnMut(usize, Result<(Detection, X), StreamFailure<E>>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let items = std::mem::take(&mut self.items);
        self.ready = 0;
        let mut images = Vec::new();
        let mut waiting = Vec::with_capacity(items.len());
        for (index, item) in items {
            waiting.push(match item {
                Ok((image, extra)) => {
                    images.push(image);
                    (index, Ok(extra))
                }
                Err(e) => (index, Err(e)),
            });
        }
        let started = Instant::now();
        let mut detections = detector.score(images).into_iter();
        stats.model_seconds += started.elapsed().as_secs_f64();
        for (index, item) in waiting {
            let result = match item {
                Ok(extra) => {
                    stats.scored += 1;
                    match detections.next() {
                        Some(Ok(detection)) => Ok((detection, extra)),
                        Some(Err(e)) => Err(StreamFailure::Score(e)),
                        None => Err(StreamFailure::Score(DetectError::Model(
                            "missing result".into(),
                        ))),
                    }
                }
                Err(e) => Err(StreamFailure::Prepare(e)),
            };
            sink(index, result)?;
        }
        ControlFlow::Continue(())
    }
}
