//! # headclip
//!
//! The HeadCLIP engine: zero-shot anomaly detection with a frozen CLIP whose text prompts and
//! attention-head weights are adapted to the anomaly domain (arXiv 2505.22259), computed with
//! libtorch through `tch`. The model follows `shared/docs/headclip-spec.md`.
//!
//! Rooms, in the order data flows through them (decoding, pre-processing, data sets, overlays
//! and metrics need no libtorch and live in the crates `headclip-data` and `headclip-metrics`):
//! - [`clip`]: CLIP itself (tokenizer, text and vision transformers, checkpoint formats).
//! - [`model`]: HeadCLIP on top of CLIP: prompts, head weights, parameters file, scores and maps.
//! - [`detector`]: the inspection pipeline every entry point uses: images in, scores and maps out.
//! - [`eval`]: the evaluation protocol over data sets.
//! - [`train`]: learning the prompts and head weights.
//! - [`weights`]: the official CLIP checkpoints, their checksums, and downloading them.
//! - [`prng`]: the engine's own random numbers, reproducible on every CPU (random weights).
//! - [`runtime`]: process-wide preparation of libtorch (deterministic kernels).
//!
//! This crate must not print, parse command lines or decide policy about files on disk beyond
//! what it is asked to read or write: that belongs to `headclip-cli`.

pub mod calibration;
pub mod clip;
pub mod detector;
pub mod eval;
pub mod model;
pub mod prng;
pub mod runtime;
pub mod train;
pub mod weights;

/// Writes `bytes` to `path` so that readers see the old file or the whole new one, never a part:
/// a temporary file in the same folder, flushed, then renamed over the target.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    // The temporary file is created private (0600); the result should be readable like any
    // file the user writes.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// How many values of a floating-point tensor are NaN or infinite (0 for integer tensors).
pub fn non_finite_count(t: &tch::Tensor) -> i64 {
    if !t.is_floating_point() {
        return 0;
    }
    t.isfinite()
        .logical_not()
        .sum(tch::Kind::Int64)
        .int64_value(&[])
}
