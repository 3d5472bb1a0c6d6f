//! Model load without copies or repeated whole-file work: fp32 safetensors tensors are views of
//! one memory map, and a file's checksum and finiteness check are remembered per version of the
//! file, then forgotten when it changes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use headclip::clip::load_state_dict;
use headclip::weights::{sha256_file, sha256_file_cached, SHA256_SUBDIR};
use tch::Tensor;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/clip_openai.safetensors")
}

/// Sets the file's modification time an hour back, out of the window in which a fresh write
/// could go unnoticed (such files are never remembered).
fn age(path: &Path) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

/// The tiny fixture (stored in fp16) written again in fp32.
fn tiny_fp32(dir: &Path) -> PathBuf {
    let state = load_state_dict(&tiny()).unwrap();
    let tensors: Vec<(String, Tensor)> = state
        .keys()
        .map(|k| (k.clone(), state.get(k).unwrap().shallow_clone()))
        .collect();
    let path = dir.join("clip_fp32.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

#[test]
fn fp32_tensors_are_views_of_the_mapped_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_fp32(dir.path());
    let bytes = fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let offset =
        |key: &str| file.tensor(key).unwrap().data().as_ptr() as usize - bytes.as_ptr() as usize;
    let state = load_state_dict(&path).unwrap();
    let keys: Vec<String> = state.keys().cloned().collect();
    let first = &keys[0];
    let address = |key: &str| state.get(key).unwrap().data_ptr() as usize;
    // Copies would sit wherever the allocator put them; views keep the file's layout.
    for key in &keys[1..] {
        assert_eq!(
            address(key).wrapping_sub(address(first)),
            offset(key).wrapping_sub(offset(first)),
            "`{key}` is not a view of the mapped file"
        );
    }
    // The values are the stored ones.
    let again = load_state_dict(&tiny()).unwrap();
    for key in &keys {
        assert!(
            state.get(key).unwrap().equal(again.get(key).unwrap()),
            "{key}"
        );
    }
}

#[test]
fn sha256_is_remembered_per_version_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let path = dir.path().join("weights.bin");
    fs::write(&path, vec![7u8; 100_000]).unwrap();
    age(&path);
    let real = sha256_file(&path).unwrap();
    assert_eq!(sha256_file_cached(&path, Some(&cache)).unwrap(), real);

    // The next call reads the entry, not the file: a planted value comes back.
    let entries: Vec<PathBuf> = fs::read_dir(cache.join(SHA256_SUBDIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1);
    let planted = "f".repeat(64);
    let entry = fs::read_to_string(&entries[0]).unwrap();
    fs::write(&entries[0], entry.replace(&real, &planted)).unwrap();
    assert_eq!(sha256_file_cached(&path, Some(&cache)).unwrap(), planted);

    // Same size, modification time put back: the change time still tells.
    fs::write(&path, vec![8u8; 100_000]).unwrap();
    age(&path);
    let changed = sha256_file(&path).unwrap();
    assert_ne!(changed, real);
    assert_eq!(sha256_file_cached(&path, Some(&cache)).unwrap(), changed);

    // Replaced by another file (another inode) of the same size and times.
    let other = dir.path().join("other.bin");
    fs::write(&other, vec![9u8; 100_000]).unwrap();
    age(&other);
    fs::rename(&other, &path).unwrap();
    assert_eq!(
        sha256_file_cached(&path, Some(&cache)).unwrap(),
        sha256_file(&path).unwrap()
    );
}

#[test]
fn a_file_written_moments_ago_is_not_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let path = dir.path().join("fresh.bin");
    fs::write(&path, b"just written").unwrap();
    assert_eq!(
        sha256_file_cached(&path, Some(&cache)).unwrap(),
        sha256_file(&path).unwrap()
    );
    assert!(!cache.join(SHA256_SUBDIR).exists());
}

#[test]
fn a_remembered_finite_check_does_not_survive_a_change_to_nan() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_fp32(dir.path());
    age(&path);
    load_state_dict(&path).unwrap(); // scanned and remembered
    load_state_dict(&path).unwrap(); // remembered

    // One weight becomes NaN, in place, same size.
    let mut bytes = fs::read(&path).unwrap();
    let at = {
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        file.tensor("visual.proj").unwrap().data().as_ptr() as usize - bytes.as_ptr() as usize
    };
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    age(&path);
    let error = load_state_dict(&path)
        .err()
        .expect("NaN refused")
        .to_string();
    assert!(
        error.contains("visual.proj") && error.contains("non-finite"),
        "{error}"
    );
}
