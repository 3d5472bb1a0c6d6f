//! Paths and small helpers shared by the `headclip` binary's end-to-end tests.
// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `../shared/data`, read in place.
pub fn shared_data() -> PathBuf {
    repo().join("../shared/data")
}

/// A file of the tiny random-weight fixture model.
pub fn tiny(file: &str) -> PathBuf {
    repo()
        .join("crates/headclip/tests/fixtures/tiny")
        .join(file)
}

/// The binary under test, blind to the user's `HEADCLIP_WEIGHTS`, logging at info level.
pub fn headclip() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_headclip"));
    command
        .env_remove("HEADCLIP_WEIGHTS")
        .env("HEADCLIP_LOG", "headclip=info");
    command
}

/// The string metadata of a safetensors file's header.
pub fn safetensors_metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    header.metadata().clone().unwrap_or_default()
}
