//! `headclip calibrate`: thresholds for verdicts, chosen on a validation set
//! (`headclip-spec.md`, "Thresholds and verdicts").
//!
//! ```text
//! headclip calibrate --weights W [--params P] --data SPEC [--data SPEC ...] --out FILE
//!     [--quantile Q] [--batch-size N] [--allow-missing-masks]
//! ```
//!
//! With normal and anomalous images (labels), the image threshold maximises F1 of the joint
//! score and the pixel threshold maximises pixel F1 over the images with masks. With normal
//! images only (`folder:normal=DIR`, say), or with `--quantile`, both are that quantile (0.99 by
//! default) of the normal images' joint scores and map values. The file (JSON, written
//! atomically) records the thresholds, the method, the data, counts, the range of the
//! calibration values and everything that moves scores; `predict`, `test` and `serve` take it
//! with `--calibration FILE`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use headclip::calibration::{self, Choice, Method};
use headclip::eval::{EvalObserver, EvalOptions, ObserverError, ScoredImage};
use headclip::write_atomically;
use headclip_data::datasets::{DataSpec, DATA_SPEC_HELP};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cmd_test::load_datasets;
use crate::engine::{load_detector, FewShotArgs, ModelArgs};

fn parse_spec(s: &str) -> Result<DataSpec, String> {
    s.parse::<DataSpec>().map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The references and class name the calibrated model scores with: they move scores, so a
    /// calibration holds only for the same ones.
    #[command(flatten)]
    pub few_shot: FewShotArgs,
    /// The validation set, KIND:ROOT[,key=value...] (repeat for several): labelled, or normal
    /// images only. Never the images you will report figures on.
    #[arg(long = "data", value_name = "SPEC", required = true, value_parser = parse_spec, long_help = DATA_SPEC_HELP)]
    pub data: Vec<DataSpec>,
    /// Where the calibration file goes (JSON).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Take this quantile of the normal images' scores and map values even where labels exist
    /// (normal-only sets use 0.99 without it).
    #[arg(long, value_name = "Q")]
    pub quantile: Option<f64>,
    /// Images scored together.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Use categories where an anomalous image lacks its mask for the image threshold only.
    #[arg(long)]
    pub allow_missing_masks: bool,
}

/// A progress bar over the images.
struct Progress(ProgressBar);

impl EvalObserver for Progress {
    fn image(&mut self, _image: &ScoredImage<'_>) -> Result<(), ObserverError> {
        self.0.inc(1);
        Ok(())
    }
}

pub fn run(mut args: CalibrateArgs) -> Result<i32> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let choice = match args.quantile {
        Some(q) if !(0.0..=1.0).contains(&q) => bail!("--quantile {q} is not between 0 and 1"),
        Some(q) => Choice::Quantile(q),
        None => Choice::Auto,
    };
    if args.out.is_dir() {
        bail!("--out {} is a folder; give a file name", args.out.display());
    }
    let datasets = load_datasets(&args.data, args.allow_missing_masks)?;
    args.model.few_shot = Some(args.few_shot.clone());
    let detector = load_detector(&args.model)?;
    let total: usize = datasets.iter().map(|d| d.len()).sum();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let options = EvalOptions {
        batch_size: args.batch_size,
        ..EvalOptions::default()
    };
    let specs = args.data.iter().map(|s| s.as_str().to_string()).collect();
    let mut progress = Progress(bar);
    let calibration =
        calibration::calibrate(&detector, &datasets, specs, choice, &options, &mut progress)?;
    progress.0.finish_and_clear();
    write_atomically(&args.out, &calibration.to_json())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let method = match calibration.method {
        Method::F1Max => "F1-max over labelled images".to_string(),
        Method::Quantile { quantile } => format!("quantile {quantile} of normal images"),
    };
    let c = &calibration.counts;
    println!(
        "image threshold {} ({method}; {} images: {} normal, {} anomalous)",
        calibration.image.threshold, c.images, c.normal, c.anomalous
    );
    match calibration.pixel {
        Some(p) => println!(
            "pixel threshold {} (over {} maps)",
            p.threshold, c.pixel_images
        ),
        None => println!("pixel threshold: none (no pixel ground truth)"),
    }
    eprintln!("wrote {}", args.out.display());
    Ok(0)
}
