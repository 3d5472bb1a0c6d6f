//! The `headclip` command: a thin layer over the `headclip` library that parses arguments,
//! finds the weights, reports progress and errors, and writes files.

mod cmd_bench;
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
    /// Serve detection over HTTP, with a web page.
    Serve(cmd_serve::ServeArgs),
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
    let result = match cli.command {
        Command::Predict(args) => cmd_predict::run(args),
        Command::Train(args) => cmd_train::run(args),
        Command::Test(args) => cmd_test::run(args),
        Command::Serve(args) => cmd_serve::run(args),
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
