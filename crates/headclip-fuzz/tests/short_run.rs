//! The short fuzz run of CI: a fixed seed, a few thousand inputs over the image and file
//! targets, and the harness's own checks (panic, hang, memory) seen to fire on planted faults.

use std::path::Path;
use std::time::{Duration, Instant};

use headclip_fuzz::targets::{self, Builder, Context, Input, Outcome, Seed, Target};
use headclip_fuzz::{known_findings, report, run, CountingAlloc, Settings, Summary};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn settings(dir: &Path, plan: &[(&str, u64)], registry: Vec<(&'static str, Builder)>) -> Settings {
    Settings {
        seed: 20261129,
        plan: plan.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
        seconds_per_target: None,
        input_limit: Duration::from_secs(10),
        memory_limit: 1 << 30,
        findings: dir.join("findings"),
        scratch: dir.join("scratch"),
        known: known_findings(),
        replay: None,
        context: Context::in_source_tree(),
        registry,
    }
}

fn run_printed(s: &Settings) -> Summary {
    let summary = run(s).unwrap();
    println!("{}", report::table(&summary));
    summary
}

#[test]
fn images_and_files_survive_a_short_run() {
    let dir = tempfile::tempdir().unwrap();
    let plan = [
        ("image", 2000),
        ("mask", 500),
        ("params", 200),
        ("state", 60),
        ("checkpoint", 24),
        ("clip_config", 300),
    ];
    let summary = run_printed(&settings(dir.path(), &plan, targets::REGISTRY.to_vec()));
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(
        summary.new_findings().is_empty(),
        "new findings: {:#?}",
        summary.new_findings()
    );
    assert_eq!(summary.targets.len(), plan.len());
    for (t, (name, count)) in summary.targets.iter().zip(plan) {
        assert_eq!(
            (t.name.as_str(), t.inputs),
            (name, count),
            "every input ran"
        );
        let refused: u64 = t.refused.values().sum();
        assert_eq!(
            t.accepted + refused + t.findings,
            t.inputs,
            "{name}: every outcome counted"
        );
        // Mutations that never get past the first check, or never break anything, test nothing.
        assert!(
            t.accepted > t.inputs / 20,
            "{name}: only {} accepted",
            t.accepted
        );
        assert!(refused > t.inputs / 4, "{name}: only {refused} refused");
    }
    let image = &summary.targets[0];
    assert!(
        image.refused.len() >= 10,
        "image refusals of few kinds: {:?}",
        image.refused
    );
}

/// A target for checking the harness: seeds `ok` and three that trigger planted faults.
struct Planted(Vec<Seed>);

fn planted(_: &Context) -> anyhow::Result<Box<dyn Target>> {
    let seeds = ["ok", "PANIC", "HANG", "BLOW"]
        .iter()
        .map(|s| Seed {
            name: s.to_string(),
            bytes: s.as_bytes().to_vec(),
        })
        .collect();
    Ok(Box::new(Planted(seeds)))
}

impl Target for Planted {
    fn name(&self) -> &'static str {
        "planted"
    }
    fn seeds(&self) -> &[Seed] {
        &self.0
    }
    fn mutate(&self, _: &mut fastrand::Rng, _: &mut Vec<u8>, _: &[u8]) {}
    fn run(&mut self, input: &Input) -> Outcome {
        match input.bytes {
            b"PANIC" => panic!("planted panic on {:?}", input.path.file_name()),
            b"HANG" => std::thread::sleep(Duration::from_secs(3600)),
            b"BLOW" => drop(std::hint::black_box(vec![1u8; 64 << 20])),
            _ => {}
        }
        Outcome::Accepted
    }
}

fn planted_settings(dir: &Path, inputs: u64) -> Settings {
    let mut s = settings(
        dir,
        &[("planted", inputs)],
        vec![("planted", planted as Builder)],
    );
    s.input_limit = Duration::from_secs(2);
    s.memory_limit = 16 << 20;
    s
}

#[test]
fn a_panic_is_caught_saved_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let s = planted_settings(dir.path(), 2);
    let summary = run_printed(&s);
    assert!(!summary.clean());
    assert_eq!(summary.targets[0].inputs, 2);
    assert_eq!(summary.findings.len(), 1, "{:?}", summary.findings);
    let f = &summary.findings[0];
    assert_eq!((f.index, f.kind.as_str()), (1, "panic"));
    assert!(f.detail.contains("planted panic"), "{}", f.detail);
    assert_eq!(std::fs::read(&f.file).unwrap(), b"PANIC");
    let replay = Settings {
        replay: Some(std::fs::read(&f.file).unwrap()),
        ..s
    };
    let again = run(&replay).unwrap();
    assert_eq!((again.inputs(), again.findings.len()), (1, 1));
    assert_eq!(again.findings[0].kind, "panic");
}

#[test]
fn a_hang_stops_the_run_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let summary = run_printed(&planted_settings(dir.path(), 4));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let hang = summary
        .findings
        .iter()
        .find(|f| f.kind == "hang")
        .expect("a hang finding");
    assert_eq!(hang.index, 2);
    assert_eq!(std::fs::read(&hang.file).unwrap(), b"HANG");
    assert_eq!(summary.targets[0].inputs, 2, "the run stops at the hang");
}

#[test]
fn a_memory_blow_up_is_a_finding() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = planted_settings(dir.path(), 4);
    s.replay = Some(b"BLOW".to_vec());
    let summary = run_printed(&s);
    assert_eq!(summary.findings.len(), 1, "{:?}", summary.findings);
    assert_eq!(summary.findings[0].kind, "memory");
    assert!(summary.targets[0].peak_input_heap >= 64 << 20);
}
