//! Bad checkpoints and parameters files give errors that name the problem, never a panic.

use std::path::{Path, PathBuf};

use headclip::clip::{load_state_dict, Clip, ClipConfig};
use headclip::model::HeadClipParams;
use tch::{Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

fn error_of(path: &Path) -> String {
    match load_state_dict(path) {
        Ok(_) => panic!("{} loaded, expected an error", path.display()),
        Err(e) => e.to_string(),
    }
}

fn write_prefix(src: &Path, dir: &Path, name: &str, fraction: f64) -> PathBuf {
    let bytes = std::fs::read(src).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &bytes[..(bytes.len() as f64 * fraction) as usize]).unwrap();
    path
}

#[test]
fn truncated_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let st = write_prefix(
        &fixtures().join("clip_openai.safetensors"),
        dir.path(),
        "a.safetensors",
        0.5,
    );
    let e = error_of(&st);
    assert!(
        e.contains("a.safetensors") && e.contains("truncated"),
        "{e}"
    );
    let pt = write_prefix(&fixtures().join("clip_openai.pt"), dir.path(), "b.pt", 0.5);
    let e = error_of(&pt);
    assert!(e.contains("b.pt") && e.contains("TorchScript"), "{e}");
}

#[test]
fn empty_and_foreign_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pt");
    std::fs::write(&empty, b"").unwrap();
    assert!(error_of(&empty).contains("empty"));
    let text = dir.path().join("notes.safetensors");
    std::fs::write(&text, b"these are not weights\n").unwrap();
    let e = error_of(&text);
    assert!(e.contains("neither a TorchScript archive"), "{e}");
    let pickle = dir.path().join("state.bin");
    std::fs::write(&pickle, [0x80u8, 0x02, b'}', b'q']).unwrap();
    assert!(error_of(&pickle).contains("pickle"));
    // A valid safetensors file that is not CLIP: a HeadCLIP parameters file.
    let e = error_of(&fixtures().join("params_learned.safetensors"));
    assert!(
        e.contains("not a CLIP checkpoint") && e.contains("visual.conv1.weight"),
        "{e}"
    );
}

fn rewritten(dir: &Path, edit: impl Fn(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let mut tensors = Tensor::read_safetensors(fixtures().join("clip_openai.safetensors")).unwrap();
    edit(&mut tensors);
    let path = dir.join("edited.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

fn build_error(path: &Path) -> String {
    let state = match load_state_dict(path) {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    match Clip::from_state_dict(&state, Device::Cpu) {
        Ok(_) => panic!("built CLIP from a broken checkpoint"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = rewritten(dir.path(), |t| {
        t.retain(|(k, _)| k != "visual.transformer.resblocks.2.mlp.c_fc.bias")
    });
    let e = build_error(&missing);
    assert!(
        e.contains("missing tensor `visual.transformer.resblocks.2.mlp.c_fc.bias`"),
        "{e}"
    );

    let misshaped = rewritten(dir.path(), |t| {
        for (k, v) in t.iter_mut() {
            if k == "visual.proj" {
                *v = Tensor::zeros([128, 32], (tch::Kind::Half, Device::Cpu));
            }
        }
    });
    let e = build_error(&misshaped);
    assert!(
        e.contains("`visual.proj`") && e.contains("[128, 32]"),
        "{e}"
    );
}

#[test]
fn parameters_for_another_backbone_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let state = load_state_dict(&fixtures().join("clip_openai.safetensors")).unwrap();
    let config = ClipConfig::infer(&state).unwrap();
    let mut tensors =
        Tensor::read_safetensors(fixtures().join("params_learned.safetensors")).unwrap();
    for (k, v) in tensors.iter_mut() {
        if k == "prompt.ctx_pos" {
            *v = Tensor::zeros([12, 768], (tch::Kind::Float, Device::Cpu));
        }
    }
    let path = dir.path().join("params.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let e = HeadClipParams::load(&path, &config)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("prompt.ctx_pos") && e.contains("[12, 768]") && e.contains("[12, 64]"),
        "{e}"
    );

    let truncated = write_prefix(
        &fixtures().join("params_learned.safetensors"),
        dir.path(),
        "p.safetensors",
        0.3,
    );
    let e = HeadClipParams::load(&truncated, &config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("p.safetensors"), "{e}");
}

#[test]
fn tensors_only_parameters_file_uses_the_defaults() {
    // Without metadata the spec's defaults apply; for this 6-layer backbone they give
    // dpam_start 2 (5 rows of θ), so the 4-row fixture must be refused with that reason.
    let dir = tempfile::tempdir().unwrap();
    let state = load_state_dict(&fixtures().join("clip_openai.safetensors")).unwrap();
    let config = ClipConfig::infer(&state).unwrap();
    let tensors = Tensor::read_safetensors(fixtures().join("params_learned.safetensors")).unwrap();
    let path = dir.path().join("bare.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let e = HeadClipParams::load(&path, &config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lhw.theta") && e.contains("[5, 2]"), "{e}");
}
