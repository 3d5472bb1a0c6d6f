//! The evaluation loop: decode ahead on worker threads, score in batches, accumulate per
//! category, compute metrics when a category ends.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::Instant;

use tch::Tensor;

use super::curves::PixelHistogram;
use super::{CategoryResult, DatasetResult, MetricSet};
use headclip_data::images::{self, DataError, DecodeLimits, Mask};
use headclip_data::datasets::{Category, Dataset, Sample};
use headclip_metrics::{image_metrics, MetricsError, PixelAccumulator};
use crate::model::{HeadClip, ImageScore};

/// How [`evaluate`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalOptions {
    /// Images per forward pass (at least 1).
    pub batch_size: usize,
    /// Threads that decode and pre-process images ahead of the model (at least 1).
    pub decode_threads: usize,
    /// Refuse images and masks larger than this before decoding them.
    pub limits: DecodeLimits,
    /// Fill a [`PixelHistogram`] per category with masks, for pixel-level curves
    /// ([`CategoryDone::pixel_histogram`]).
    pub pixel_curves: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            batch_size: 1,
            decode_threads: 1,
            limits: DecodeLimits::default(),
            pixel_curves: false,
        }
    }
}

/// What an [`EvalObserver`] may fail with; it stops the evaluation.
pub type ObserverError = Box<dyn std::error::Error + Send + Sync>;

/// Why an evaluation stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// An image or mask could not be read or decoded (the loader only checks headers).
    #[error("{}: {error}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// Why.
        error: DataError,
    },
    /// A score or map value was not finite, or a map and mask disagreed in size.
    #[error("{}: {error}", image.display())]
    Metrics {
        /// The image whose values were rejected.
        image: PathBuf,
        /// Why.
        error: MetricsError,
    },
    /// The options make no sense (a batch size of 0, say).
    #[error("invalid evaluation option: {0}")]
    Options(String),
    /// The observer gave up (a file it writes could not be written, say).
    #[error(transparent)]
    Observer(ObserverError),
}

/// One image's scores, as kept for the category's image metrics and curves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageRecord {
    /// The joint anomaly score.
    pub score: f32,
    /// `s_g`.
    pub global_score: f32,
    /// `s_p`.
    pub pixel_score: f32,
    /// The image's label.
    pub anomalous: bool,
}

/// An image just scored, as an [`EvalObserver`] sees it.
pub struct ScoredImage<'a> {
    /// Index of the data set among those evaluated.
    pub dataset_index: usize,
    /// The data set.
    pub dataset: &'a Dataset,
    /// Index of the category in the data set.
    pub category_index: usize,
    /// The category.
    pub category: &'a Category,
    /// Index of the sample in the category.
    pub sample_index: usize,
    /// The sample.
    pub sample: &'a Sample,
    /// Its scores and S×S map.
    pub score: &'a ImageScore,
    /// Its S×S mask, where pixel metrics are computed and the sample has a mask file.
    pub mask: Option<&'a Mask>,
    /// The image's width and height as decoded.
    pub image_size: (u32, u32),
}

/// A category just finished, as an [`EvalObserver`] sees it.
pub struct CategoryDone<'a> {
    /// Index of the data set among those evaluated.
    pub dataset_index: usize,
    /// The data set.
    pub dataset: &'a Dataset,
    /// Index of the category in the data set.
    pub category_index: usize,
    /// The category.
    pub category: &'a Category,
    /// Its figures.
    pub result: &'a CategoryResult,
    /// Every sample's scores, in sample order.
    pub images: &'a [ImageRecord],
    /// The pixel-value histogram, with [`EvalOptions::pixel_curves`] where pixel metrics are
    /// defined.
    pub pixel_histogram: Option<&'a PixelHistogram>,
}

/// Watches an evaluation; both methods run on the calling thread, in order.
pub trait EvalObserver {
    /// Called for every image after it is scored, in data set, category and sample order.
    fn image(&mut self, _image: &ScoredImage<'_>) -> Result<(), ObserverError> {
        Ok(())
    }

    /// Called when a category's metrics are computed, after its last [`EvalObserver::image`].
    fn category_done(&mut self, _done: &CategoryDone<'_>) -> Result<(), ObserverError> {
        Ok(())
    }
}

/// An observer that does nothing.
impl EvalObserver for () {}

/// The figures of a whole evaluation.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// One entry per data set, in the order given.
    pub datasets: Vec<DatasetResult>,
    /// Images scored.
    pub images: usize,
    /// Wall-clock seconds of the whole loop.
    pub seconds: f64,
    /// Seconds inside the model (forward pass, smoothing).
    pub model_seconds: f64,
    /// Seconds computing metrics.
    pub metrics_seconds: f64,
}

/// A decoded, pre-processed sample on its way to the model.
struct Decoded {
    pixels: Vec<f32>,
    mask: Option<Mask>,
    size: (u32, u32),
}

/// Position of a sample: (data set, category, sample).
type Position = (usize, usize, usize);

fn decode(
    sample: &Sample,
    want_mask: bool,
    side: u32,
    limits: &DecodeLimits,
) -> Result<Decoded, EvalError> {
    let img = data::read_rgb(&sample.image, limits).map_err(|error| EvalError::Data {
        path: sample.image.clone(),
        error,
    })?;
    let size = (img.width, img.height);
    let pixels = data::preprocess(&img, side);
    drop(img);
    let mask = match (&sample.mask, want_mask) {
        (Some(path), true) => {
            Some(
                data::read_mask(path, side, limits).map_err(|error| EvalError::Data {
                    path: path.clone(),
                    error,
                })?,
            )
        }
        _ => None,
    };
    Ok(Decoded { pixels, mask, size })
}

/// The category being scored.
struct Current {
    position: (usize, usize),
    records: Vec<ImageRecord>,
    pixels: Option<PixelAccumulator>,
    histogram: Option<PixelHistogram>,
    started: Instant,
}

/// Scores every image of `datasets` with `model` and computes the protocol's figures per
/// category (image AUROC / AP / F1-max where both classes are present, pixel AUROC / AP /
/// F1-max and both AUPROs where the category has masks), and per data set their means.
///
/// Images are decoded on [`EvalOptions::decode_threads`] threads, a few batches ahead of the
/// model; masks are decoded at the model's side S (resized from whatever size they have).
/// `observer` sees each scored image and each finished category.
///
/// # Errors
/// The first image or mask that cannot be decoded, a non-finite score or map value, or an
/// observer's error stops the evaluation; no partial figures are returned.
pub fn evaluate(
    model: &HeadClip,
    datasets: &[Dataset],
    options: &EvalOptions,
    observer: &mut dyn EvalObserver,
) -> Result<Evaluation, EvalError> {
    if options.batch_size == 0 {
        return Err(EvalError::Options("batch size must be at least 1".into()));
    }
    if options.decode_threads == 0 {
        return Err(EvalError::Options(
            "decode threads must be at least 1".into(),
        ));
    }
    let started = Instant::now();
    let side = model.image_size() as u32;
    let positions: Vec<Position> = datasets
        .iter()
        .enumerate()
        .flat_map(|(d, ds)| {
            ds.categories
                .iter()
                .enumerate()
                .flat_map(move |(c, cat)| (0..cat.samples.len()).map(move |s| (d, c, s)))
        })
        .collect();
    let workers = options.decode_threads.min(positions.len().max(1));
    let ahead = (2 * options.batch_size).div_ceil(workers).max(1);
    let limits = options.limits;

    std::thread::scope(|scope| {
        // Worker w decodes positions w, w + n, w + 2n, ...; reading the channels round-robin
        // restores the order.
        let receivers: Vec<Receiver<Result<Decoded, EvalError>>> = (0..workers)
            .map(|w| {
                let (tx, rx) = sync_channel(ahead);
                let positions = &positions;
                scope.spawn(move || {
                    for &(d, c, s) in positions.iter().skip(w).step_by(workers) {
                        let category = &datasets[d].categories[c];
                        let item = decode(
                            &category.samples[s],
                            category.pixel_metrics_defined(),
                            side,
                            &limits,
                        );
                        let failed = item.is_err();
                        if tx.send(item).is_err() || failed {
                            break;
                        }
                    }
                });
                rx
            })
            .collect();
        let mut state = Loop {
            model,
            datasets,
            options,
            observer,
            current: None,
            results: datasets.iter().map(|_| Vec::new()).collect(),
            model_seconds: 0.0,
            metrics_seconds: 0.0,
        };
        let mut batch: Vec<(Position, Decoded)> = Vec::with_capacity(options.batch_size);
        for (i, &position) in positions.iter().enumerate() {
            let item = receivers[i % workers].recv().map_err(|_| {
                EvalError::Options("a decoding thread stopped unexpectedly".into())
            })??;
            batch.push((position, item));
            if batch.len() == options.batch_size || i + 1 == positions.len() {
                state.score_batch(std::mem::take(&mut batch), side)?;
            }
        }
        state.finish_category()?;
        let Loop {
            results,
            model_seconds,
            metrics_seconds,
            ..
        } = state;
        let datasets = datasets
            .iter()
            .zip(results)
            .map(|(ds, cats)| DatasetResult::new(ds, cats))
            .collect();
        Ok(Evaluation {
            datasets,
            images: positions.len(),
            seconds: started.elapsed().as_secs_f64(),
            model_seconds,
            metrics_seconds,
        })
    })
}

struct Loop<'a, 'o> {
    model: &'a HeadClip,
    datasets: &'a [Dataset],
    options: &'a EvalOptions,
    observer: &'o mut dyn EvalObserver,
    current: Option<Current>,
    results: Vec<Vec<CategoryResult>>,
    model_seconds: f64,
    metrics_seconds: f64,
}

impl Loop<'_, '_> {
    fn score_batch(&mut self, batch: Vec<(Position, Decoded)>, side: u32) -> Result<(), EvalError> {
        let s = side as i64;
        let t = Instant::now();
        let scores = {
            let mut flat = Vec::with_capacity(batch.len() * batch[0].1.pixels.len());
            for (_, d) in &batch {
                flat.extend_from_slice(&d.pixels);
            }
            let images = Tensor::from_slice(&flat).view([batch.len() as i64, 3, s, s]);
            drop(flat);
            self.model.score(&images)
        };
        self.model_seconds += t.elapsed().as_secs_f64();
        for ((position, decoded), score) in batch.into_iter().zip(scores) {
            self.add(position, decoded, score, side)?;
        }
        Ok(())
    }

    fn add(
        &mut self,
        (d, c, s): Position,
        decoded: Decoded,
        score: ImageScore,
        side: u32,
    ) -> Result<(), EvalError> {
        if self.current.as_ref().map(|cur| cur.position) != Some((d, c)) {
            self.finish_category()?;
            let category = &self.datasets[d].categories[c];
            let pixels = category.pixel_metrics_defined().then(|| {
                let mut acc = PixelAccumulator::new(side as usize);
                acc.reserve_images(category.samples.len());
                acc
            });
            let histogram = (self.options.pixel_curves && category.pixel_metrics_defined())
                .then(PixelHistogram::new);
            self.current = Some(Current {
                position: (d, c),
                records: Vec::with_capacity(category.samples.len()),
                pixels,
                histogram,
                started: Instant::now(),
            });
        }
        let dataset = &self.datasets[d];
        let category = &dataset.categories[c];
        let sample = &category.samples[s];
        let cur = self.current.as_mut().expect("a current category");
        if !score.score.is_finite() {
            return Err(EvalError::Metrics {
                image: sample.image.clone(),
                error: MetricsError::NonFinite {
                    what: "score",
                    index: 0,
                },
            });
        }
        if let Some(acc) = cur.pixels.as_mut() {
            let zeros;
            let mask: &[u8] = match &decoded.mask {
                Some(m) => &m.values,
                None => {
                    zeros = vec![0u8; score.map.len()];
                    &zeros
                }
            };
            acc.add(&score.map, mask)
                .map_err(|error| EvalError::Metrics {
                    image: sample.image.clone(),
                    error,
                })?;
            if let Some(h) = cur.histogram.as_mut() {
                h.add(
                    &score.map,
                    decoded.mask.as_ref().map(|m| m.values.as_slice()),
                );
            }
        }
        cur.records.push(ImageRecord {
            score: score.score,
            global_score: score.global_score,
            pixel_score: score.pixel_score,
            anomalous: sample.anomalous,
        });
        let seen = ScoredImage {
            dataset_index: d,
            dataset,
            category_index: c,
            category,
            sample_index: s,
            sample,
            score: &score,
            mask: decoded.mask.as_ref(),
            image_size: decoded.size,
        };
        self.observer.image(&seen).map_err(EvalError::Observer)
    }

    fn finish_category(&mut self) -> Result<(), EvalError> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let (d, c) = cur.position;
        let dataset = &self.datasets[d];
        let category = &dataset.categories[c];
        let t = Instant::now();
        let image = if category.image_metrics_defined() {
            let scores: Vec<f32> = cur.records.iter().map(|r| r.score).collect();
            let labels: Vec<bool> = cur.records.iter().map(|r| r.anomalous).collect();
            Some(
                image_metrics(&scores, &labels).map_err(|error| EvalError::Metrics {
                    image: dataset.root.clone(),
                    error,
                })?,
            )
        } else {
            None
        };
        let (pixel, pixels, regions) = match cur.pixels {
            Some(acc) => {
                let (pixels, regions) = (acc.pixels(), acc.regions());
                (Some(acc.finish()), pixels, regions)
            }
            None => (None, 0, 0),
        };
        let metrics_seconds = t.elapsed().as_secs_f64();
        self.metrics_seconds += metrics_seconds;
        let result = CategoryResult {
            name: category.name.clone(),
            images: cur.records.len(),
            normal: cur.records.iter().filter(|r| !r.anomalous).count(),
            anomalous: cur.records.iter().filter(|r| r.anomalous).count(),
            has_masks: category.has_masks,
            pixels,
            regions,
            metrics: MetricSet::from_parts(image.as_ref(), pixel.as_ref()),
            seconds: cur.started.elapsed().as_secs_f64(),
            metrics_seconds,
        };
        let done = CategoryDone {
            dataset_index: d,
            dataset,
            category_index: c,
            category,
            result: &result,
            images: &cur.records,
            pixel_histogram: cur.histogram.as_ref(),
        };
        self.observer
            .category_done(&done)
            .map_err(EvalError::Observer)?;
        self.results[d].push(result);
        Ok(())
    }
}
