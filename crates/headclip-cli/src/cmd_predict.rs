//! `headclip predict`: one JSON line per image on stdout, optional maps and overlays on disk.
//!
//! The library's detector streams the files: decoding runs on its own thread, ahead of the
//! model. A file that cannot be read is reported on its own
//! line and the run goes on; the exit status says whether any failed.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use headclip::detector::{Detection, StreamFailure, StreamOptions};
use headclip::write_atomically;
use headclip_data::images::{self, DecodeLimits, PreparedImage, Preprocessor};
use headclip_data::viz;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::calibration_args::CalibrationArgs;
use crate::cmd_test::report::names::append_to_file_name;
use crate::engine::{load_detector, FewShotArgs, ModelArgs};
use headclip::calibration::Calibration;

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub few_shot: FewShotArgs,
    /// Write `<name>.npy` (the S×S anomaly map, f32) and `<name>_overlay.png` here, and with
    /// --calibration `<name>_mask.png` (the predicted mask at the image's size).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    /// Overlays without the colour bar and the score drawn on them.
    #[arg(long)]
    pub plain_overlays: bool,
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

/// A file's or folder's identity on disk (device and inode): the same through any link.
type FileId = (u64, u64);

fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// The files to score, each once however many paths reach it. Folders are searched recursively,
/// following links, each folder once (a link back to a folder already searched is a loop and
/// is skipped with a warning, as is a broken link); `skip_dir`, the output folder, is never
/// searched.
fn collect_inputs(paths: &[PathBuf], skip_dir: Option<FileId>) -> Result<Vec<Input>> {
    let mut inputs = Vec::new();
    let mut walker = Walker {
        seen_dirs: std::collections::HashSet::new(),
        skip_dir,
    };
    let mut seen_files = std::collections::HashSet::new();
    let mut first_time = |path: &Path| match std::fs::metadata(path) {
        Ok(meta) if !seen_files.insert(file_id(&meta)) => {
            tracing::warn!(
                "{} is a file already listed (through a link or twice): scored once",
                path.display()
            );
            false
        }
        _ => true,
    };
    for arg in paths {
        if arg.is_dir() {
            let mut files = Vec::new();
            walker.walk_root(arg, &mut files)?;
            files.sort();
            for path in files {
                if !first_time(&path) {
                    continue;
                }
                let rel = path.strip_prefix(arg).unwrap_or(&path).with_extension("");
                inputs.push(Input {
                    path,
                    name: rel,
                    from_folder: true,
                });
            }
        } else {
            if !first_time(arg) {
                continue;
            }
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

struct Walker {
    /// Folders searched so far, by identity.
    seen_dirs: std::collections::HashSet<FileId>,
    skip_dir: Option<FileId>,
}

impl Walker {
    fn walk_root(&mut self, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let meta = std::fs::metadata(dir)
            .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?;
        if self.enter(dir, &meta) {
            self.walk(dir, out)?;
        }
        Ok(())
    }

    /// Whether to search the folder `dir`: not the output folder, not one searched already.
    fn enter(&mut self, dir: &Path, meta: &std::fs::Metadata) -> bool {
        let id = file_id(meta);
        if self.skip_dir == Some(id) {
            tracing::info!("not searching {}: it is the output folder", dir.display());
            return false;
        }
        if !self.seen_dirs.insert(id) {
            tracing::warn!(
                "skipping {}: a link to a folder already searched (a loop or a second path)",
                dir.display()
            );
            return false;
        }
        true
    }

    fn walk(&mut self, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries = std::fs::read_dir(dir)
            .and_then(|entries| entries.collect::<io::Result<Vec<_>>>())
            .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            // Follows links; a broken or looping one (ELOOP) is passed over.
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) => {
                    let link =
                        std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
                    let what = if link {
                        "a broken or looping link"
                    } else {
                        "unreadable"
                    };
                    tracing::warn!("skipping {}: {what} ({e})", path.display());
                    continue;
                }
            };
            if meta.is_dir() {
                if self.enter(&path, &meta) {
                    self.walk(&path, out)?;
                }
            } else {
                out.push(path);
            }
        }
        Ok(())
    }
}

/// Why an input has no result line.
enum Failure {
    /// Not an image, in a folder, with `--skip-non-images`: passed over quietly.
    Skipped,
    Failed(String),
    /// Standard output's reader has gone.
    ReaderGone,
}

/// Reads and pre-processes one input on a decoding worker.
fn prepare(
    preprocessor: &Preprocessor,
    input: &Input,
    keep_original: bool,
    skip_non_images: bool,
) -> Result<(PreparedImage, ()), Failure> {
    let bytes =
        std::fs::read(&input.path).map_err(|e| Failure::Failed(format!("cannot read: {e}")))?;
    if skip_non_images && input.from_folder && !bytes.is_empty() && !images::is_image(&bytes) {
        return Err(Failure::Skipped);
    }
    match preprocessor.prepare_encoded(&bytes, keep_original) {
        Ok(image) => Ok((image, ())),
        Err(e) => Err(Failure::Failed(e.to_string())),
    }
}

pub fn run(mut args: PredictArgs) -> Result<i32> {
    args.model.few_shot = Some(args.few_shot.clone());
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    // Outputs are never inputs: the output folder (when it exists already) is not searched.
    let out_dir = args
        .out
        .as_deref()
        .and_then(|out| std::fs::metadata(out).ok())
        .map(|meta| file_id(&meta));
    let mut inputs = collect_inputs(&args.paths, out_dir)?;
    if let Some(missing) = inputs.iter().find(|i| !i.from_folder && !i.path.exists()) {
        bail!("{} does not exist", missing.path.display());
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
        resolve_name_collisions(&mut inputs)?;
    }
    let detector = load_detector(&args.model)?.with_limits(DecodeLimits {
        max_pixels: args.max_pixels,
        ..DecodeLimits::default()
    });
    let calibration = args.calibration.load(&detector)?;
    let looks = Looks {
        calibration: calibration.as_ref(),
        plain_overlays: args.plain_overlays,
    };
    let progress = ProgressBar::new(inputs.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images, {per_sec}, eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let options = StreamOptions {
        batch_size: args.batch_size,
        workers: 1,
    };
    let preprocessor = *detector.preprocessor();
    let keep_original = args.out.is_some();
    let (mut scored, mut failed, mut reader_gone) = (0usize, 0usize, false);
    detector.detect_stream(
        &inputs,
        &options,
        |input| prepare(&preprocessor, input, keep_original, args.skip_non_images),
        |i, result| {
            let input = &inputs[i];
            progress.inc(1);
            let outcome = result
                .map_err(|failure| match failure {
                    StreamFailure::Prepare(f) => f,
                    StreamFailure::Score(e) => Failure::Failed(e.to_string()),
                })
                .and_then(|(detection, ())| {
                    emit(input, &detection, args.out.as_deref(), &looks).map_err(|e| match e
                        .downcast_ref::<io::Error>(
                    ) {
                        Some(io) if io.kind() == io::ErrorKind::BrokenPipe => Failure::ReaderGone,
                        _ => Failure::Failed(format!("{e:#}")),
                    })
                });
            let printed = match outcome {
                Ok(()) => {
                    scored += 1;
                    Ok(())
                }
                Err(Failure::Skipped) => {
                    tracing::debug!("skipping {} (not an image)", input.path.display());
                    Ok(())
                }
                Err(Failure::Failed(message)) => {
                    failed += 1;
                    report_failure(&progress, &input.path, &message)
                }
                Err(Failure::ReaderGone) => Err(io::ErrorKind::BrokenPipe.into()),
            };
            match printed {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    reader_gone = true;
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        },
    );
    progress.finish_and_clear();
    if reader_gone {
        return Ok(if failed > 0 {
            crate::EXIT_SOME_FAILED
        } else {
            0
        });
    }
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

fn report_failure(progress: &ProgressBar, path: &Path, message: &str) -> io::Result<()> {
    progress.suspend(|| {
        eprintln!("error: {}: {message}", path.display());
        print_line(&json!({"path": path, "error": message}))
    })
}

/// One JSON line on stdout. A reader that has gone (`headclip predict … | head -1`) is an
/// `io::Error` of kind `BrokenPipe`, which ends the run quietly, as Unix tools do.
fn print_line(line: &serde_json::Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// How results are dressed: verdicts from a calibration, overlays plain or annotated.
struct Looks<'a> {
    calibration: Option<&'a Calibration>,
    plain_overlays: bool,
}

fn emit(input: &Input, d: &Detection, out: Option<&Path>, looks: &Looks<'_>) -> Result<()> {
    let mut line = json!({
        "path": input.path,
        "score": d.score,
        "global_score": d.global_score,
        "pixel_score": d.pixel_score,
        "map_max": d.map_max,
        "map_mean": d.map_mean,
        "width": d.width,
        "height": d.height,
    });
    let verdict = looks.calibration.map(|c| c.verdict(d));
    if let Some(v) = &verdict {
        line["anomalous"] = json!(v.anomalous);
        line["normalised_score"] = json!(v.normalised_score);
        if let Some(n) = v.normalised_map_max {
            line["normalised_map_max"] = json!(n);
        }
        if let Some(n) = v.anomalous_pixels {
            line["anomalous_pixels"] = json!(n);
        }
    }
    if let Some(out) = out {
        let base = out.join(&input.name);
        if let Some(parent) = base.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let npy_path = append_to_file_name(&base, ".npy");
        let side = d.side as usize;
        let map = ndarray::ArrayView2::from_shape((side, side), &d.map)?;
        let mut npy = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(&map, &mut npy)?;
        write_atomically(&npy_path, &npy)?;
        let overlay_path = append_to_file_name(&base, "_overlay.png");
        if let Some(mut overlay) = d.overlay() {
            if !looks.plain_overlays {
                let annotation = viz::Annotation {
                    score: d.score,
                    verdict: verdict.as_ref().map(|v| v.anomalous),
                    pixel_threshold: looks.calibration.and_then(|c| c.pixel).map(|p| p.threshold),
                };
                viz::annotate(&mut overlay, &annotation);
            }
            write_atomically(&overlay_path, &viz::encode_png(&overlay)?)?;
        }
        line["map"] = json!(npy_path);
        line["overlay"] = json!(overlay_path);
        if let Some(mask) = looks.calibration.and_then(|c| c.predicted_mask(d)) {
            let mask_path = append_to_file_name(&base, "_mask.png");
            write_atomically(&mask_path, &viz::encode_mask_png(&mask, d.width, d.height)?)?;
            line["mask"] = json!(mask_path);
        }
    }
    print_line(&line)?;
    Ok(())
}
