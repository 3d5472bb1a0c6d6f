//! The short fuzz run of `headclip serve` in CI: mutated raw HTTP requests from the fuzz
//! harness to this binary (tiny fixture model, 127.0.0.1:0), and the requests of past findings
//! replayed. The server must stay up, answer every complete request with no 5xx but 503/504,
//! and keep its memory bounded.

use std::path::PathBuf;
use std::time::Duration;

use headclip_fuzz::targets::{self, Context};
use headclip_fuzz::{known_findings, report, run, CountingAlloc, Settings, Summary};

mod common;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn settings(dir: &std::path::Path, inputs: u64) -> Settings {
    Settings {
        seed: 20261129,
        plan: vec![("http".into(), inputs)],
        seconds_per_target: None,
        input_limit: Duration::from_secs(10),
        memory_limit: 1 << 30,
        findings: dir.join("findings"),
        scratch: dir.join("scratch"),
        known: known_findings(),
        replay: None,
        context: Context {
            tiny: common::tiny(""),
            headclip: Some(PathBuf::from(env!("CARGO_BIN_EXE_headclip"))),
        },
        registry: targets::REGISTRY.to_vec(),
    }
}

fn run_printed(s: &Settings) -> Summary {
    let summary = run(s).unwrap();
    println!("{}", report::table(&summary));
    summary
}

#[test]
fn serve_survives_a_short_run_of_mutated_requests() {
    let dir = tempfile::tempdir().unwrap();
    let summary = run_printed(&settings(dir.path(), 400));
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(
        summary.new_findings().is_empty(),
        "{:#?}",
        summary.new_findings()
    );
    let http = &summary.targets[0];
    assert_eq!(http.inputs, 400);
    let refused: u64 = http.refused.values().sum();
    assert_eq!(http.accepted + refused + http.findings, 400);
    assert!(
        http.accepted >= 40,
        "only {} requests scored or answered 2xx",
        http.accepted
    );
    assert!(
        http.refused.len() >= 4,
        "refusals of few kinds: {:?}",
        http.refused
    );
}

/// Requests that once made the server fail, kept in crates/headclip-fuzz/regressions.
#[test]
fn past_http_findings_stay_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let folder = common::repo().join("crates/headclip-fuzz/regressions");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("http-")
        {
            continue;
        }
        let s = Settings {
            replay: Some(std::fs::read(&path).unwrap()),
            ..settings(dir.path(), 1)
        };
        let summary = run_printed(&s);
        assert_eq!(summary.inputs(), 1, "{}", path.display());
        assert!(
            summary.clean(),
            "{}: {:#?}",
            path.display(),
            summary.findings
        );
        replayed += 1;
    }
    assert!(replayed >= 1, "no saved requests in {}", folder.display());
}
