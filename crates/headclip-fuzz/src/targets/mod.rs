//! What gets fuzzed. A [`Target`] has seeds, a way to mutate them, and a way to run one input
//! through headclip's public API, saying whether it was accepted or refused (and why).
//!
//! Adding a target is one function returning it, listed in [`REGISTRY`]; a settings or model
//! file read through a path is a [`files::FileTarget`] built from seeds, a mutation and a loader.

pub mod files;
pub mod http;
pub mod images;

use std::path::{Path, PathBuf};

use fastrand::Rng;

/// What happened to one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Parsed or decoded without error.
    Accepted,
    /// Refused with an error, of this kind (a short label, for the summary table).
    Refused(String),
    /// Something that must never happen, seen by the target itself (a server that died, a
    /// 500, an unanswered request); the runner adds panics, hangs and memory blow-ups.
    Finding { kind: String, detail: String },
}

/// One input: its bytes, and the file holding them (for readers that take a path).
pub struct Input<'a> {
    pub bytes: &'a [u8],
    pub path: &'a Path,
}

/// A named starting point for mutation.
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
}

pub trait Target {
    fn name(&self) -> &'static str;
    fn seeds(&self) -> &[Seed];
    /// Turns a copy of a seed into an input; `partner` is another seed, for splicing.
    fn mutate(&self, rng: &mut Rng, input: &mut Vec<u8>, partner: &[u8]);
    fn run(&mut self, input: &Input) -> Outcome;
    /// Whether the code under test allocates outside Rust's allocator (libtorch), so that the
    /// process's resident memory must be watched too.
    fn allocates_natively(&self) -> bool {
        false
    }
    /// Lines for the summary beyond the counts (a server's memory, restarts).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What the targets may need: the tiny fixture model and the `headclip` binary.
#[derive(Debug, Clone)]
pub struct Context {
    /// The folder of the tiny random-weight fixture model.
    pub tiny: PathBuf,
    /// The `headclip` binary, for the HTTP target.
    pub headclip: Option<PathBuf>,
}

impl Context {
    /// The fixture folder of this source tree, and `headclip` beside the running executable.
    pub fn in_source_tree() -> Self {
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../headclip/tests/fixtures/tiny");
        let headclip = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("headclip")))
            .filter(|p| p.is_file());
        Self { tiny, headclip }
    }
}

/// Makes a target (loading what it needs: a model, a server).
pub type Builder = fn(&Context) -> anyhow::Result<Box<dyn Target>>;

/// Every target, by name, in the order they run.
pub const REGISTRY: &[(&str, Builder)] = &[
    ("image", images::image_target),
    ("mask", images::mask_target),
    ("params", files::params_target),
    ("state", files::state_target),
    ("checkpoint", files::checkpoint_target),
    ("clip_config", files::clip_config_target),
    ("http", http::http_target),
];

/// The names of [`REGISTRY`].
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|(n, _)| *n).collect()
}

/// Builds the target called `name` from `registry` (usually [`REGISTRY`]).
pub fn build(
    registry: &[(&str, Builder)],
    name: &str,
    ctx: &Context,
) -> anyhow::Result<Box<dyn Target>> {
    let (_, builder) = registry.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let known: Vec<&str> = registry.iter().map(|(n, _)| *n).collect();
        anyhow::anyhow!("unknown target {name:?} (known: {})", known.join(", "))
    })?;
    builder(ctx)
}

/// A short label for an error message, so that refusals group into a few kinds: the first
/// listed phrase the message contains.
pub fn error_kind(message: &str) -> String {
    const KINDS: [(&str, &str); 25] = [
        ("non-finite", "non-finite values"),
        ("outside", "field out of range"),
        ("must be", "field out of range"),
        ("not a sha256", "field out of range"),
        ("multiple of the patch", "field out of range"),
        ("invalid type", "field of wrong type"),
        ("unknown variant", "field of wrong type"),
        ("not a safetensors", "not safetensors"),
        ("not a valid safetensors", "not safetensors"),
        ("not a training-state file", "not a state file"),
        ("do not fit", "wrong shape"),
        ("header", "not safetensors"),
        ("invalidoffset", "not safetensors"),
        ("tensorinvalidinfo", "not safetensors"),
        ("incomplete", "not safetensors"),
        ("overflow", "not safetensors"),
        ("eof while parsing", "bad JSON"),
        ("expected value", "bad JSON"),
        ("metadata", "bad metadata"),
        ("dtype", "wrong dtype"),
        ("shape", "wrong shape"),
        ("missing tensor", "missing tensor"),
        ("unexpected tensor", "unexpected tensor"),
        ("not a clip checkpoint", "not CLIP"),
        ("deep prompts", "too many deep prompts"),
    ];
    let lower = message.to_ascii_lowercase();
    KINDS
        .iter()
        .find(|(needle, _)| lower.contains(needle))
        .map_or("other", |(_, label)| label)
        .to_string()
}
