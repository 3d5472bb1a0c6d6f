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
//! Exit status: 0 done; 1 an image or mask failed to decode (or an output failed to write) during
//! the evaluation, which stops it; 2 the run could not start (bad option or data set, no
//! weights).

#[path = "report/mod.rs"]
mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use headclip::eval::select::Instructive;
use headclip::eval::{
    self, AuproVariants, CategoryDone, DatasetReport, EvalObserver, EvalOptions, ModelSummary,
    ObserverError, Report, ScoredImage, Timing,
};
use headclip::write_atomically;
use headclip_data::datasets::{self, DataSpec, Dataset, LoadOptions, DATA_SPEC_HELP};
use headclip_data::images::DecodeLimits;
use headclip_metrics::AUPRO_FPR_LIMIT;
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::{load_detector, ModelArgs};
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
}

/// Peak resident memory of this process (`VmHWM` of `/proc/self/status`), in bytes.
fn peak_rss_bytes() -> Option<u64> {
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

/// Loads and checks every data set before anything is computed; prints their warnings.
fn load_datasets(specs: &[DataSpec], allow_missing_masks: bool) -> Result<Vec<Dataset>> {
    let opts = LoadOptions {
        allow_missing_masks,
        check_sizes: true,
    };
    let mut out: Vec<Dataset> = Vec::new();
    for spec in specs {
        let ds = datasets::load(spec, &opts).with_context(|| format!("--data {spec}"))?;
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
        out.push(ds);
    }
    Ok(out)
}

/// Creates output folders and checks that report files can go where asked, before compute.
fn prepare_outputs(args: &TestArgs) -> Result<()> {
    for dir in [&args.save_maps, &args.pictures].into_iter().flatten() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for file in [&args.json, &args.csv].into_iter().flatten() {
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

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// `--save-maps`: .npy files as images are scored, and the rows of `scores.csv`.
struct MapsOut<'a> {
    dir: &'a Path,
    names: Vec<Vec<Vec<PathBuf>>>,
    side: usize,
    rows: String,
    last_dir: Option<PathBuf>,
}

impl MapsOut<'_> {
    fn image(&mut self, img: &ScoredImage<'_>) -> Result<()> {
        let name = &self.names[img.dataset_index][img.category_index][img.sample_index];
        let rel = names::with_suffix(name, ".npy");
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
        let rel_text: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let s = img.sample;
        self.rows.push_str(&report::csv_line(&[
            img.dataset.name.clone(),
            img.category.name.clone(),
            s.image.display().to_string(),
            if s.anomalous { "1".into() } else { "0".into() },
            s.mask
                .as_ref()
                .map(|m| m.display().to_string())
                .unwrap_or_default(),
            format!("{}", img.score.score),
            format!("{}", img.score.global_score),
            format!("{}", img.score.pixel_score),
            rel_text.join("/"),
        ]));
        Ok(())
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

struct Observer<'a> {
    progress: ProgressBar,
    current: Option<(usize, usize)>,
    maps: Option<MapsOut<'a>>,
    pictures: Option<PicturesOut<'a>>,
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
            let progress = &self.progress;
            progress.set_message(format!(
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

pub fn run(args: TestArgs) -> Result<i32> {
    let started = Instant::now();
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.decode_threads == Some(0) {
        bail!("--decode-threads must be at least 1");
    }
    let aupro: AuproVariants = args.aupro.into();
    let limits = DecodeLimits {
        max_pixels: args.max_pixels,
    };

    // Everything that can be checked is checked before the model is loaded.
    let datasets = load_datasets(&args.data, args.allow_missing_masks)?;
    prepare_outputs(&args)?;
    let folders = names::category_folders(&datasets);
    let map_names = args
        .save_maps
        .as_ref()
        .map(|_| names::map_names(&datasets, &folders));
    let data_load_seconds = started.elapsed().as_secs_f64();

    let model_started = Instant::now();
    let decode_threads = args.decode_threads.unwrap_or_else(|| {
        if args.model.device.starts_with("cuda") {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1).clamp(1, 4))
        } else {
            1
        }
    });
    // On the CPU the decoding threads need cores of their own: libtorch's threads spin while
    // they wait, and sharing cores with them slows both down many times over.
    let cpu = !args.model.device.starts_with("cuda");
    if cpu && args.model.threads.is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tch::set_num_threads(cores.saturating_sub(decode_threads).max(1) as i32);
    }
    let detector = load_detector(&args.model)?.with_limits(limits);
    let model_load_seconds = model_started.elapsed().as_secs_f64();
    let side = detector.side() as usize;
    let total: usize = datasets.iter().map(Dataset::len).sum();

    let progress = ProgressBar::new(total as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images, {per_sec}, eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut observer = Observer {
        progress: progress.clone(),
        current: None,
        maps: args
            .save_maps
            .as_deref()
            .zip(map_names)
            .map(|(dir, names)| MapsOut {
                dir,
                names,
                side,
                rows: report::csv_line(&[
                    "dataset",
                    "category",
                    "image",
                    "label",
                    "mask",
                    "score",
                    "global_score",
                    "pixel_score",
                    "npy",
                ]),
                last_dir: None,
            }),
        pictures: args.pictures.as_deref().map(|dir| PicturesOut {
            dir,
            folders: &folders,
            gallery_size: args.gallery_size,
            side,
            aupro,
            limits,
            candidates: Instructive::new(args.gallery_size),
        }),
    };
    let options = EvalOptions {
        batch_size: args.batch_size,
        decode_threads,
        pixel_curves: args.pictures.is_some(),
    };
    let evaluation = match eval::evaluate(&detector, &datasets, &options, &mut observer) {
        Ok(e) => e,
        Err(e) => {
            progress.abandon();
            eprintln!("error: {e}");
            eprintln!(
                "error: the evaluation stopped after {} of {total} images; no report was written",
                progress.position()
            );
            return Ok(crate::EXIT_SOME_FAILED);
        }
    };
    progress.finish_and_clear();

    let mut written: Vec<String> = Vec::new();
    if let Some(maps) = &observer.maps {
        let path = maps.dir.join("scores.csv");
        write_file(&path, maps.rows.as_bytes())?;
        written.push(format!("{} maps and {}", total, path.display()));
    }
    let summary = ModelSummary::new(&detector);
    if let Some(dir) = &args.pictures {
        gallery::write_index(
            dir,
            &datasets,
            &evaluation.datasets,
            &folders,
            aupro,
            &summary,
        )?;
        written.push(format!("{}", dir.join("index.html").display()));
    }

    print!("{}", report::table::markdown(&evaluation.datasets, aupro));

    if let Some(path) = &args.csv {
        write_file(
            path,
            report::table::csv(&evaluation.datasets, aupro).as_bytes(),
        )?;
        written.push(path.display().to_string());
    }
    let peak = peak_rss_bytes();
    let images = evaluation.images;
    let per_image = |s: f64| if images > 0 { s / images as f64 } else { 0.0 };
    let mut timing = Timing {
        data_load_seconds,
        model_load_seconds,
        evaluation_seconds: evaluation.seconds,
        model_seconds: evaluation.model_seconds,
        metrics_seconds: evaluation.metrics_seconds,
        images,
        images_per_second: if evaluation.seconds > 0.0 {
            images as f64 / evaluation.seconds
        } else {
            0.0
        },
        seconds_per_image: per_image(evaluation.seconds),
        total_seconds: 0.0,
    };
    if let Some(path) = &args.json {
        timing.total_seconds = started.elapsed().as_secs_f64();
        let report = Report {
            headclip_version: env!("CARGO_PKG_VERSION").to_string(),
            aupro,
            aupro_fpr_limit: AUPRO_FPR_LIMIT,
            table_scale: 100.0,
            model: summary,
            datasets: datasets
                .iter()
                .zip(&args.data)
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
            timing,
            peak_rss_bytes: peak,
        };
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        write_file(path, &bytes)?;
        written.push(path.display().to_string());
    }

    eprintln!(
        "{images} images in {:.1} s: {:.1} ms per image ({:.1} images/s; model {:.1} ms per image), metrics {:.2} s; \
         data sets checked in {:.1} s, model loaded in {:.1} s",
        evaluation.seconds,
        1000.0 * per_image(evaluation.seconds),
        timing.images_per_second,
        1000.0 * per_image(evaluation.model_seconds),
        evaluation.metrics_seconds,
        data_load_seconds,
        model_load_seconds,
    );
    match peak {
        Some(bytes) => eprintln!("peak memory (VmHWM): {}", mib(bytes)),
        None => eprintln!("peak memory: not reported by this system"),
    }
    if !written.is_empty() {
        eprintln!("wrote {}", written.join(", "));
    }
    Ok(0)
}
