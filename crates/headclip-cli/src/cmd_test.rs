//! `headclip test`: evaluation with the published protocol (`headclip-spec.md`, "Evaluation").
//!
//! ```text
//! headclip test --weights W [--params P] --data SPEC [--data SPEC ...] [--json FILE] [--csv FILE]
//!     [--save-maps DIR] [--pictures DIR] [--allow-missing-masks] [--aupro anomalyclip|mvtec|both]
//!     [--batch-size N] [--image-size S] [--device D] [--threads N]
//! ```
//!
//! 1. Every `--data` set is listed and checked first (file names, labels, masks, image headers);
//!    any problem stops the run before the model is even loaded, naming the file and, for a
//!    manifest, the line. Loader warnings (a mask whose size differs from its image's, a stray
//!    file) go to stderr.
//! 2. Every image is scored ([`headclip::eval::evaluate`]): decoded on worker threads ahead of
//!    the model, scored in batches of `--batch-size`, with a progress bar (images per second) on
//!    stderr (on the CPU without `--threads`, libtorch gets the cores the decoding threads
//!    leave: its threads spin while waiting, and sharing cores costs many times over). Per
//!    category: image AUROC / AP / F1-max of the joint score where both classes are present;
//!    pixel AUROC / AP / F1-max and AUPRO (FPR limit 0.3) where the category has masks, maps
//!    and masks compared at S×S. Memory is bounded by one category's pixel store (plus, with
//!    `--pictures`, a few thumbnail-sized maps of gallery candidates).
//! 3. stdout gets a Markdown table: a row per category and a `mean` row per data set (the mean
//!    over its categories of each metric they define), ×100 with one decimal, `—` where a metric
//!    is undefined. The header names the AUPRO variant (`--aupro`, default AnomalyCLIP's).
//!    stderr gets a summary: time per image and peak memory (`VmHWM`).
//! 4. `--json FILE`: the whole [`Report`] (unrounded figures, counts, timing, the AUPRO variant,
//!    the specs, the model); `--csv FILE`: the table's rows unrounded. Both written atomically.
//! 5. `--save-maps DIR`: every map as `DIR/<dataset>/<category>/<defect or normal>/<stem>.npy`
//!    (S×S f32) and `DIR/scores.csv` (dataset, category, image, label, mask, score, global_score,
//!    pixel_score, npy) from which every figure can be recomputed.
//! 6. `--pictures DIR`: per category `roc.svg`, `pr.svg` (image and pixel level) and an
//!    `index.html` gallery of its most instructive images (lowest-scored anomalies,
//!    highest-scored normal images; at most `--gallery-size`), with `DIR/index.html` over all.
//!
//! 7. `--shots K`: few-shot. Per category, `K` references are drawn from its normal training
//!    images (MVTec AD: `train/good`; VisA: the manifest's train split; other layouts: the spec's
//!    `references=DIR`), never from its test images, once per `--seeds` seed (default 0–4); the
//!    table shows the mean over the seeds, then their standard deviation, and the JSON report both
//!    with every seed's figures and the references drawn. Maps and pictures are the first seed's.
//!    A category with fewer than `K` normal training images is refused by name before the model
//!    loads. In the training-free mode each category's class name goes into the prompts (the spec's
//!    `class=`, else the MVTec AD / VisA category name).
//!
//! Exit status: 0 done; 1 an image or mask failed to decode (or an output failed to write) during
//! the evaluation, which stops it; 2 the run could not start (bad option or data set, no
//! weights).

#[path = "report/mod.rs"]
pub(crate) mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use headclip::detector::{Detector, References, DEFAULT_BANK_CAP, DEFAULT_BETA};
use headclip::eval::select::Instructive;
use headclip::eval::shots::{self, FewShotReport, Statistic};
use headclip::eval::{
    self, AuproVariants, CategoryDone, EvalError, EvalObserver, EvalOptions, Evaluation,
    ModelSummary, ObserverError, Report, ScoredImage, Thresholds, Timing,
};
use headclip::write_atomically;
use headclip_data::datasets::{self, DataSpec, Dataset, LoadOptions, DATA_SPEC_HELP};
use headclip_data::images::DecodeLimits;
use indicatif::{ProgressBar, ProgressStyle};

use crate::calibration_args::CalibrationArgs;
use crate::engine::{load_detector, ModelArgs};
use headclip::calibration::Calibration;
use report::gallery::{self, SmallMap};
use report::names;

/// Loader warnings shown per data set; the rest are counted (all are in the JSON report).
const WARNINGS_SHOWN: usize = 10;

/// Which AUPRO the table shows.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuproArg {
    /// AnomalyCLIP's (200 thresholds, FPR rescaled): the zero-shot tables' figure.
    Anomalyclip,
    /// MVTec AD's exact one.
    Mvtec,
    /// Both columns.
    Both,
}

impl From<AuproArg> for AuproVariants {
    fn from(a: AuproArg) -> Self {
        match a {
            AuproArg::Anomalyclip => AuproVariants::Anomalyclip,
            AuproArg::Mvtec => AuproVariants::Mvtec,
            AuproArg::Both => AuproVariants::Both,
        }
    }
}

fn parse_spec(s: &str) -> Result<DataSpec, String> {
    s.parse::<DataSpec>().map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct TestArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A data set, KIND:ROOT[,key=value...] (repeat for several; see --help for the syntax).
    #[arg(long = "data", value_name = "SPEC", required = true, value_parser = parse_spec, long_help = DATA_SPEC_HELP)]
    pub data: Vec<DataSpec>,
    /// Write the full report (unrounded figures, counts, timing, model) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the table's rows (unrounded fractions) as CSV here.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write every anomaly map as .npy under DIR/DATASET/CATEGORY/DEFECT/ and DIR/scores.csv.
    #[arg(long, value_name = "DIR")]
    pub save_maps: Option<PathBuf>,
    /// Write ROC/PR charts (SVG) and an HTML gallery per category under DIR.
    #[arg(long, value_name = "DIR")]
    pub pictures: Option<PathBuf>,
    /// Evaluate categories where an anomalous image lacks its mask at image level only (with a
    /// warning) instead of refusing them.
    #[arg(long)]
    pub allow_missing_masks: bool,
    /// The AUPRO variant the table and CSV show (the JSON holds both).
    #[arg(long, value_enum, default_value = "anomalyclip")]
    pub aupro: AuproArg,
    /// Images scored together.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Threads decoding images ahead of the model (default: 1 on the CPU, up to 4 with CUDA).
    /// On the CPU without --threads, libtorch gets the cores these leave.
    #[arg(long)]
    pub decode_threads: Option<usize>,
    /// Images per category in the --pictures gallery.
    #[arg(long, default_value_t = 24)]
    pub gallery_size: usize,
    /// Refuse images with more pixels than this (decompression bombs), checked before decoding.
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
    pub max_pixels: u64,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    /// Few-shot: K normal references per category from its training images, once per seed.
    #[arg(long, value_name = "K")]
    pub shots: Option<usize>,
    /// The seeds of the reference draws (comma-separated); figures are their mean and standard
    /// deviation.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4")]
    pub seeds: Vec<u64>,
    /// Weight β of the few-shot map in the fused map.
    #[arg(long, default_value_t = DEFAULT_BETA)]
    pub beta: f64,
    /// The most patch features per read-out layer a bank may hold (K × (S/P)²).
    #[arg(long, default_value_t = DEFAULT_BANK_CAP)]
    pub bank_cap: usize,
}

/// `--shots`: how many references, drawn with which seeds.
struct Shots {
    k: usize,
    seeds: Vec<u64>,
    beta: f64,
    bank_cap: usize,
}

/// The checked options: whatever is wrong with them is found before any data set is read.
struct Plan {
    specs: Vec<DataSpec>,
    allow_missing_masks: bool,
    model: ModelArgs,
    outputs: Outputs,
    aupro: AuproVariants,
    limits: DecodeLimits,
    batch_size: usize,
    decode_threads: usize,
    gallery_size: usize,
    calibration_args: CalibrationArgs,
    /// Loaded with the model, whose identity it is checked against.
    calibration: Option<Calibration>,
    shots: Option<Shots>,
}

/// Where the reports go (each optional).
struct Outputs {
    json: Option<PathBuf>,
    csv: Option<PathBuf>,
    save_maps: Option<PathBuf>,
    pictures: Option<PathBuf>,
}

impl Plan {
    fn new(args: TestArgs) -> Result<Self> {
        if args.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if args.decode_threads == Some(0) {
            bail!("--decode-threads must be at least 1");
        }
        let decode_threads = args
            .decode_threads
            .unwrap_or_else(|| default_decode_threads(&args.model.device));
        let shots = match args.shots {
            None => None,
            Some(0) => bail!("--shots must be at least 1"),
            Some(_) if args.calibration.calibration.is_some() => {
                bail!(
                    "--calibration cannot be used with --shots: a calibration belongs to one set of \
                     references, and --shots draws new ones for every seed"
                )
            }
            Some(k) => {
                if args.seeds.is_empty() {
                    bail!("--seeds needs at least one seed");
                }
                if !(0.0..=1.0).contains(&args.beta) {
                    bail!("--beta {} is outside [0, 1]", args.beta);
                }
                Some(Shots {
                    k,
                    seeds: args.seeds.clone(),
                    beta: args.beta,
                    bank_cap: args.bank_cap,
                })
            }
        };
        Ok(Plan {
            specs: args.data,
            allow_missing_masks: args.allow_missing_masks,
            model: args.model,
            outputs: Outputs {
                json: args.json,
                csv: args.csv,
                save_maps: args.save_maps,
                pictures: args.pictures,
            },
            aupro: args.aupro.into(),
            limits: DecodeLimits {
                max_pixels: args.max_pixels,
                ..DecodeLimits::default()
            },
            batch_size: args.batch_size,
            decode_threads,
            gallery_size: args.gallery_size,
            calibration_args: args.calibration,
            calibration: None,
            shots,
        })
    }

    fn on_cpu(&self) -> bool {
        !self.model.device.starts_with("cuda")
    }

    fn eval_options(&self) -> EvalOptions {
        EvalOptions {
            batch_size: self.batch_size,
            decode_threads: self.decode_threads,
            pixel_curves: self.outputs.pictures.is_some(),
            thresholds: self.calibration.as_ref().map(|c| Thresholds {
                image: c.image.threshold,
                pixel: c.pixel.map(|p| p.threshold),
            }),
        }
    }
}

/// One decoding thread on the CPU (the model needs the cores); with CUDA, up to 4.
fn default_decode_threads(device: &str) -> usize {
    if device.starts_with("cuda") {
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).clamp(1, 4))
    } else {
        1
    }
}

impl Outputs {
    /// Creates output folders and checks that report files can go where asked, before compute.
    fn prepare(&self) -> Result<()> {
        for dir in [&self.save_maps, &self.pictures].into_iter().flatten() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        for file in [&self.json, &self.csv].into_iter().flatten() {
            if file.is_dir() {
                bail!("{} is a folder; give a file name", file.display());
            }
            let parent = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                bail!(
                    "cannot write {}: folder {} does not exist",
                    file.display(),
                    parent.display()
                );
            }
        }
        Ok(())
    }
}

/// Loads and checks every data set before anything is computed; prints their warnings.
pub(crate) fn load_datasets(specs: &[DataSpec], allow_missing_masks: bool) -> Result<Vec<Dataset>> {
    let opts = LoadOptions {
        allow_missing_masks,
        check_sizes: true,
    };
    let mut out: Vec<Dataset> = Vec::new();
    for spec in specs {
        let ds = datasets::load(spec, &opts).with_context(|| format!("--data {spec}"))?;
        if let Some(other) = out
            .iter()
            .find(|o| names::component(&o.name) == names::component(&ds.name))
        {
            bail!(
                "two data sets are named \"{}\" (--data {} and --data {spec}); give one another name with name=NAME",
                ds.name,
                other.root.display()
            );
        }
        log_dataset(&ds);
        out.push(ds);
    }
    Ok(out)
}

/// The data set's first warnings and what it holds.
fn log_dataset(ds: &Dataset) {
    for w in ds.warnings.iter().take(WARNINGS_SHOWN) {
        tracing::warn!("{}: {w}", ds.name);
    }
    if ds.warnings.len() > WARNINGS_SHOWN {
        tracing::warn!(
            "{}: {} more warnings (all of them are in the --json report)",
            ds.name,
            ds.warnings.len() - WARNINGS_SHOWN
        );
    }
    tracing::info!(
        "{}: {} images ({} normal, {} anomalous) in {} categor{}{}",
        ds.name,
        ds.len(),
        ds.num_normal(),
        ds.num_anomalous(),
        ds.categories.len(),
        if ds.categories.len() == 1 { "y" } else { "ies" },
        if ds.has_masks {
            ", with masks"
        } else {
            ", image level only"
        }
    );
}

/// Loads the detector. On the CPU without `--threads`, libtorch gets the cores the decoding
/// threads leave: its threads spin while they wait, and sharing cores slows both many times.
fn load_model(plan: &Plan) -> Result<Detector> {
    if plan.on_cpu() && plan.model.threads.is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tch::set_num_threads(cores.saturating_sub(plan.decode_threads).max(1) as i32);
    }
    let mut model = plan.model.clone();
    if let Some(shots) = &plan.shots {
        model.few_shot = Some(crate::engine::FewShotArgs {
            references: None,
            beta: shots.beta,
            bank_cap: shots.bank_cap,
            class_name: None,
        });
    }
    Ok(load_detector(&model)?.with_limits(plan.limits))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// `--save-maps`: .npy files as images are scored, and the rows of `scores.csv`.
struct MapsOut<'a> {
    dir: &'a Path,
    calibration: Option<&'a Calibration>,
    names: Vec<Vec<Vec<PathBuf>>>,
    side: usize,
    rows: csv::Writer<Vec<u8>>,
    last_dir: Option<PathBuf>,
}

impl<'a> MapsOut<'a> {
    const COLUMNS: [&'static str; 10] = [
        "dataset",
        "category",
        "image",
        "label",
        "mask",
        "score",
        "global_score",
        "pixel_score",
        "npy",
        "defect",
    ];
    /// With a calibration.
    const VERDICT_COLUMNS: [&'static str; 2] = ["verdict", "normalised_score"];

    fn new(
        dir: &'a Path,
        datasets: &[Dataset],
        folders: &[Vec<PathBuf>],
        side: usize,
        calibration: Option<&'a Calibration>,
    ) -> Result<Self> {
        let mut rows = csv::Writer::from_writer(Vec::new());
        let verdicts = calibration.map_or(&[][..], |_| &Self::VERDICT_COLUMNS[..]);
        rows.write_record(Self::COLUMNS.iter().chain(verdicts))?;
        Ok(MapsOut {
            dir,
            calibration,
            names: names::map_names(datasets, folders),
            side,
            rows,
            last_dir: None,
        })
    }

    fn image(&mut self, img: &ScoredImage<'_>) -> Result<()> {
        let name = &self.names[img.dataset_index][img.category_index][img.sample_index];
        let rel = names::append_to_file_name(name, ".npy");
        let path = self.dir.join(&rel);
        if let Some(parent) = path.parent() {
            if self.last_dir.as_deref() != Some(parent) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
                self.last_dir = Some(parent.to_path_buf());
            }
        }
        let map =
            ndarray::ArrayView2::from_shape((self.side, self.side), img.score.map.as_slice())?;
        let mut npy = Vec::with_capacity(img.score.map.len() * 4 + 128);
        ndarray_npy::WriteNpyExt::write_npy(&map, &mut npy)?;
        write_file(&path, &npy)?;
        self.row(img, &rel)
    }

    fn row(&mut self, img: &ScoredImage<'_>, npy: &Path) -> Result<()> {
        let npy: Vec<String> = npy
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let s = img.sample;
        let mut record = vec![
            img.dataset.name.clone(),
            img.category.name.clone(),
            s.image.display().to_string(),
            if s.anomalous { "1" } else { "0" }.to_string(),
            s.mask
                .as_ref()
                .map(|m| m.display().to_string())
                .unwrap_or_default(),
            img.score.score.to_string(),
            img.score.global_score.to_string(),
            img.score.pixel_score.to_string(),
            npy.join("/"),
            s.defect.clone().unwrap_or_default(),
        ];
        if let Some(c) = self.calibration {
            let v = c.verdict(img.score);
            record.push(if v.anomalous { "1" } else { "0" }.to_string());
            record.push(v.normalised_score.to_string());
        }
        self.rows.write_record(record)?;
        Ok(())
    }

    /// Writes `scores.csv`; returns its path.
    fn finish(self) -> Result<PathBuf> {
        let path = self.dir.join("scores.csv");
        write_file(&path, &self.rows.into_inner()?)?;
        Ok(path)
    }
}

/// `--pictures`: gallery candidates while scoring, charts and pages when a category ends.
struct PicturesOut<'a> {
    dir: &'a Path,
    folders: &'a [Vec<PathBuf>],
    gallery_size: usize,
    side: usize,
    aupro: AuproVariants,
    limits: DecodeLimits,
    candidates: Instructive<SmallMap>,
}

impl PicturesOut<'_> {
    fn category_done(&mut self, done: &CategoryDone<'_>) -> Result<()> {
        let dir = self
            .dir
            .join(&self.folders[done.dataset_index][done.category_index]);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let title = format!("{} / {}", done.dataset.name, done.category.name);
        gallery::write_curves(
            &dir,
            &title,
            done.images,
            done.pixel_histogram,
            &done.result.metrics,
        )?;
        let all: Vec<(f32, bool)> = done.images.iter().map(|r| (r.score, r.anomalous)).collect();
        let candidates =
            std::mem::replace(&mut self.candidates, Instructive::new(self.gallery_size));
        let page = gallery::CategoryPage {
            dataset: &done.dataset.name,
            category: done.category,
            result: done.result,
            records: done.images,
            picks: candidates.finish(self.gallery_size, &all),
            aupro: self.aupro,
        };
        gallery::write_category(&dir, page, &self.limits)
    }
}

/// Follows the evaluation: progress, saved maps and pictures.
struct Observer<'a> {
    progress: ProgressBar,
    current: Option<(usize, usize)>,
    maps: Option<MapsOut<'a>>,
    pictures: Option<PicturesOut<'a>>,
}

impl<'a> Observer<'a> {
    fn new(
        plan: &'a Plan,
        datasets: &[Dataset],
        folders: &'a [Vec<PathBuf>],
        side: usize,
    ) -> Result<Self> {
        let total: usize = datasets.iter().map(Dataset::len).sum();
        let progress = ProgressBar::new(total as u64);
        progress.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} images, {per_sec}, eta {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let maps = match plan.outputs.save_maps.as_deref() {
            Some(dir) => Some(MapsOut::new(
                dir,
                datasets,
                folders,
                side,
                plan.calibration.as_ref(),
            )?),
            None => None,
        };
        let pictures = plan.outputs.pictures.as_deref().map(|dir| PicturesOut {
            dir,
            folders,
            gallery_size: plan.gallery_size,
            side,
            aupro: plan.aupro,
            limits: plan.limits,
            candidates: Instructive::new(plan.gallery_size),
        });
        Ok(Observer {
            progress,
            current: None,
            maps,
            pictures,
        })
    }

    /// An observer that only shows progress (later seeds of `--shots`).
    fn progress_only(datasets: &[Dataset]) -> Observer<'a> {
        let total: usize = datasets.iter().map(Dataset::len).sum();
        let progress = ProgressBar::new(total as u64);
        progress.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} images, {per_sec}, eta {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Observer {
            progress,
            current: None,
            maps: None,
            pictures: None,
        }
    }

    /// Reports an evaluation that stopped.
    fn abandon(&self, error: &EvalError) {
        self.progress.abandon();
        eprintln!("error: {error}");
        eprintln!(
            "error: the evaluation stopped after {} of {} images; no report was written",
            self.progress.position(),
            self.progress.length().unwrap_or(0)
        );
    }
}

fn boxed(e: anyhow::Error) -> ObserverError {
    format!("{e:#}").into()
}

impl EvalObserver for Observer<'_> {
    fn image(&mut self, img: &ScoredImage<'_>) -> Result<(), ObserverError> {
        let here = (img.dataset_index, img.category_index);
        if self.current != Some(here) {
            self.current = Some(here);
            self.progress
                .set_message(format!("{} / {}", img.dataset.name, img.category.name));
        }
        if let Some(maps) = self.maps.as_mut() {
            maps.image(img).map_err(boxed)?;
        }
        if let Some(p) = self.pictures.as_mut() {
            let side = p.side;
            p.candidates.offer(
                img.sample_index,
                img.score.score,
                img.sample.anomalous,
                || gallery::small_map(&img.score.map, side),
            );
        }
        self.progress.inc(1);
        Ok(())
    }

    fn category_done(&mut self, done: &CategoryDone<'_>) -> Result<(), ObserverError> {
        if let Some(p) = self.pictures.as_mut() {
            self.progress.set_message(format!(
                "{} / {}: pictures",
                done.dataset.name, done.category.name
            ));
            p.category_done(done).map_err(boxed)?;
        }
        tracing::debug!(
            "{} / {}: {} images in {:.1} s (metrics {:.2} s)",
            done.dataset.name,
            done.category.name,
            done.result.images,
            done.result.seconds,
            done.result.metrics_seconds
        );
        Ok(())
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Seconds spent before the evaluation.
struct Setup {
    started: Instant,
    data_load_seconds: f64,
    model_load_seconds: f64,
}

fn timing(setup: &Setup, evaluation: &Evaluation) -> Timing {
    Timing::new(
        setup.data_load_seconds,
        setup.model_load_seconds,
        evaluation,
        setup.started.elapsed().as_secs_f64(),
    )
}

/// The `--json` report.
fn json_report(
    plan: &Plan,
    datasets: &[Dataset],
    evaluation: Evaluation,
    model: ModelSummary,
    timing: Timing,
    few_shot: Option<FewShotReport>,
) -> Result<Vec<u8>> {
    let report = Report {
        calibration: plan.calibration_args.calibration.clone(),
        few_shot,
        ..Report::new(plan.aupro, model, datasets, &plan.specs, evaluation, timing)
    };
    let mut bytes = serde_json::to_vec_pretty(&report)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The table on stdout, then the reports asked for; returns what was written.
fn write_reports(
    plan: &Plan,
    datasets: &[Dataset],
    folders: &[Vec<PathBuf>],
    detector: &Detector,
    maps: Option<MapsOut<'_>>,
    (evaluation, few_shot): (Evaluation, Option<FewShotReport>),
    timing: Timing,
) -> Result<Vec<String>> {
    let mut written: Vec<String> = Vec::new();
    if let Some(maps) = maps {
        written.push(format!(
            "{} maps and {}",
            timing.images,
            maps.finish()?.display()
        ));
    }
    let model = ModelSummary::new(detector);
    if let Some(dir) = &plan.outputs.pictures {
        gallery::write_index(dir, &evaluation.datasets, folders, plan.aupro, &model)?;
        written.push(dir.join("index.html").display().to_string());
    }
    print!(
        "{}",
        report::table::markdown(&evaluation.datasets, plan.aupro)
    );
    let defects = report::table::markdown_defects(&evaluation.datasets);
    if !defects.is_empty() {
        print!("\nPer defect type, against the category's normal images:\n\n{defects}");
    }
    let at = if plan.calibration.is_some() {
        "F1-max is reached at, and figures at the calibrated thresholds"
    } else {
        "F1-max is reached at"
    };
    print!(
        "\nThresholds where {at} (a value is positive when ≥ its threshold):\n\n{}",
        report::table::markdown_thresholds(&evaluation.datasets)
    );
    if let Some(fs) = &few_shot {
        let std: Vec<_> = fs.per_seed[0]
            .iter()
            .zip(&fs.datasets)
            .map(|(result, stats)| shots::with_statistic(result, stats, Statistic::Std))
            .collect();
        println!(
            "\nStandard deviation over the seeds (×100; K = {}, seeds {}):\n",
            fs.shots,
            seed_list(&fs.seeds)
        );
        print!("{}", report::table::markdown(&std, plan.aupro));
    }
    if let Some(path) = &plan.outputs.csv {
        write_file(path, &report::table::csv(&evaluation.datasets, plan.aupro)?)?;
        written.push(path.display().to_string());
    }
    if let Some(path) = &plan.outputs.json {
        write_file(
            path,
            &json_report(plan, datasets, evaluation, model, timing, few_shot)?,
        )?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

/// The stderr summary: time per image, set-up times, peak memory and the files written.
fn print_summary(timing: &Timing, written: &[String]) {
    let per_image = |s: f64| {
        if timing.images > 0 {
            s / timing.images as f64
        } else {
            0.0
        }
    };
    eprintln!(
        "{} images in {:.1} s: {:.1} ms per image ({:.1} images/s; model {:.1} ms per image), metrics {:.2} s; \
         data sets checked in {:.1} s, model loaded in {:.1} s",
        timing.images,
        timing.evaluation_seconds,
        1000.0 * timing.seconds_per_image,
        timing.images_per_second,
        1000.0 * per_image(timing.model_seconds),
        timing.metrics_seconds,
        timing.data_load_seconds,
        timing.model_load_seconds,
    );
    match eval::peak_rss_bytes() {
        Some(bytes) => eprintln!("peak memory (VmHWM): {}", mib(bytes)),
        None => eprintln!("peak memory: not reported by this system"),
    }
    if !written.is_empty() {
        eprintln!("wrote {}", written.join(", "));
    }
}

pub fn run(args: TestArgs) -> Result<i32> {
    let started = Instant::now();
    let plan = Plan::new(args)?;
    // Everything that can be checked is checked before the model is loaded.
    let datasets = load_datasets(&plan.specs, plan.allow_missing_masks)?;
    plan.outputs.prepare()?;
    let folders = names::category_folders(&datasets);
    let data_load_seconds = started.elapsed().as_secs_f64();

    let pools = match &plan.shots {
        Some(shots) => {
            Some(shots::reference_pools(&datasets, &plan.specs, shots.k).map_err(|e| anyhow!(e))?)
        }
        None => None,
    };
    let model_started = Instant::now();
    let mut detector = load_model(&plan)?;
    let mut plan = plan;
    plan.calibration = plan.calibration_args.load(&detector)?;
    let setup = Setup {
        started,
        data_load_seconds,
        model_load_seconds: model_started.elapsed().as_secs_f64(),
    };

    let side = detector.side() as usize;
    let mut observer = Observer::new(&plan, &datasets, &folders, side)?;
    let (evaluation, few_shot) = match &pools {
        None => {
            let mut condition = class_names_only(&plan, &datasets, &detector);
            match eval::evaluate_conditioned(
                &mut detector,
                &datasets,
                &plan.eval_options(),
                &mut observer,
                &mut condition,
            ) {
                Ok(e) => (e, None),
                Err(e) => {
                    observer.abandon(&e);
                    return Ok(crate::EXIT_SOME_FAILED);
                }
            }
        }
        Some(pools) => {
            match evaluate_over_seeds(&plan, &datasets, pools, &mut detector, &mut observer) {
                Ok(done) => done,
                Err(e) => {
                    observer.abandon(&e);
                    return Ok(crate::EXIT_SOME_FAILED);
                }
            }
        }
    };
    observer.progress.finish_and_clear();

    let timing = timing(&setup, &evaluation);
    let written = write_reports(
        &plan,
        &datasets,
        &folders,
        &detector,
        observer.maps,
        (evaluation, few_shot),
        timing,
    )?;
    print_summary(&timing, &written);
    Ok(0)
}

/// `0,1,2,3,4` as people write it.
fn seed_list(seeds: &[u64]) -> String {
    seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Sets each category's class name in the training-free prompts; with learned prompts, which
/// ignore class names, says so once and does nothing.
fn class_names_only<'a>(
    plan: &'a Plan,
    datasets: &'a [Dataset],
    detector: &Detector,
) -> impl FnMut(&mut Detector, usize, usize) -> Result<(), String> + 'a {
    let learned = detector.model().mode == headclip::model::PromptMode::Learned;
    if learned {
        tracing::info!("learned prompts are object-agnostic: class names are not used");
    }
    move |detector, d, c| {
        if learned {
            return Ok(());
        }
        let name = shots::class_name(&plan.specs[d], &datasets[d].categories[c]);
        detector.set_class_name(name)
    }
}

/// `--shots K`: one evaluation per seed, each category with its own K references drawn from
/// `pools` with that seed; returns the first seed's evaluation with the mean figures, and the
/// few-shot report. Maps and pictures are written for the first seed only.
fn evaluate_over_seeds<'p>(
    plan: &'p Plan,
    datasets: &[Dataset],
    pools: &[Vec<Vec<PathBuf>>],
    detector: &mut Detector,
    observer: &mut Observer<'p>,
) -> Result<(Evaluation, Option<FewShotReport>), EvalError> {
    let shots = plan.shots.as_ref().expect("few-shot plan");
    let mut per_seed = Vec::new();
    let mut references = Vec::new();
    let mut first: Option<Evaluation> = None;
    for (i, &seed) in shots.seeds.iter().enumerate() {
        tracing::info!(
            "few-shot: K = {} references per category, seed {seed} ({} of {})",
            shots.k,
            i + 1,
            shots.seeds.len()
        );
        let mut drawn: Vec<Vec<Vec<PathBuf>>> = pools
            .iter()
            .map(|ds| ds.iter().map(|_| Vec::new()).collect())
            .collect();
        let mut class_names = class_names_only(plan, datasets, detector);
        let mut condition = |detector: &mut Detector, d: usize, c: usize| {
            let refs = shots::draw(&pools[d][c], shots.k, seed);
            drawn[d][c] = refs.clone();
            detector.set_references(Some(References::Images(refs)))?;
            class_names(detector, d, c)
        };
        let mut quiet = Observer::progress_only(datasets);
        let watching: &mut dyn EvalObserver = if i == 0 { observer } else { &mut quiet };
        let evaluation = eval::evaluate_conditioned(
            detector,
            datasets,
            &plan.eval_options(),
            watching,
            &mut condition,
        )?;
        quiet.progress.finish_and_clear();
        per_seed.push(evaluation.datasets.clone());
        references.push(drawn);
        first.get_or_insert(evaluation);
    }
    let mut evaluation = first.expect("at least one seed");
    let stats = shots::over_seeds(&per_seed);
    evaluation.datasets = evaluation
        .datasets
        .iter()
        .zip(&stats)
        .map(|(result, s)| shots::with_statistic(result, s, Statistic::Mean))
        .collect();
    println!(
        "Few-shot, K = {} references per category, mean over seeds {} (β = {}):\n",
        shots.k,
        seed_list(&shots.seeds),
        shots.beta
    );
    Ok((
        evaluation,
        Some(FewShotReport {
            shots: shots.k,
            seeds: shots.seeds.clone(),
            beta: shots.beta,
            datasets: stats,
            references,
            per_seed,
        }),
    ))
}
