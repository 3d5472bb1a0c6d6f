//! Evaluation with the published protocol (`headclip-spec.md`, "Evaluation"): score every image
//! of one or more data sets, compute per-category image- and pixel-level metrics and the
//! per-data-set means, and describe the run in a serialisable [`Report`].
//!
//! - [`evaluate`] runs the loop: images are decoded and pre-processed on worker threads ahead of
//!   the model, scored in batches, and each category's metrics are computed as soon as its last
//!   image is scored. Memory stays bounded by the category's pixel store
//!   ([`PixelAccumulator`](headclip_metrics::PixelAccumulator)); no map, image or tensor is kept
//!   beyond its batch. An [`EvalObserver`] sees every scored image (to save maps, report progress)
//!   and every finished category (to draw curves and galleries).
//! - [`CategoryResult`], [`DatasetResult`] and [`MetricSet`] hold the figures: every metric is an
//!   `Option`, absent where the protocol leaves it undefined (image metrics of a set with one
//!   class only, pixel metrics without masks), never zero or NaN.
//! - [`curves`]: ROC and precision–recall points for plotting, exact at image level and from a
//!   fine histogram at pixel level (the metrics themselves are always exact).
//! - [`select`]: the most instructive images of a category for a gallery (lowest-scored
//!   anomalies, highest-scored normal images), chosen with bounded memory while scoring.
//!
//! Like the rest of the library this module prints nothing; `headclip test` renders the tables,
//! files and pictures.

mod calibrated;
pub mod curves;
mod run;
pub mod select;
pub mod shots;

use std::path::PathBuf;

use serde::Serialize;

use crate::clip::ClipConfig;
use crate::detector::{device_name, Detector};
use crate::model::{PromptMode, ResolvedConfig};
use headclip_data::datasets::{DataKind, DataSpec, Dataset};
use headclip_metrics::{ImageMetrics, PixelMetrics};

pub use calibrated::{defect_rows, AtThresholds, DefectResult, Figures, Thresholds};
pub use run::{
    evaluate, evaluate_conditioned, CategoryDone, Condition, EvalError, EvalObserver, EvalOptions,
    Evaluation, ImageRecord, ObserverError, ScoredImage,
};

/// Which AUPRO variant(s) a report shows (both are always computed; see
/// [`PixelMetrics`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuproVariants {
    /// AnomalyCLIP's 200-threshold AUPRO, the one the zero-shot tables use (default).
    #[default]
    Anomalyclip,
    /// MVTec AD's exact AUPRO.
    Mvtec,
    /// Both, AnomalyCLIP's first.
    Both,
}

impl AuproVariants {
    /// The AUPRO metrics shown, in order.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            AuproVariants::Anomalyclip => &[Metric::AuproAnomalyclip],
            AuproVariants::Mvtec => &[Metric::AuproMvtec],
            AuproVariants::Both => &[Metric::AuproAnomalyclip, Metric::AuproMvtec],
        }
    }

    /// Every metric a report shows, in column order: image AUROC, AP, F1-max, pixel AUROC, AP,
    /// F1-max, then the AUPRO(s).
    pub fn columns(self) -> Vec<Metric> {
        let mut cols = Metric::ALL[..6].to_vec();
        cols.extend_from_slice(self.metrics());
        cols
    }

    /// `"anomalyclip"`, `"mvtec"` or `"both"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuproVariants::Anomalyclip => "anomalyclip",
            AuproVariants::Mvtec => "mvtec",
            AuproVariants::Both => "both",
        }
    }
}

/// One figure of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Image-level AUROC of the joint score.
    ImageAuroc,
    /// Image-level average precision.
    ImageAp,
    /// Image-level maximum F1.
    ImageF1Max,
    /// Pixel-level AUROC over all pixels of the category.
    PixelAuroc,
    /// Pixel-level average precision.
    PixelAp,
    /// Pixel-level maximum F1.
    PixelF1Max,
    /// AnomalyCLIP's AUPRO (FPR limit 0.3).
    AuproAnomalyclip,
    /// MVTec AD's exact AUPRO (FPR limit 0.3).
    AuproMvtec,
}

impl Metric {
    /// Every metric, in column order.
    pub const ALL: [Metric; 8] = [
        Metric::ImageAuroc,
        Metric::ImageAp,
        Metric::ImageF1Max,
        Metric::PixelAuroc,
        Metric::PixelAp,
        Metric::PixelF1Max,
        Metric::AuproAnomalyclip,
        Metric::AuproMvtec,
    ];

    /// Machine name, as in the JSON and CSV reports (`image_auroc`, ...).
    pub fn key(self) -> &'static str {
        match self {
            Metric::ImageAuroc => "image_auroc",
            Metric::ImageAp => "image_ap",
            Metric::ImageF1Max => "image_f1_max",
            Metric::PixelAuroc => "pixel_auroc",
            Metric::PixelAp => "pixel_ap",
            Metric::PixelF1Max => "pixel_f1_max",
            Metric::AuproAnomalyclip => "aupro_anomalyclip",
            Metric::AuproMvtec => "aupro_mvtec",
        }
    }

    /// Column header for people.
    pub fn label(self) -> &'static str {
        match self {
            Metric::ImageAuroc => "image AUROC",
            Metric::ImageAp => "image AP",
            Metric::ImageF1Max => "image F1-max",
            Metric::PixelAuroc => "pixel AUROC",
            Metric::PixelAp => "pixel AP",
            Metric::PixelF1Max => "pixel F1-max",
            Metric::AuproAnomalyclip => "AUPRO@0.3 (AnomalyCLIP)",
            Metric::AuproMvtec => "AUPRO@0.3 (MVTec)",
        }
    }
}

/// One value per metric of the protocol, in the reports' order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PerMetric<T> {
    /// Image-level AUROC.
    pub image_auroc: T,
    /// Image-level AP.
    pub image_ap: T,
    /// Image-level F1-max.
    pub image_f1_max: T,
    /// Pixel-level AUROC.
    pub pixel_auroc: T,
    /// Pixel-level AP.
    pub pixel_ap: T,
    /// Pixel-level F1-max.
    pub pixel_f1_max: T,
    /// AnomalyCLIP's AUPRO.
    pub aupro_anomalyclip: T,
    /// MVTec AD's AUPRO.
    pub aupro_mvtec: T,
}

impl<T: Copy> PerMetric<T> {
    /// The value of one metric.
    pub fn get(&self, metric: Metric) -> T {
        let mut copy = *self;
        *copy.slot(metric)
    }

    fn slot(&mut self, metric: Metric) -> &mut T {
        match metric {
            Metric::ImageAuroc => &mut self.image_auroc,
            Metric::ImageAp => &mut self.image_ap,
            Metric::ImageF1Max => &mut self.image_f1_max,
            Metric::PixelAuroc => &mut self.pixel_auroc,
            Metric::PixelAp => &mut self.pixel_ap,
            Metric::PixelF1Max => &mut self.pixel_f1_max,
            Metric::AuproAnomalyclip => &mut self.aupro_anomalyclip,
            Metric::AuproMvtec => &mut self.aupro_mvtec,
        }
    }
}

/// The eight figures of a category (or their means over a data set's categories), as
/// fractions in [0, 1]; `None` where undefined.
pub type MetricSet = PerMetric<Option<f64>>;

/// For each metric of a mean, the number of categories it is the mean of.
pub type MetricCounts = PerMetric<usize>;

impl MetricSet {
    /// Combines image-level and pixel-level results (either may be absent as a whole).
    pub fn from_parts(image: Option<&ImageMetrics>, pixel: Option<&PixelMetrics>) -> Self {
        MetricSet {
            image_auroc: image.and_then(|m| m.auroc),
            image_ap: image.and_then(|m| m.ap),
            image_f1_max: image.and_then(|m| m.f1_max),
            pixel_auroc: pixel.and_then(|m| m.auroc),
            pixel_ap: pixel.and_then(|m| m.ap),
            pixel_f1_max: pixel.and_then(|m| m.f1_max),
            aupro_anomalyclip: pixel.and_then(|m| m.aupro_anomalyclip),
            aupro_mvtec: pixel.and_then(|m| m.aupro_mvtec),
        }
    }

    /// Per metric, the mean over the sets where it is defined, and how many sets that was;
    /// absent where no set defines it.
    pub fn mean<'a>(
        sets: impl IntoIterator<Item = &'a MetricSet> + Clone,
    ) -> (MetricSet, MetricCounts) {
        let mut mean = MetricSet::default();
        let mut counts = MetricCounts::default();
        for metric in Metric::ALL {
            let values: Vec<f64> = sets
                .clone()
                .into_iter()
                .filter_map(|s| s.get(metric))
                .collect();
            *counts.slot(metric) = values.len();
            if !values.is_empty() {
                *mean.slot(metric) = Some(values.iter().sum::<f64>() / values.len() as f64);
            }
        }
        (mean, counts)
    }
}

/// The figures of one category.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryResult {
    /// The category's name.
    pub name: String,
    /// Images scored.
    pub images: usize,
    /// Normal images among them.
    pub normal: usize,
    /// Anomalous images among them.
    pub anomalous: usize,
    /// Whether the category has pixel-level ground truth.
    pub has_masks: bool,
    /// Pixels that went into the pixel metrics (0 without them).
    pub pixels: usize,
    /// Anomalous regions (8-connected components of the masks) AUPRO averages over.
    pub regions: usize,
    /// The figures; see [`MetricSet`].
    pub metrics: MetricSet,
    /// The joint score where image F1-max is reached (positive when `>=`).
    pub image_f1_threshold: Option<f32>,
    /// The map value where pixel F1-max is reached.
    pub pixel_f1_threshold: Option<f32>,
    /// Counts and figures at the calibrated thresholds, when the evaluation was given some.
    pub calibrated: Option<AtThresholds>,
    /// A row per defect type, where the layout names them.
    pub defects: Vec<DefectResult>,
    /// Wall-clock seconds from the category's first image to its metrics.
    pub seconds: f64,
    /// Of those, seconds spent computing the metrics.
    pub metrics_seconds: f64,
}

/// The figures of one data set: its categories and their means.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetResult {
    /// The data set's display name.
    pub name: String,
    /// Its layout.
    #[serde(serialize_with = "serialize_kind")]
    pub kind: DataKind,
    /// Its root folder (or manifest) as given.
    pub root: PathBuf,
    /// One entry per category, in the data set's order.
    pub categories: Vec<CategoryResult>,
    /// Per metric, the mean over the categories where it is defined (the data set's figure).
    pub mean: MetricSet,
    /// Per metric, how many categories the mean is over.
    pub mean_over: MetricCounts,
    /// The categories' counts at the calibrated thresholds, pooled.
    pub calibrated: Option<AtThresholds>,
}

fn serialize_kind<S: serde::Serializer>(kind: &DataKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.as_str())
}

impl DatasetResult {
    /// Gathers the categories' results of `dataset` and their means.
    pub fn new(dataset: &Dataset, categories: Vec<CategoryResult>) -> Self {
        let (mean, mean_over) = MetricSet::mean(categories.iter().map(|c| &c.metrics));
        let calibrated =
            AtThresholds::pooled(categories.iter().filter_map(|c| c.calibrated.as_ref()));
        DatasetResult {
            calibrated,
            name: dataset.name.clone(),
            kind: dataset.kind,
            root: dataset.root.clone(),
            categories,
            mean,
            mean_over,
        }
    }

    /// Images over all categories.
    pub fn images(&self) -> usize {
        self.categories.iter().map(|c| c.images).sum()
    }
}

/// What a report says about the model that produced it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// The CLIP weights file as given (`None`: the default official checkpoint).
    pub weights: Option<PathBuf>,
    /// The HeadCLIP parameters file (`None`: training-free mode).
    pub params: Option<PathBuf>,
    /// CLIP's architecture name, e.g. `ViT-L/14@336px`.
    pub architecture: String,
    /// Learned or training-free prompts.
    pub mode: PromptMode,
    /// The device the model ran on, as given.
    pub device: String,
    /// Input side S (maps and masks are compared at S×S).
    pub image_size: i64,
    /// The resolved HeadCLIP options.
    pub config: ResolvedConfig,
    /// CLIP's shapes.
    pub clip: ClipConfig,
}

impl ModelSummary {
    /// Describes the detector's model and what it was loaded from.
    pub fn new(detector: &Detector) -> Self {
        let model = detector.model();
        ModelSummary {
            weights: Some(detector.spec().weights.clone()),
            params: detector.spec().params.clone(),
            architecture: model.clip.config.name(),
            mode: model.mode,
            device: device_name(model.device()),
            image_size: model.image_size(),
            config: model.config.clone(),
            clip: model.clip.config.clone(),
        }
    }
}

/// Wall-clock times of a run, in seconds, and throughput.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Timing {
    /// Listing and checking the data sets.
    pub data_load_seconds: f64,
    /// Building the model.
    pub model_load_seconds: f64,
    /// The evaluation loop ([`Evaluation::seconds`]): decoding, scoring, metrics, observers.
    pub evaluation_seconds: f64,
    /// Inside the model's forward pass and map smoothing.
    pub model_seconds: f64,
    /// Computing metrics.
    pub metrics_seconds: f64,
    /// Images scored.
    pub images: usize,
    /// `images / evaluation_seconds`.
    pub images_per_second: f64,
    /// `evaluation_seconds / images`.
    pub seconds_per_image: f64,
    /// The whole command.
    pub total_seconds: f64,
}

/// One data set in a [`Report`]: how it was named, what the loader said, and its figures.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    /// The `--data` spec as written.
    pub spec: String,
    /// Images over all categories.
    pub images: usize,
    /// Normal images among them.
    pub normal: usize,
    /// Anomalous images among them.
    pub anomalous: usize,
    /// Loader warnings, as shown to the user.
    pub warnings: Vec<String>,
    /// The figures.
    #[serde(flatten)]
    pub result: DatasetResult,
}

/// Everything `headclip test --json` writes: all figures unrounded (fractions in [0, 1], `null`
/// where undefined), counts, timing, the AUPRO variant(s) shown, the data set specs and the model.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The engine's version.
    pub headclip_version: String,
    /// The AUPRO variant(s) the table shows (the JSON holds both).
    pub aupro: AuproVariants,
    /// AUPRO's integration limit.
    pub aupro_fpr_limit: f64,
    /// Percentages in tables are these fractions ×100 with one decimal.
    pub table_scale: f64,
    /// The model.
    pub model: ModelSummary,
    /// The data sets, in command-line order.
    pub datasets: Vec<DatasetReport>,
    /// The calibration file whose thresholds the `calibrated` figures are at, if any.
    pub calibration: Option<PathBuf>,
    /// Times.
    pub timing: Timing,
    /// Peak resident memory of the process (`VmHWM`), where the system reports it.
    pub peak_rss_bytes: Option<u64>,
    /// With `--shots K`: K, the seeds, and the figures' mean and standard deviation over them
    /// (`datasets` then holds the mean figures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub few_shot: Option<shots::FewShotReport>,
}

impl Timing {
    /// The times of a run that spent `data_load_seconds` listing its data sets,
    /// `model_load_seconds` building its model, then ran `evaluation`; `total_seconds` for all.
    pub fn new(
        data_load_seconds: f64,
        model_load_seconds: f64,
        evaluation: &Evaluation,
        total_seconds: f64,
    ) -> Self {
        let images = evaluation.images;
        let per_second = |s: f64| if s > 0.0 { images as f64 / s } else { 0.0 };
        Timing {
            data_load_seconds,
            model_load_seconds,
            evaluation_seconds: evaluation.seconds,
            model_seconds: evaluation.model_seconds,
            metrics_seconds: evaluation.metrics_seconds,
            images,
            images_per_second: per_second(evaluation.seconds),
            seconds_per_image: if images > 0 {
                evaluation.seconds / images as f64
            } else {
                0.0
            },
            total_seconds,
        }
    }
}

impl Report {
    /// The report of `evaluation`, run over `datasets` (loaded from `specs`, in the same order)
    /// by `model`; `aupro` is the variant tables show. Without a calibration or few-shot
    /// figures; callers that have them set those fields.
    pub fn new(
        aupro: AuproVariants,
        model: ModelSummary,
        datasets: &[Dataset],
        specs: &[DataSpec],
        evaluation: Evaluation,
        timing: Timing,
    ) -> Self {
        Report {
            headclip_version: env!("CARGO_PKG_VERSION").to_string(),
            aupro,
            aupro_fpr_limit: headclip_metrics::AUPRO_FPR_LIMIT,
            table_scale: 100.0,
            model,
            datasets: datasets
                .iter()
                .zip(specs)
                .zip(evaluation.datasets)
                .map(|((ds, spec), result)| DatasetReport {
                    spec: spec.as_str().to_string(),
                    images: ds.len(),
                    normal: ds.num_normal(),
                    anomalous: ds.num_anomalous(),
                    warnings: ds.warnings.iter().map(|w| w.to_string()).collect(),
                    result,
                })
                .collect(),
            calibration: None,
            timing,
            peak_rss_bytes: peak_rss_bytes(),
            few_shot: None,
        }
    }
}

/// Peak resident memory of this process (`VmHWM` of `/proc/self/status`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_skip_undefined_metrics() {
        let a = MetricSet {
            image_auroc: Some(0.5),
            pixel_auroc: Some(0.9),
            ..Default::default()
        };
        let b = MetricSet {
            image_auroc: Some(1.0),
            ..Default::default()
        };
        let (mean, counts) = MetricSet::mean([&a, &b]);
        assert_eq!(mean.image_auroc, Some(0.75));
        assert_eq!(mean.pixel_auroc, Some(0.9));
        assert_eq!(mean.image_ap, None);
        assert_eq!(counts.get(Metric::ImageAuroc), 2);
        assert_eq!(counts.get(Metric::PixelAuroc), 1);
        assert_eq!(counts.get(Metric::AuproMvtec), 0);
    }

    #[test]
    fn columns_follow_the_variant() {
        assert_eq!(AuproVariants::Anomalyclip.columns().len(), 7);
        assert_eq!(AuproVariants::Both.columns().len(), 8);
        assert_eq!(AuproVariants::Mvtec.columns()[6], Metric::AuproMvtec);
    }
}
