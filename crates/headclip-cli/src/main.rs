//! The `headclip` command: a thin layer over the `headclip` library that parses arguments,
//! finds the weights, reports progress and errors, and writes files.

mod calibration_args;
mod cmd_bank;
mod cmd_bench;
mod cmd_calibrate;
mod cmd_predict;
mod cmd_serve;
mod cmd_test;
mod cmd_train;
mod cmd_weights;
mod engine;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "headclip",
    version,
    about = "Zero-shot visual anomaly detection with HeadCLIP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score images: an anomaly score and a heat map per image.
    Predict(cmd_predict::PredictArgs),
    /// Learn HeadCLIP's prompts and head weights on an annotated auxiliary data set.
    Train(cmd_train::TrainArgs),
    /// Evaluate on data sets with the published protocol: tables, curves, galleries.
    Test(cmd_test::TestArgs),
    /// Choose thresholds for verdicts on a validation set (labelled, or normal images only).
    Calibrate(cmd_calibrate::CalibrateArgs),
    /// Serve detection over HTTP, with a web page.
    Serve(cmd_serve::ServeArgs),
    /// Build and save the few-shot memory bank of a folder of normal images.
    Bank(cmd_bank::BankArgs),
    /// Time inference and training steps (see BENCHMARKS.md).
    Bench(cmd_bench::BenchArgs),
    /// Find, download, verify or generate CLIP checkpoints.
    Weights(cmd_weights::WeightsArgs),
}

/// Exit status when some inputs failed but the run went on.
pub const EXIT_SOME_FAILED: i32 = 1;
/// Exit status when the run could not start (bad arguments, no weights, unreadable model).
pub const EXIT_SETUP: i32 = 2;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEADCLIP_LOG")
                .unwrap_or_else(|_| "headclip=info".into()),
        )
        .with_target(false)
        .without_time()
        .init();
    let cli = Cli::parse();
    if let Err(e) = apply_cpu_chunk() {
        eprintln!("error: {e}");
        std::process::exit(EXIT_SETUP);
    }
    let result = match cli.command {
        Command::Predict(args) => cmd_predict::run(args),
        Command::Train(args) => cmd_train::run(args),
        Command::Test(args) => cmd_test::run(args),
        Command::Calibrate(args) => cmd_calibrate::run(args),
        Command::Serve(args) => cmd_serve::run(args),
        Command::Bank(args) => cmd_bank::run(args),
        Command::Bench(args) => cmd_bench::run(args),
        Command::Weights(args) => cmd_weights::run(args).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(EXIT_SETUP);
        }
    }
}

/// `HEADCLIP_CPU_CHUNK=N`: images per forward pass on the CPU (default 1, the fastest here), for
/// tests that must push real batches through the model and for benchmarks comparing chunks.
fn apply_cpu_chunk() -> Result<(), String> {
    let Ok(value) = std::env::var("HEADCLIP_CPU_CHUNK") else {
        return Ok(());
    };
    match value.parse::<i64>() {
        Ok(n) if n >= 1 => {
            headclip::model::set_cpu_chunk(n);
            Ok(())
        }
        _ => Err(format!(
            "HEADCLIP_CPU_CHUNK must be a whole number ≥ 1, not {value:?}"
        )),
    }
}
