//! The evaluation loop: decode ahead on worker threads, score in batches, accumulate per
//! category, compute metrics when a category ends.

use std::path::PathBuf;
use std::time::Instant;

use std::ops::ControlFlow;

use super::calibrated::{defect_rows, AtThresholds, Thresholds};
use super::curves::PixelHistogram;
use super::{CategoryResult, DatasetResult, MetricSet};
use crate::detector::{DetectError, Detection, Detector, StreamFailure, StreamOptions};
use headclip_data::datasets::{Category, Dataset, Sample};
use headclip_data::images::{self, DataError, DecodeLimits, ImageSource, Mask};
use headclip_metrics::{confusion_at, image_metrics, MetricsError, PixelAccumulator};

/// How [`evaluate`] runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    /// Images per forward pass (at least 1).
    pub batch_size: usize,
    /// Threads that decode and pre-process images ahead of the model (at least 1).
    pub decode_threads: usize,
    /// Fill a [`PixelHistogram`] per category with masks, for pixel-level curves
    /// ([`CategoryDone::pixel_histogram`]).
    pub pixel_curves: bool,
    /// Calibrated thresholds: each category also gets its counts and figures at them
    /// ([`CategoryResult::calibrated`]).
    pub thresholds: Option<Thresholds>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            batch_size: 1,
            decode_threads: 1,
            pixel_curves: false,
            thresholds: None,
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
    /// The model gave no usable result for an image (a non-finite score, say).
    #[error("{}: {error}", image.display())]
    Score {
        /// The image.
        image: PathBuf,
        /// Why.
        error: DetectError,
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
    /// A category's references or class name could not be set.
    #[error("{category}: {message}")]
    Condition {
        /// `data set / category`.
        category: String,
        /// Why.
        message: String,
    },
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
    pub score: &'a Detection,
    /// Its S×S mask, where pixel metrics are computed and the sample has a mask file.
    pub mask: Option<&'a Mask>,
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

/// Position of a sample: (data set, category, sample).
type Position = (usize, usize, usize);

/// The image's S×S mask, where the category's pixel metrics need one and the sample has it.
fn read_mask_for(
    category: &Category,
    sample: &Sample,
    side: u32,
    limits: &DecodeLimits,
) -> Result<Option<Mask>, EvalError> {
    match (&sample.mask, category.pixel_metrics_defined()) {
        (Some(path), true) => images::read_mask(path, side, limits)
            .map(Some)
            .map_err(|error| EvalError::Data {
                path: path.clone(),
                error,
            }),
        _ => Ok(None),
    }
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
    detector: &Detector,
    datasets: &[Dataset],
    options: &EvalOptions,
    observer: &mut dyn EvalObserver,
) -> Result<Evaluation, EvalError> {
    check_options(options)?;
    let started = Instant::now();
    let positions = all_positions(datasets);
    let mut state = Loop::new(datasets, options, observer, detector.side());
    let model_seconds = stream(detector, &positions, &mut state)?;
    state.finish(started, positions.len(), model_seconds)
}

/// What a category needs set on the detector before its images are scored (its few-shot
/// references, its class name), given the indices of its data set and of the category; the
/// message says why it could not be.
pub type Condition<'c> = dyn FnMut(&mut Detector, usize, usize) -> Result<(), String> + 'c;

/// As [`evaluate`], with `condition` applied to the detector before each category's images are
/// scored, so that each category may have its own references and class name. The side S must
/// not change.
///
/// # Errors
/// As [`evaluate`]; a condition that fails stops the evaluation
/// ([`EvalError::Condition`]).
pub fn evaluate_conditioned(
    detector: &mut Detector,
    datasets: &[Dataset],
    options: &EvalOptions,
    observer: &mut dyn EvalObserver,
    condition: &mut Condition<'_>,
) -> Result<Evaluation, EvalError> {
    check_options(options)?;
    let started = Instant::now();
    let positions = all_positions(datasets);
    let side = detector.side();
    let mut state = Loop::new(datasets, options, observer, side);
    let mut model_seconds = 0.0;
    for part in positions.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        let (d, c, _) = part[0];
        let (dataset, category) = (&datasets[d], &datasets[d].categories[c]);
        condition(detector, d, c).map_err(|message| EvalError::Condition {
            category: format!("{} / {}", dataset.name, category.name),
            message,
        })?;
        debug_assert_eq!(detector.side(), side, "a condition must keep the side");
        model_seconds += stream(detector, part, &mut state)?;
    }
    state.finish(started, positions.len(), model_seconds)
}

fn check_options(options: &EvalOptions) -> Result<(), EvalError> {
    if options.batch_size == 0 {
        return Err(EvalError::Options("batch size must be at least 1".into()));
    }
    if options.decode_threads == 0 {
        return Err(EvalError::Options(
            "decode threads must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Every sample's position, in data set, category and sample order.
fn all_positions(datasets: &[Dataset]) -> Vec<Position> {
    datasets
        .iter()
        .enumerate()
        .flat_map(|(d, ds)| {
            ds.categories
                .iter()
                .enumerate()
                .flat_map(move |(c, cat)| (0..cat.samples.len()).map(move |s| (d, c, s)))
        })
        .collect()
}

/// Scores the samples at `positions` into `state`; returns the seconds spent in the model.
fn stream(
    detector: &Detector,
    positions: &[Position],
    state: &mut Loop<'_, '_>,
) -> Result<f64, EvalError> {
    let datasets = state.datasets;
    let side = state.side;
    let stream = StreamOptions {
        batch_size: state.options.batch_size,
        workers: state.options.decode_threads,
    };
    let preprocessor = *detector.preprocessor();
    let prepare = |&(d, c, s): &Position| {
        let category = &datasets[d].categories[c];
        let sample = &category.samples[s];
        let image = preprocessor
            .prepare(ImageSource::Path(sample.image.clone()), false)
            .map_err(|error| EvalError::Data {
                path: sample.image.clone(),
                error: unwrap_file_error(error),
            })?;
        Ok((
            image,
            read_mask_for(category, sample, side, &preprocessor.limits)?,
        ))
    };
    let mut failure = None;
    let stats = detector.detect_stream(positions, &stream, prepare, |i, result| {
        let scored = result.map_err(|failure| match failure {
            StreamFailure::Prepare(e) => e,
            StreamFailure::Score(error) => {
                let (d, c, s) = positions[i];
                EvalError::Score {
                    image: datasets[d].categories[c].samples[s].image.clone(),
                    error,
                }
            }
        });
        match scored.and_then(|(detection, mask)| state.add(positions[i], detection, mask)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(stats.model_seconds),
    }
}
/// The evaluation names the file itself; the inner error says what is wrong with it.
fn unwrap_file_error(error: DataError) -> DataError {
    match error {
        DataError::File { error, .. } => *error,
        other => other,
    }
}

struct Loop<'a, 'o> {
    datasets: &'a [Dataset],
    options: &'a EvalOptions,
    observer: &'o mut dyn EvalObserver,
    current: Option<Current>,
    results: Vec<Vec<CategoryResult>>,
    metrics_seconds: f64,
    side: u32,
}

impl<'a, 'o> Loop<'a, 'o> {
    fn new(
        datasets: &'a [Dataset],
        options: &'a EvalOptions,
        observer: &'o mut dyn EvalObserver,
        side: u32,
    ) -> Self {
        Loop {
            datasets,
            options,
            observer,
            current: None,
            results: datasets.iter().map(|_| Vec::new()).collect(),
            metrics_seconds: 0.0,
            side,
        }
    }

    /// The last category's metrics, then the whole evaluation's figures.
    fn finish(
        mut self,
        started: Instant,
        images: usize,
        model_seconds: f64,
    ) -> Result<Evaluation, EvalError> {
        self.finish_category()?;
        let datasets = self
            .datasets
            .iter()
            .zip(self.results)
            .map(|(ds, cats)| DatasetResult::new(ds, cats))
            .collect();
        Ok(Evaluation {
            datasets,
            images,
            seconds: started.elapsed().as_secs_f64(),
            model_seconds,
            metrics_seconds: self.metrics_seconds,
        })
    }

    fn add(
        &mut self,
        (d, c, s): Position,
        score: Detection,
        mask: Option<Mask>,
    ) -> Result<(), EvalError> {
        let side = self.side;
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
        if let Some(acc) = cur.pixels.as_mut() {
            let zeros;
            let values: &[u8] = match &mask {
                Some(m) => &m.values,
                None => {
                    zeros = vec![0u8; score.map.len()];
                    &zeros
                }
            };
            acc.add(&score.map, values)
                .map_err(|error| EvalError::Metrics {
                    image: sample.image.clone(),
                    error,
                })?;
            if let Some(h) = cur.histogram.as_mut() {
                h.add(&score.map, mask.as_ref().map(|m| m.values.as_slice()));
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
            mask: mask.as_ref(),
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
        let metrics_error = |error| EvalError::Metrics {
            image: dataset.root.clone(),
            error,
        };
        let scores: Vec<f32> = cur.records.iter().map(|r| r.score).collect();
        let labels: Vec<bool> = cur.records.iter().map(|r| r.anomalous).collect();
        let image = if category.image_metrics_defined() {
            Some(image_metrics(&scores, &labels).map_err(metrics_error)?)
        } else {
            None
        };
        let thresholds = self.options.thresholds;
        let calibrated = match thresholds {
            Some(t) => Some(AtThresholds {
                thresholds: t,
                image: confusion_at(&scores, &labels, t.image)
                    .map_err(metrics_error)?
                    .into(),
                pixel: t
                    .pixel
                    .zip(cur.pixels.as_ref())
                    .map(|(p, acc)| acc.confusion_at(p).into()),
            }),
            None => None,
        };
        let defects = defect_rows(category, &cur.records, thresholds).map_err(metrics_error)?;
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
            image_f1_threshold: image.and_then(|m| m.f1_threshold),
            pixel_f1_threshold: pixel.and_then(|m| m.f1_threshold),
            calibrated,
            defects,
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
