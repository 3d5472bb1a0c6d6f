//! The campaign: inputs made deterministically from (seed, target, index), each run on a worker
//! thread under a watchdog, with panics caught and memory measured; outcomes tallied per
//! target; every finding's input saved for `--replay`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use fastrand::Rng;

use crate::targets::{self, Context, Input, Outcome, Target};
use crate::{alloc, memory};

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    /// Targets in order, each with its number of inputs.
    pub plan: Vec<(String, u64)>,
    /// Time bound per target (inputs stop early when it is reached).
    pub seconds_per_target: Option<f64>,
    /// An input running longer is a hang: saved, and the run stops.
    pub input_limit: Duration,
    /// Most heap bytes live at once for one input (and most resident growth, for libtorch).
    pub memory_limit: u64,
    /// Where findings are written.
    pub findings: PathBuf,
    /// Where each input is written before it runs (a memory-backed folder keeps this cheap); if
    /// the whole process dies, the input that killed it is left there.
    pub scratch: PathBuf,
    /// Findings already reported: (a piece of their detail, the note to show).
    pub known: Vec<(String, String)>,
    /// Run only this input (through the plan's first target) instead of generated ones.
    pub replay: Option<Vec<u8>>,
    pub context: Context,
    /// The targets the plan's names refer to (usually [`targets::REGISTRY`]).
    pub registry: Vec<(&'static str, targets::Builder)>,
}

/// A failure worth a bug report, with the file holding its input.
#[derive(Debug, Clone)]
pub struct Finding {
    pub target: String,
    pub index: u64,
    pub kind: String,
    pub detail: String,
    pub file: PathBuf,
    /// The note of the known-findings entry this one matches.
    pub known: Option<String>,
}

/// The counts of one target.
#[derive(Debug, Clone, Default)]
pub struct TargetSummary {
    pub name: String,
    pub inputs: u64,
    pub accepted: u64,
    pub refused: BTreeMap<String, u64>,
    pub findings: u64,
    pub seconds: f64,
    pub slowest_input_seconds: f64,
    /// The most heap bytes one input had live at once.
    pub peak_input_heap: u64,
    /// The most the process's resident size grew during one input (libtorch targets).
    pub peak_input_resident_growth: u64,
    pub notes: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub seed: u64,
    pub targets: Vec<TargetSummary>,
    pub findings: Vec<Finding>,
    /// A target that could not be set up, or a worker that vanished.
    pub errors: Vec<String>,
    pub seconds: f64,
    /// The largest resident size of the harness seen during the run.
    pub peak_resident: u64,
}

impl Summary {
    /// No finding and no error.
    pub fn clean(&self) -> bool {
        // Known findings count too: a run is clean only when nothing fails.
        self.findings.is_empty() && self.errors.is_empty()
    }

    /// Findings not in the known list.
    pub fn new_findings(&self) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.known.is_none()).collect()
    }

    pub fn inputs(&self) -> u64 {
        self.targets.iter().map(|t| t.inputs).sum()
    }
}

enum Event {
    Started {
        target: usize,
        index: u64,
    },
    Done(Box<Done>),
    TargetEnd {
        target: usize,
        notes: Vec<String>,
        seconds: f64,
    },
    SetupFailed(String),
}

struct Done {
    target: usize,
    index: u64,
    outcome: Outcome,
    seconds: f64,
    heap: u64,
    resident_growth: u64,
    resident_peak: u64,
    finding_file: Option<PathBuf>,
}

/// Setting a target up (loading a model, starting a server) may take this long.
const SETUP_LIMIT: Duration = Duration::from_secs(300);

/// Runs the campaign; returns when every target is done, or at the first hang.
pub fn run(settings: &Settings) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        alloc::installed(),
        "CountingAlloc is not the global allocator: memory could not be bounded"
    );
    std::fs::create_dir_all(&settings.findings)?;
    std::fs::create_dir_all(&settings.scratch)?;
    let started = Instant::now();
    let mut summary = Summary {
        seed: settings.seed,
        targets: settings
            .plan
            .iter()
            .map(|(n, _)| TargetSummary {
                name: n.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel();
    let worker_settings = settings.clone();
    install_panic_capture();
    std::thread::Builder::new()
        .name(WORKER_NAME.into())
        .spawn(move || {
            // A panic outside an input is the harness's own bug: reported, never silent.
            if panic::catch_unwind(AssertUnwindSafe(|| work(&worker_settings, &tx))).is_err() {
                let _ = tx.send(Event::SetupFailed(format!(
                    "the harness panicked: {}",
                    take_panic_message()
                )));
            }
        })?;
    watch(settings, &rx, &mut summary);
    summary.seconds = started.elapsed().as_secs_f64();
    summary.peak_resident = summary.peak_resident.max(memory::rusage().2);
    Ok(summary)
}

/// The watchdog: tallies events; an input in flight past the limit is a hang.
fn watch(settings: &Settings, rx: &Receiver<Event>, summary: &mut Summary) {
    let mut in_flight: Option<(usize, u64, Instant)> = None;
    loop {
        let wait = match in_flight {
            Some((_, _, since)) => settings.input_limit.saturating_sub(since.elapsed()),
            None => SETUP_LIMIT,
        };
        match rx.recv_timeout(wait) {
            Ok(Event::Started { target, index }) => {
                in_flight = Some((target, index, Instant::now()))
            }
            Ok(Event::Done(done)) => {
                in_flight = None;
                tally(summary, settings, *done);
            }
            Ok(Event::TargetEnd {
                target,
                notes,
                seconds,
            }) => {
                summary.targets[target].notes = notes;
                summary.targets[target].seconds = seconds;
            }
            Ok(Event::SetupFailed(e)) => summary.errors.push(e),
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                match in_flight {
                    Some((target, index, since)) => {
                        record_hang(settings, summary, target, index, since.elapsed())
                    }
                    None => summary.errors.push(format!(
                        "no progress for {} s outside any input",
                        SETUP_LIMIT.as_secs()
                    )),
                }
                return;
            }
        }
    }
}

fn tally(summary: &mut Summary, settings: &Settings, done: Done) {
    let t = &mut summary.targets[done.target];
    t.inputs += 1;
    t.slowest_input_seconds = t.slowest_input_seconds.max(done.seconds);
    t.peak_input_heap = t.peak_input_heap.max(done.heap);
    t.peak_input_resident_growth = t.peak_input_resident_growth.max(done.resident_growth);
    summary.peak_resident = summary.peak_resident.max(done.resident_peak);
    match done.outcome {
        Outcome::Accepted => t.accepted += 1,
        Outcome::Refused(kind) => *t.refused.entry(kind).or_default() += 1,
        Outcome::Finding { kind, detail } => {
            t.findings += 1;
            summary.findings.push(Finding {
                target: settings.plan[done.target].0.clone(),
                index: done.index,
                kind,
                file: done.finding_file.unwrap_or_default(),
                known: known_note(settings, &detail),
                detail,
            });
        }
    }
}

fn record_hang(
    settings: &Settings,
    summary: &mut Summary,
    target: usize,
    index: u64,
    ran: Duration,
) {
    let name = &settings.plan[target].0;
    let kind = "hang".to_string();
    let detail = format!(
        "still running after {:.1} s (limit {:.1} s)",
        ran.as_secs_f64(),
        settings.input_limit.as_secs_f64()
    );
    let file = finding_path(&settings.findings, name, index, &kind);
    let saved = std::fs::copy(in_flight_path(&settings.scratch, name), &file);
    let detail = match saved {
        Ok(_) => detail,
        Err(e) => format!("{detail}; the input could not be saved: {e}"),
    };
    write_note(settings, name, index, &kind, &detail, &file);
    summary.targets[target].findings += 1;
    let known = known_note(settings, &detail);
    summary.findings.push(Finding {
        target: name.clone(),
        index,
        kind,
        detail,
        file,
        known,
    });
}

const WORKER_NAME: &str = "headclip-fuzz-worker";

/// The worker: builds each target, then makes and runs its inputs.
fn work(settings: &Settings, tx: &Sender<Event>) {
    for (t, (name, count)) in settings.plan.iter().enumerate() {
        let mut target = match targets::build(&settings.registry, name, &settings.context) {
            Ok(target) => target,
            Err(e) => {
                let _ = tx.send(Event::SetupFailed(format!("target {name}: {e:#}")));
                continue;
            }
        };
        let started = Instant::now();
        let count = if settings.replay.is_some() { 1 } else { *count };
        for index in 0..count {
            if settings
                .seconds_per_target
                .is_some_and(|s| started.elapsed().as_secs_f64() >= s)
            {
                break;
            }
            let input = match &settings.replay {
                Some(bytes) => bytes.clone(),
                None => make_input(target.as_ref(), settings.seed, index),
            };
            let done = run_one(settings, t, target.as_mut(), index, &input, tx);
            if tx.send(Event::Done(Box::new(done))).is_err() {
                return;
            }
        }
        let _ = std::fs::remove_file(in_flight_path(&settings.scratch, name));
        let notes = target.notes();
        drop(target);
        let seconds = started.elapsed().as_secs_f64();
        let _ = tx.send(Event::TargetEnd {
            target: t,
            notes,
            seconds,
        });
    }
}

/// Input `index` of a target: its seeds as they are first, then mutations of them; a function of
/// (seed, target, index) alone, so any input can be made again.
pub fn make_input(target: &dyn Target, seed: u64, index: u64) -> Vec<u8> {
    let seeds = target.seeds();
    if let Some(s) = usize::try_from(index).ok().and_then(|i| seeds.get(i)) {
        return s.bytes.clone();
    }
    let mut rng = Rng::with_seed(mix(seed, target.name(), index));
    let base = &seeds[rng.usize(..seeds.len())];
    let partner = &seeds[rng.usize(..seeds.len())];
    let mut input = base.bytes.clone();
    target.mutate(&mut rng, &mut input, &partner.bytes);
    input
}

fn mix(seed: u64, name: &str, index: u64) -> u64 {
    // FNV-1a of the name, then splitmix64 over the three.
    let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut z = seed ^ name_hash.rotate_left(17) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs one input: written to disk first (so that a crash of the whole process leaves it there),
/// then through the target with panics caught and memory measured.
fn run_one(
    settings: &Settings,
    t: usize,
    target: &mut dyn Target,
    index: u64,
    input: &[u8],
    tx: &Sender<Event>,
) -> Done {
    let name = target.name();
    let path = in_flight_path(&settings.scratch, name);
    if let Err(e) = std::fs::write(&path, input) {
        return done_with(
            t,
            index,
            Outcome::Finding {
                kind: "harness".into(),
                detail: format!("cannot write {}: {e}", path.display()),
            },
        );
    }
    let native = target.allocates_natively();
    let resident_before = if native && memory::reset_resident_peak() {
        memory::resident()
    } else {
        0
    };
    let _ = tx.send(Event::Started { target: t, index });
    alloc::reset_peak();
    let heap_before = alloc::live() as u64;
    let started = Instant::now();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        target.run(&Input {
            bytes: input,
            path: &path,
        })
    }));
    let seconds = started.elapsed().as_secs_f64();
    let heap = (alloc::peak() as u64).saturating_sub(heap_before);
    let resident_peak = if native { memory::resident_peak() } else { 0 };
    let resident_growth = if native {
        resident_peak.saturating_sub(resident_before)
    } else {
        0
    };
    let outcome = match result {
        Err(_) => Outcome::Finding {
            kind: "panic".into(),
            detail: take_panic_message(),
        },
        Ok(_) if heap > settings.memory_limit || resident_growth > settings.memory_limit => {
            Outcome::Finding {
                kind: "memory".into(),
                detail: format!(
                    "peak heap {} MiB, resident growth {} MiB, over the limit of {} MiB",
                    heap >> 20,
                    resident_growth >> 20,
                    settings.memory_limit >> 20
                ),
            }
        }
        Ok(outcome) => outcome,
    };
    let finding_file = match &outcome {
        Outcome::Finding { kind, detail } => {
            Some(save_finding(settings, name, index, kind, detail, input))
        }
        _ => None,
    };
    Done {
        target: t,
        index,
        outcome,
        seconds,
        heap,
        resident_growth,
        resident_peak,
        finding_file,
    }
}

fn done_with(target: usize, index: u64, outcome: Outcome) -> Done {
    Done {
        target,
        index,
        outcome,
        seconds: 0.0,
        heap: 0,
        resident_growth: 0,
        resident_peak: 0,
        finding_file: None,
    }
}

fn known_note(settings: &Settings, detail: &str) -> Option<String> {
    settings
        .known
        .iter()
        .find(|(signature, _)| detail.contains(signature.as_str()))
        .map(|(_, note)| note.clone())
}

/// Where a target's input in flight is written.
pub fn in_flight_path(dir: &Path, target: &str) -> PathBuf {
    dir.join(format!("in-flight-{target}.bin"))
}

fn finding_path(dir: &Path, target: &str, index: u64, kind: &str) -> PathBuf {
    let slug: String = kind
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    dir.join(format!("{target}-{index}-{slug}.bin"))
}

fn save_finding(
    settings: &Settings,
    target: &str,
    index: u64,
    kind: &str,
    detail: &str,
    input: &[u8],
) -> PathBuf {
    let file = finding_path(&settings.findings, target, index, kind);
    if let Err(e) = std::fs::write(&file, input) {
        eprintln!("cannot save finding {}: {e}", file.display());
    }
    write_note(settings, target, index, kind, detail, &file);
    file
}

/// A text file beside the input: what happened and how to run it again.
fn write_note(
    settings: &Settings,
    target: &str,
    index: u64,
    kind: &str,
    detail: &str,
    file: &Path,
) {
    let note = format!(
        "target: {target}\nseed: {}\nindex: {index}\nkind: {kind}\ndetail: {detail}\n\
         replay: headclip-fuzz --target {target} --replay {}\n",
        settings.seed,
        file.display()
    );
    let _ = std::fs::write(file.with_extension("txt"), note);
}

thread_local! {
    /// The worker's last panic, set by the hook on the panicking thread itself.
    static PANIC_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics on the worker are recorded (message and place) instead of printed; other threads'
/// panics go to the hook that was there before.
fn install_panic_capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(WORKER_NAME) {
                PANIC_MESSAGE.with(|m| *m.borrow_mut() = Some(info.to_string()));
            } else {
                previous(info);
            }
        }));
    });
}

fn take_panic_message() -> String {
    PANIC_MESSAGE
        .with(|m| m.borrow_mut().take())
        .unwrap_or_else(|| "panic without a message".into())
}
