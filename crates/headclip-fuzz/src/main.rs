//! `headclip-fuzz`: runs the mutation fuzzer and prints its summary; exits 1 on any finding.
//!
//! ```sh
//! headclip-fuzz --seed 1 --inputs 1000                      # every target, 1000 inputs each
//! headclip-fuzz --target image=50000 --target http=2000 --seconds 600
//! headclip-fuzz --target image --replay findings/image-123-panic.bin
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use headclip_fuzz::targets::{self, Context};
use headclip_fuzz::{
    default_scratch, known_findings, memory, report, run, CountingAlloc, Settings,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser, Debug)]
#[command(
    about = "Mutation fuzzing of headclip's inputs: images, parameter and state files, CLIP checkpoints and configs, HTTP"
)]
struct Args {
    /// Seed of the input generator: the same seed makes the same inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A target to run, optionally with its own number of inputs (`image=5000`); repeatable.
    /// Default: every target (image, mask, params, state, checkpoint, clip_config, http).
    #[arg(long = "target", value_name = "NAME[=INPUTS]")]
    targets: Vec<String>,
    /// Inputs per target without their own number.
    #[arg(long, default_value_t = 1000)]
    inputs: u64,
    /// Time bound per target, in seconds: a target stops early when it is reached.
    #[arg(long)]
    seconds: Option<f64>,
    /// An input running longer than this many seconds is a hang (saved; the run stops).
    #[arg(long, default_value_t = 10.0)]
    input_limit_s: f64,
    /// Most memory one input may use, in MiB (heap live at once; resident growth for libtorch).
    #[arg(long, default_value_t = 1024)]
    memory_limit_mib: u64,
    /// Folder for findings (each input with a note).
    #[arg(long, default_value = "fuzz-findings")]
    findings: PathBuf,
    /// Folder each input is written to before it runs (default: /dev/shm/headclip-fuzz-PID);
    /// if the process dies, the input that killed it is there.
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Run this one saved input through the (single) target instead of generated ones.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// The `headclip` binary for the http target (default: beside this one).
    #[arg(long)]
    headclip: Option<PathBuf>,
    /// The tiny fixture model's folder (default: the one in this source tree).
    #[arg(long)]
    tiny: Option<PathBuf>,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run_cli(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("headclip-fuzz: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Whether the run was clean.
fn run_cli(args: Args) -> anyhow::Result<bool> {
    let plan = plan(&args)?;
    anyhow::ensure!(
        args.replay.is_none() || plan.len() == 1,
        "--replay needs exactly one --target"
    );
    let mut context = Context::in_source_tree();
    context.headclip = args.headclip.or(context.headclip);
    context.tiny = args.tiny.unwrap_or(context.tiny);
    let replay = match &args.replay {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let settings = Settings {
        seed: args.seed,
        plan,
        seconds_per_target: args.seconds,
        input_limit: Duration::from_secs_f64(args.input_limit_s),
        memory_limit: args.memory_limit_mib << 20,
        findings: args.findings,
        scratch: args
            .scratch
            .unwrap_or_else(|| default_scratch(&format!("headclip-fuzz-{}", std::process::id()))),
        known: known_findings(),
        replay,
        context,
        registry: targets::REGISTRY.to_vec(),
    };
    let summary = run(&settings)?;
    // Nothing is in flight after a run that ended: the scratch folder held only that.
    if settings
        .scratch
        .read_dir()
        .is_ok_and(|mut d| d.next().is_none())
    {
        let _ = std::fs::remove_dir(&settings.scratch);
    }
    print!("{}", report::table(&summary));
    if let Some(path) = &args.json {
        let (own, children, _) = memory::rusage();
        std::fs::write(
            path,
            serde_json::to_string_pretty(&report::json(&summary, (own, children)))?,
        )?;
    }
    Ok(summary.clean())
}

/// The targets to run, each with its number of inputs.
fn plan(args: &Args) -> anyhow::Result<Vec<(String, u64)>> {
    if args.targets.is_empty() {
        return Ok(targets::names()
            .into_iter()
            .map(|n| (n.to_string(), args.inputs))
            .collect());
    }
    args.targets
        .iter()
        .map(|t| match t.split_once('=') {
            Some((name, n)) => Ok((
                name.to_string(),
                n.parse().with_context(|| format!("--target {t}"))?,
            )),
            None => Ok((t.clone(), args.inputs)),
        })
        .collect()
}
