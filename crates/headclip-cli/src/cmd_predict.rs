//! `headclip predict`: one JSON line per image on stdout, optional maps and overlays on disk.
//!
//! Decoding and pre-processing run on their own thread, ahead of the model, so that the CPU
//! cores the model does not use are not idle. A file that cannot be read is reported on its own
//! line and the run goes on; the exit status says whether any failed.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use anyhow::{bail, Result};
use clap::Args;
use headclip_data::images::{self, DecodeLimits, RgbImage};
use headclip::model::{HeadClip, ImageScore};
use headclip::write_atomically;
use headclip_data::viz;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tch::Tensor;

use crate::engine::{load_model, ModelArgs};

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Write `<name>.npy` (the S×S anomaly map, f32) and `<name>_overlay.png` here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Images scored together.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Refuse images with more pixels than this (decompression bombs), checked before decoding.
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
    pub max_pixels: u64,
    /// In folders, pass over files that are not images instead of reporting them as failures.
    #[arg(long)]
    pub skip_non_images: bool,
    /// Image files or folders (searched recursively).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// One input file and the name its outputs get.
#[derive(Debug, Clone)]
struct Input {
    path: PathBuf,
    /// The file's stem, or its path relative to the folder argument without the extension.
    name: PathBuf,
    from_folder: bool,
}

fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for arg in paths {
        if arg.is_dir() {
            let mut files = Vec::new();
            walk(arg, &mut files)?;
            files.sort();
            for path in files {
                let rel = path.strip_prefix(arg).unwrap_or(&path).with_extension("");
                inputs.push(Input {
                    path,
                    name: rel,
                    from_folder: true,
                });
            }
        } else {
            let stem = arg
                .file_stem()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("image"));
            inputs.push(Input {
                path: arg.clone(),
                name: stem,
                from_folder: false,
            });
        }
    }
    Ok(inputs)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

struct Prepared {
    input: Input,
    original: Option<RgbImage>,
    width: u32,
    height: u32,
    pixels: Vec<f32>,
}

enum Loaded {
    Ready(Box<Prepared>),
    Failed(Input, String),
    Skipped(Input),
}

fn load(
    input: Input,
    side: u32,
    limits: &DecodeLimits,
    keep_original: bool,
    skip_non_images: bool,
) -> Loaded {
    let bytes = match std::fs::read(&input.path) {
        Ok(b) => b,
        Err(e) => return Loaded::Failed(input, format!("cannot read: {e}")),
    };
    if skip_non_images && input.from_folder && !bytes.is_empty() && !data::is_image(&bytes) {
        return Loaded::Skipped(input);
    }
    match data::decode_rgb(&bytes, limits) {
        Ok(img) => {
            let pixels = data::preprocess(&img, side);
            let (width, height) = (img.width, img.height);
            let original = keep_original.then_some(img);
            Loaded::Ready(Box::new(Prepared {
                input,
                original,
                width,
                height,
                pixels,
            }))
        }
        Err(e) => Loaded::Failed(input, e.to_string()),
    }
}

pub fn run(args: PredictArgs) -> Result<i32> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut inputs = collect_inputs(&args.paths)?;
    if let Some(missing) = inputs.iter().find(|i| !i.from_folder && !i.path.exists()) {
        bail!("{} does not exist", missing.path.display());
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
        resolve_name_collisions(&mut inputs)?;
    }
    let model = load_model(&args.model)?;
    let side = model.image_size() as u32;
    let limits = DecodeLimits {
        max_pixels: args.max_pixels,
    };

    let progress = ProgressBar::new(inputs.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images, {per_sec}, eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (tx, rx) = sync_channel::<Loaded>(2 * args.batch_size);
    let keep_original = args.out.is_some();
    let skip = args.skip_non_images;
    let mut failed = 0usize;
    let mut scored = 0usize;
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            for input in inputs {
                if tx
                    .send(load(input, side, &limits, keep_original, skip))
                    .is_err()
                {
                    break;
                }
            }
        });
        let mut batch: Vec<Prepared> = Vec::with_capacity(args.batch_size);
        let mut pending = rx.iter().peekable();
        while let Some(item) = pending.next() {
            match item {
                Loaded::Ready(p) => batch.push(*p),
                Loaded::Failed(input, message) => {
                    failed += 1;
                    report_failure(&progress, &input.path, &message);
                    progress.inc(1);
                }
                Loaded::Skipped(input) => {
                    tracing::debug!("skipping {} (not an image)", input.path.display());
                    progress.inc(1);
                }
            }
            if batch.len() == args.batch_size || (pending.peek().is_none() && !batch.is_empty()) {
                let done = std::mem::take(&mut batch);
                let scores = score_batch(&model, &done, side);
                for (p, s) in done.iter().zip(scores) {
                    match emit(p, &s, side, args.out.as_deref()) {
                        Ok(()) => scored += 1,
                        Err(e) => {
                            failed += 1;
                            report_failure(&progress, &p.input.path, &format!("{e:#}"));
                        }
                    }
                    progress.inc(1);
                }
            }
        }
        Ok(())
    })?;
    progress.finish_and_clear();
    tracing::info!("{scored} images scored, {failed} failed");
    Ok(if failed > 0 {
        crate::EXIT_SOME_FAILED
    } else {
        0
    })
}

/// Files whose names differ only in their extension (BrainMRI has `Y92.jpg` and `Y92.png`) keep
/// it in their output name (`Y92_jpg`, `Y92_png`); any other collision is an error.
fn resolve_name_collisions(inputs: &mut [Input]) -> Result<()> {
    let mut count = std::collections::HashMap::new();
    for i in inputs.iter() {
        *count.entry(i.name.clone()).or_insert(0usize) += 1;
    }
    for i in inputs.iter_mut() {
        if count[&i.name] > 1 {
            if let Some(ext) = i.path.extension() {
                let mut name = i.name.clone().into_os_string();
                name.push("_");
                name.push(ext);
                tracing::warn!(
                    "{} is written as {}.npy: another file has the same stem",
                    i.path.display(),
                    name.to_string_lossy()
                );
                i.name = PathBuf::from(name);
            }
        }
    }
    let mut seen = std::collections::HashMap::new();
    for i in inputs.iter() {
        if let Some(first) = seen.insert(i.name.clone(), &i.path) {
            bail!(
                "{} and {} would both write {}.npy; pass their folder instead, so that outputs mirror its sub-folders",
                first.display(),
                i.path.display(),
                i.name.display()
            );
        }
    }
    Ok(())
}

fn report_failure(progress: &ProgressBar, path: &Path, message: &str) {
    progress.suspend(|| {
        eprintln!("error: {}: {message}", path.display());
        println!("{}", json!({"path": path, "error": message}));
    });
}

fn score_batch(model: &HeadClip, batch: &[Prepared], side: u32) -> Vec<ImageScore> {
    let s = side as i64;
    let flat: Vec<f32> = batch
        .iter()
        .flat_map(|p| p.pixels.iter().copied())
        .collect();
    let images = Tensor::from_slice(&flat).view([batch.len() as i64, 3, s, s]);
    model.score(&images)
}

fn emit(p: &Prepared, s: &ImageScore, side: u32, out: Option<&Path>) -> Result<()> {
    let n = s.map.len() as f64;
    let map_max = s.map.iter().copied().fold(f32::MIN, f32::max);
    let map_mean = (s.map.iter().map(|&v| v as f64).sum::<f64>() / n) as f32;
    let mut line = json!({
        "path": p.input.path,
        "score": s.score,
        "global_score": s.global_score,
        "pixel_score": s.pixel_score,
        "map_max": map_max,
        "map_mean": map_mean,
        "width": p.width,
        "height": p.height,
    });
    if let Some(out) = out {
        let base = out.join(&p.input.name);
        if let Some(parent) = base.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let npy_path = with_suffix(&base, ".npy");
        let map = ndarray::Array2::from_shape_vec((side as usize, side as usize), s.map.clone())?;
        let mut npy = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(&map, &mut npy)?;
        write_atomically(&npy_path, &npy)?;
        let overlay_path = with_suffix(&base, "_overlay.png");
        if let Some(original) = &p.original {
            let overlay = viz::overlay(original, &s.map, side as usize);
            write_atomically(&overlay_path, &viz::encode_png(&overlay)?)?;
        }
        line["map"] = json!(npy_path);
        line["overlay"] = json!(overlay_path);
    }
    println!("{line}");
    Ok(())
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
