//! `headclip bank`: builds the few-shot memory bank of a folder of normal images once and saves
//! it, so that `predict` and `serve` start without encoding the references again
//! (`--references BANK`). The file records the model it was built with and is refused by any
//! other.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use headclip::detector::{DEFAULT_BANK_CAP, DEFAULT_BETA};

use crate::engine::{load_detector, FewShotArgs, ModelArgs};

#[derive(Args, Debug)]
pub struct BankArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A folder of normal images of the part (searched recursively).
    #[arg(long, value_name = "DIR")]
    pub references: PathBuf,
    /// The most patch features per read-out layer the bank may hold (references × (S/P)²).
    #[arg(long, default_value_t = DEFAULT_BANK_CAP)]
    pub bank_cap: usize,
    /// Where to write the bank (safetensors).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn run(args: BankArgs) -> Result<i32> {
    if !args.references.is_dir() {
        bail!(
            "--references {}: not a folder (a bank is built from images)",
            args.references.display()
        );
    }
    if args.out.is_dir() {
        bail!("--out {} is a folder; give a file name", args.out.display());
    }
    let model = ModelArgs {
        few_shot: Some(FewShotArgs {
            references: Some(args.references.clone()),
            beta: DEFAULT_BETA,
            bank_cap: args.bank_cap,
            class_name: None,
        }),
        ..args.model
    };
    let detector = load_detector(&model)?;
    detector.save_bank(&args.out).map_err(|e| anyhow!("{e}"))?;
    let summary = detector
        .few_shot()
        .ok_or_else(|| anyhow!("no bank was built"))?;
    tracing::info!(
        "wrote {}: {} references, {} patch features per read-out layer",
        args.out.display(),
        summary.references.len(),
        summary.patches
    );
    Ok(0)
}
