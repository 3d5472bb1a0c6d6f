//! `Detector.evaluate`: `headclip test`'s evaluation and JSON report, without its files.

use std::time::Instant;

use headclip::detector::Detector;
use headclip::eval::{self, AuproVariants, EvalOptions, ModelSummary, Report, Timing};
use headclip_data::datasets::{self, DataSpec, Dataset, LoadOptions};

/// What to evaluate, and how.
pub struct Request {
    /// The CLI's `--data` strings.
    pub specs: Vec<String>,
    pub batch_size: usize,
    pub decode_threads: usize,
    pub allow_missing_masks: bool,
}

/// Loads and checks every data set, evaluates them, and returns the report as JSON; errors
/// carry `headclip test`'s messages.
pub fn run(detector: &Detector, request: &Request) -> Result<String, String> {
    let started = Instant::now();
    let specs = request
        .specs
        .iter()
        .map(|s| {
            s.parse::<DataSpec>()
                .map_err(|e| format!("data set {s:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = LoadOptions {
        allow_missing_masks: request.allow_missing_masks,
        check_sizes: true,
    };
    let loaded = specs
        .iter()
        .map(|spec| datasets::load(spec, &options).map_err(|e| format!("--data {spec}: {e}")))
        .collect::<Result<Vec<Dataset>, _>>()?;
    let data_load_seconds = started.elapsed().as_secs_f64();
    let eval_options = EvalOptions {
        batch_size: request.batch_size,
        decode_threads: request.decode_threads,
        ..EvalOptions::default()
    };
    let evaluation =
        eval::evaluate(detector, &loaded, &eval_options, &mut ()).map_err(|e| e.to_string())?;
    let timing = Timing::new(
        data_load_seconds,
        0.0,
        &evaluation,
        started.elapsed().as_secs_f64(),
    );
    let report = Report::new(
        AuproVariants::default(),
        ModelSummary::new(detector),
        &loaded,
        &specs,
        evaluation,
        timing,
    );
    serde_json::to_string(&report).map_err(|e| e.to_string())
}
