//! # headclip-fuzz
//!
//! A mutation fuzzer for what headclip reads from untrusted hands, on stable Rust: images of
//! every supported format (through headclip-data's decode and prepare API), learned-parameter
//! files with their `headclip.config`, training states, CLIP checkpoints as safetensors, and raw
//! HTTP requests to the real `headclip serve`. Each input is checked for panics, hangs (a
//! watchdog), and memory (a counting allocator, and the resident peak where libtorch
//! allocates); outcomes are counted per target and findings saved for `--replay`.
//!
//! This crate must not change what it tests: it only calls public APIs and the binary, and is
//! never a dependency of the engine or the command-line tool.

pub mod alloc;
pub mod memory;
pub mod mutate;
pub mod report;
pub mod run;
pub mod targets;

pub use alloc::CountingAlloc;
pub use run::{run, Settings, Summary};

/// The known findings of `known-findings.txt`: (a piece of the message, the note).
pub fn known_findings() -> Vec<(String, String)> {
    include_str!("../known-findings.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .map(|(signature, note)| (signature.to_string(), note.to_string()))
        .collect()
}

/// A memory-backed folder for inputs in flight when there is one (/dev/shm), else the
/// system's temporary folder; `name` keeps runs apart.
pub fn default_scratch(name: &str) -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(name)
}
