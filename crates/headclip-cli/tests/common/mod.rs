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

/// `headclip COMMAND` with the tiny model and its learned parameters, on 2 threads.
pub fn headclip_tiny_learned(command: &str) -> Command {
    let mut cmd = headclip();
    cmd.arg(command)
        .arg("--weights")
        .arg(tiny("clip_openai.safetensors"))
        .arg("--params")
        .arg(tiny("params_learned.safetensors"))
        .args(["--threads", "2"]);
    cmd
}

/// A process's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Copies a file, making the destination's folders.
pub fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}

/// The string metadata of a safetensors file's header.
pub fn safetensors_metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    header.metadata().clone().unwrap_or_default()
}

/// Copies the safetensors file `src` to `dst` with its metadata, letting `edit` change the raw
/// little-endian bytes of each tensor (given its name and dtype).
pub fn rewrite_safetensors(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, safetensors::Dtype, &mut [u8]),
) {
    rewrite(src, dst, |_| {}, edit);
}

/// Copies the safetensors file `src` to `dst`, letting `edit` change its string metadata.
pub fn rewrite_metadata(src: &Path, dst: &Path, edit: impl Fn(&mut HashMap<String, String>)) {
    rewrite(src, dst, edit, |_, _, _| {});
}

fn rewrite(
    src: &Path,
    dst: &Path,
    edit_metadata: impl Fn(&mut HashMap<String, String>),
    edit: impl Fn(&str, safetensors::Dtype, &mut [u8]),
) {
    let bytes = std::fs::read(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone();
    if let Some(m) = metadata.as_mut() {
        edit_metadata(m);
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut data: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut raw = view.data().to_vec();
        edit(&name, view.dtype(), &mut raw);
        data.push((name, view.dtype(), view.shape().to_vec(), raw));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(name, dtype, shape, raw)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), raw).unwrap();
            (name.clone(), view)
        })
        .collect();
    let out = safetensors::serialize(views, &metadata).unwrap();
    std::fs::write(dst, out).unwrap();
}

/// [`rewrite_safetensors`] for f32 tensors: `edit` sees the values of each.
pub fn rewrite_f32_tensors(src: &Path, dst: &Path, edit: impl Fn(&str, &mut [f32])) {
    rewrite_safetensors(src, dst, |name, dtype, raw| {
        assert_eq!(dtype, safetensors::Dtype::F32, "{name}");
        let mut values: Vec<f32> = raw
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        edit(name, &mut values);
        for (chunk, v) in raw.chunks_mut(4).zip(values) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
    });
}

/// Parameters whose values are finite but so large that the model overflows: head weights
/// (identity form, `w = θ`) of 3·10³⁸. Every score is then NaN or infinite.
pub fn overflowing_params(dir: &Path) -> PathBuf {
    let path = dir.join("overflow.safetensors");
    rewrite_f32_tensors(&tiny("params_identity.safetensors"), &path, |name, v| {
        if name == "lhw.theta" {
            v.fill(3e38);
        }
    });
    path
}
