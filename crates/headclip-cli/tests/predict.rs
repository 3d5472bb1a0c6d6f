//! `headclip predict` end to end, with the tiny random-weight fixture model.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

mod common;
use common::{repo, tiny};

fn headclip(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = common::headclip();
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run headclip")
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn model_args() -> Vec<String> {
    vec![
        "predict".into(),
        "--weights".into(),
        tiny("clip_openai.safetensors").display().to_string(),
        "--params".into(),
        tiny("params_learned.safetensors").display().to_string(),
        "--threads".into(),
        "2".into(),
    ]
}

fn run_predict(extra: &[&str]) -> Output {
    let mut args = model_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    headclip(&refs, &[])
}

/// (rows, cols) of a little-endian f32 .npy file, and its values.
fn read_npy(path: &Path) -> ((usize, usize), Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data = bytes[10 + header_len..]
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    ((dims[0], dims[1]), data)
}

#[test]
fn folder_outputs_mirror_sub_folders() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let bottle = repo().join("examples/images/bottle_good_000.png");
    for sub in ["good", "broken_large"] {
        std::fs::create_dir_all(input.join(sub)).unwrap();
        std::fs::copy(&bottle, input.join(sub).join("000.png")).unwrap();
    }
    let out_dir = dir.path().join("out");
    let out = run_predict(&["--out", out_dir.to_str().unwrap(), input.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = lines(&out);
    assert_eq!(results.len(), 2);
    for r in &results {
        for key in [
            "score",
            "global_score",
            "pixel_score",
            "map_max",
            "map_mean",
        ] {
            let v = r[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing in {r}"));
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        }
        assert_eq!(r["width"], 900);
    }
    for sub in ["good", "broken_large"] {
        let ((h, w), map) = read_npy(&out_dir.join(sub).join("000.npy"));
        assert_eq!((h, w), (96, 96));
        assert!(map.iter().all(|v| (0.0..=1.0).contains(v)));
        let overlay = image::open(out_dir.join(sub).join("000_overlay.png")).unwrap();
        assert_eq!((overlay.width(), overlay.height()), (900, 900));
    }
    // The same image in both folders: the same score.
    assert_eq!(results[0]["score"], results[1]["score"]);
}

#[test]
fn bad_files_are_reported_and_the_rest_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(repo().join("examples/images/bottle_good_000.png")).unwrap();
    std::fs::write(dir.path().join("a_good.png"), &good).unwrap();
    std::fs::write(dir.path().join("b_empty.png"), b"").unwrap();
    std::fs::write(dir.path().join("c_truncated.png"), &good[..good.len() / 3]).unwrap();
    std::fs::write(dir.path().join("d_notes.txt"), b"not an image").unwrap();
    // A PNG header claiming 100000 x 100000 pixels: refused before decoding.
    let mut bomb = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    bomb.extend_from_slice(&100_000u32.to_be_bytes());
    bomb.extend_from_slice(&100_000u32.to_be_bytes());
    bomb.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    std::fs::write(dir.path().join("e_bomb.png"), &bomb).unwrap();
    std::fs::write(dir.path().join("f_good_again.jpg"), &good).unwrap(); // a PNG named .jpg

    let out = run_predict(&[dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "some files failed: exit 1");
    let results = lines(&out);
    assert_eq!(results.len(), 6);
    let by_name = |n: &str| {
        results
            .iter()
            .find(|r| r["path"].as_str().unwrap().ends_with(n))
            .unwrap()
            .clone()
    };
    assert!(by_name("a_good.png")["score"].is_number());
    assert!(by_name("f_good_again.jpg")["score"].is_number());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (name, words) in [
        ("b_empty.png", "empty"),
        ("c_truncated.png", "truncated"),
        ("d_notes.txt", "not an image"),
        ("e_bomb.png", "100000"),
    ] {
        let err = by_name(name)["error"].as_str().unwrap().to_lowercase();
        assert!(err.contains(words), "{name}: {err}");
        assert!(stderr.contains(name), "stderr names {name}");
    }

    let out = run_predict(&["--skip-non-images", dir.path().to_str().unwrap()]);
    assert_eq!(lines(&out).len(), 5, "the text file is passed over");
}

#[test]
fn every_supported_format_is_scored() {
    let gen = repo().join("crates/headclip-data/tests/fixtures/preprocess/gen");
    let files: Vec<String> = [
        "grey16.png",
        "rgb16.png",
        "rgba16.png",
        "palette4.png",
        "grey_alpha.png",
        "cmyk.jpg",
        "progressive.jpg",
        "rgb_lzw.tif",
        "rgb.bmp",
        "palette.gif",
        "lossless.webp",
        "small.png",
    ]
    .iter()
    .map(|f| gen.join(f).display().to_string())
    .collect();
    let mut args: Vec<&str> = files.iter().map(String::as_str).collect();
    args.insert(0, "--batch-size");
    args.insert(1, "4");
    let out = run_predict(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = lines(&out);
    assert_eq!(results.len(), files.len());
    assert!(
        results.iter().all(|r| r["score"].is_number()),
        "{results:?}"
    );
}

#[test]
fn batching_does_not_change_scores() {
    let images = repo().join("examples/images");
    let files: Vec<String> = [
        "bottle_broken_large_000.png",
        "bottle_contamination_000.png",
        "bottle_good_000.png",
    ]
    .iter()
    .map(|f| images.join(f).display().to_string())
    .collect();
    let run = |batch: &str, chunk: &str| {
        let mut args = model_args();
        args.extend(["--batch-size".to_string(), batch.to_string()]);
        args.extend(files.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = [
            ("HEADCLIP_CPU_CHUNK", chunk),
            ("HEADCLIP_LOG", "headclip=debug"),
        ];
        let out = headclip(&refs, &env);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "batch {batch}: {stderr}");
        (lines(&out), stderr)
    };
    let (one, one_log) = run("1", "1");
    // A real batch of three through one forward pass (on the CPU the default is one at a time).
    let (three, three_log) = run("3", "3");
    assert_eq!(
        one_log.matches("forward pass of 1 images").count(),
        3,
        "{one_log}"
    );
    assert_eq!(
        three_log.matches("forward pass of 3 images").count(),
        1,
        "{three_log}"
    );
    assert_eq!((one.len(), three.len()), (3, 3));
    for ((a, b), file) in one.iter().zip(&three).zip(&files) {
        assert_eq!(a["path"], file.as_str());
        assert_eq!(b["path"], file.as_str());
        for key in [
            "score",
            "global_score",
            "pixel_score",
            "map_max",
            "map_mean",
        ] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!((x - y).abs() < 1e-5, "{file} {key}: {x} vs {y}");
        }
    }
}

#[test]
fn cpu_chunk_setting_is_checked() {
    let image = repo().join("examples/images/bottle_good_000.png");
    let mut args = model_args();
    args.push(image.display().to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = headclip(&refs, &[("HEADCLIP_CPU_CHUNK", "0")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HEADCLIP_CPU_CHUNK"));
}

#[test]
fn image_size_must_fit_the_patch() {
    let image = repo().join("examples/images/bottle_good_000.png");
    let out = run_predict(&["--image-size", "100", image.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a multiple of the patch size 16"),
        "{stderr}"
    );
}

#[test]
fn training_free_mode_and_torchscript_weights() {
    let image = repo().join("examples/images/bottle_good_000.png");
    let out = headclip(
        &[
            "predict",
            "--weights",
            tiny("clip_openai.pt").to_str().unwrap(),
            "--image-size",
            "64",
            image.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("training-free prompt ensemble"));
    assert!(lines(&out)[0]["score"].is_number());
}

#[test]
fn offline_without_weights_fails_fast_and_names_the_file() {
    let cache = tempfile::tempdir().unwrap();
    let image = repo().join("examples/images/bottle_good_000.png");
    let started = Instant::now();
    let out = headclip(
        &["predict", image.to_str().unwrap()],
        &[
            ("HEADCLIP_CACHE", cache.path().to_str().unwrap()),
            ("HEADCLIP_WEIGHTS_BASE_URL", "http://127.0.0.1:9"),
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "ViT-L-14-336px.pt",
        "--weights",
        "HEADCLIP_WEIGHTS",
        "3035c92b",
    ] {
        assert!(stderr.contains(needle), "stderr lacks {needle}: {stderr}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn random_weights_are_announced_and_official_names_checked() {
    let dir = tempfile::tempdir().unwrap();
    let random = dir.path().join("random.safetensors");
    let out = headclip(
        &[
            "weights",
            "random",
            "tiny",
            "--out",
            random.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success());
    let image = repo().join("examples/images/bottle_good_000.png");
    let out = headclip(
        &[
            "predict",
            "--weights",
            random.to_str().unwrap(),
            "--image-size",
            "64",
            image.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("RANDOM weights"));

    let fake = dir.path().join("ViT-B-16.pt");
    std::fs::copy(tiny("clip_openai.pt"), &fake).unwrap();
    let out = headclip(
        &[
            "predict",
            "--weights",
            fake.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("5806e77c"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn same_stem_different_extension_keeps_both_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let bottle = repo().join("examples/images/bottle_good_000.png");
    std::fs::copy(&bottle, input.join("Y92.png")).unwrap();
    std::fs::copy(&bottle, input.join("Y92.jpg")).unwrap();
    let out_dir = dir.path().join("out");
    let out = run_predict(&["--out", out_dir.to_str().unwrap(), input.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out_dir.join("Y92_png.npy").exists() && out_dir.join("Y92_jpg.npy").exists());
}

/// Predict with the given weights and parameters files (not the fixture's).
fn predict_with(weights: &Path, params: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "predict".to_string(),
        "--weights".into(),
        weights.display().to_string(),
        "--params".into(),
        params.display().to_string(),
        "--threads".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    headclip(&refs, &[])
}

/// NaN in a parameters file or in the CLIP weights: refused when loading (exit 2), naming the
/// file and the tensor; nothing is scored.
#[test]
fn non_finite_weights_or_parameters_are_refused_when_loading() {
    let dir = tempfile::tempdir().unwrap();
    let image = repo().join("examples/images/bottle_good_000.png");
    let image = image.to_str().unwrap();

    let params = dir.path().join("nan_params.safetensors");
    common::rewrite_f32_tensors(&tiny("params_learned.safetensors"), &params, |name, v| {
        if name == "prompt.ctx_pos" {
            v[5] = f32::NAN;
        }
    });
    let out = predict_with(&tiny("clip_openai.safetensors"), &params, &[image]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing is scored");
    for words in ["nan_params.safetensors", "`prompt.ctx_pos`", "1 non-finite"] {
        assert!(stderr.contains(words), "{words}: {stderr}");
    }

    // CLIP weights are f16 here: 0x7E00 is a NaN.
    let weights = dir.path().join("nan_clip.safetensors");
    common::rewrite_safetensors(
        &tiny("clip_openai.safetensors"),
        &weights,
        |name, dtype, raw| {
            if name == "ln_final.weight" {
                assert_eq!(dtype, safetensors::Dtype::F16);
                raw[2..4].copy_from_slice(&0x7E00u16.to_le_bytes());
            }
        },
    );
    let params = tiny("params_learned.safetensors");
    let out = predict_with(&weights, &params, &[image]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing is scored");
    for words in ["nan_clip.safetensors", "`ln_final.weight`", "1 non-finite"] {
        assert!(stderr.contains(words), "{words}: {stderr}");
    }
}

/// A model that computes NaN never reports a verdict: each image gets an error line (no
/// `score`), the error is on stderr, and the exit status is 1.
#[test]
fn a_non_finite_score_is_an_error_not_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let params = common::overflowing_params(dir.path());
    let images = repo().join("examples/images/bottle_good_000.png");
    let out = predict_with(
        &tiny("clip_openai.safetensors"),
        &params,
        &[images.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let results = lines(&out);
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(results[0].get("score").is_none(), "{}", results[0]);
    let error = results[0]["error"].as_str().unwrap();
    assert!(error.contains("non-finite"), "{error}");
    assert!(stderr.contains("bottle_good_000.png"), "{stderr}");
}

/// Out-of-range values in a parameters file's `headclip.config` are refused when loading (exit
/// 2), naming the file, the field and its range: they used to panic (S = 2⁴⁰, σ = 1e300),
/// allocate 12.7 GB and abort (S = 65536, σ = 1e15) or compute NaN (σ = 1e-300).
#[test]
fn out_of_range_parameters_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = repo().join("examples/images/bottle_good_000.png");
    let cases: [(&str, serde_json::Value, &str); 11] = [
        ("image_size", (1i64 << 40).into(), "outside [16, 2048]"),
        ("image_size", 65536.into(), "outside [16, 2048]"),
        ("image_size", 0.into(), "outside [16, 2048]"),
        ("smoothing_sigma", 1e300.into(), "outside [0.01, 64]"),
        ("smoothing_sigma", 1e15.into(), "outside [0.01, 64]"),
        ("smoothing_sigma", 1e-300.into(), "outside [0.01, 64]"),
        ("jas_lambda", 2.0.into(), "outside [0, 1]"),
        ("jas_top_fraction", 0.0.into(), "outside (0, 1]"),
        ("readout", serde_json::json!([2, 99]), "in 1..=6"),
        ("dpam_start", 7.into(), "outside 1..=6"),
        ("clip_sha256", "abc".into(), "64 hexadecimal digits"),
    ];
    for (i, (field, value, range)) in cases.iter().enumerate() {
        let params = dir.path().join(format!("bad{i}.safetensors"));
        common::rewrite_metadata(&tiny("params_learned.safetensors"), &params, |m| {
            let mut config: serde_json::Value =
                serde_json::from_str(&m["headclip.config"]).unwrap();
            config[*field] = value.clone();
            m.insert("headclip.config".into(), config.to_string());
        });
        let out = predict_with(
            &tiny("clip_openai.safetensors"),
            &params,
            &[image.to_str().unwrap()],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{field} = {value}: {stderr}");
        assert!(out.stdout.is_empty(), "{field} = {value}");
        assert!(!stderr.contains("panicked"), "{field} = {value}: {stderr}");
        let name = format!("bad{i}.safetensors");
        for words in [name.as_str(), field, range] {
            assert!(
                stderr.contains(words),
                "{field} = {value}: {words}: {stderr}"
            );
        }
    }
}

/// `output()` with a deadline: the child is killed, and the test fails, if it runs longer.
fn output_within(mut cmd: std::process::Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn predict_command(extra: &[&str]) -> std::process::Command {
    let mut cmd = common::headclip();
    cmd.args(model_args()).args(extra);
    cmd
}

/// Links in a scanned folder: two links back up the tree (loops), a link to a sibling folder, a
/// link to a file and a broken link. Each image is scored once, under its own path; the others
/// are skipped with a warning naming them, and the run ends promptly.
#[test]
fn links_in_folders_are_followed_without_loops_or_repeats() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("in");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let bottle = repo().join("examples/images/bottle_good_000.png");
    std::fs::copy(&bottle, root.join("a.png")).unwrap();
    std::fs::copy(&bottle, root.join("sub/b.png")).unwrap();
    symlink(".", root.join("loop_here")).unwrap();
    symlink("..", root.join("sub/loop_up")).unwrap();
    symlink("sub", root.join("sub_again")).unwrap();
    symlink("a.png", root.join("a_link.png")).unwrap();
    symlink("missing.png", root.join("dangling.png")).unwrap();

    let out = output_within(
        predict_command(&[root.to_str().unwrap()]),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let mut paths: Vec<String> = lines(&out)
        .iter()
        .map(|r| {
            assert!(r["score"].is_number(), "{r}");
            r["path"].as_str().unwrap().to_string()
        })
        .collect();
    paths.sort();
    let expected: Vec<String> = ["a.png", "sub/b.png"]
        .iter()
        .map(|p| root.join(p).display().to_string())
        .collect();
    assert_eq!(paths, expected, "{stderr}");
    for name in [
        "loop_here",
        "loop_up",
        "sub_again",
        "dangling.png",
        "a_link.png",
    ] {
        assert!(stderr.contains(name), "a warning names {name}: {stderr}");
    }
}

/// `--out` inside the folder being scanned: the second run scores the same two images, not the
/// maps and overlays the first one wrote.
#[test]
fn the_output_folder_is_never_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("in");
    std::fs::create_dir_all(&root).unwrap();
    let bottle = repo().join("examples/images/bottle_good_000.png");
    std::fs::copy(&bottle, root.join("a.png")).unwrap();
    std::fs::copy(&bottle, root.join("b.png")).unwrap();
    let results = root.join("results");
    let expected: Vec<String> = [root.join("a.png"), root.join("b.png")]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    for run in 1..=2 {
        let out = run_predict(&["--out", results.to_str().unwrap(), root.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "run {run}: {stderr}");
        let names: Vec<String> = lines(&out)
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, expected, "run {run}");
    }
    let mut written: Vec<String> = std::fs::read_dir(&results)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        ["a.npy", "a_overlay.png", "b.npy", "b_overlay.png"]
    );
}

/// `headclip predict FOLDER | head -1`: the reader closes the pipe after the first line; the run
/// stops at its next line, quietly (no panic), and exits 0 within seconds instead of scoring the
/// rest or hanging.
#[test]
fn a_reader_that_stops_early_ends_the_run() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let bottle = repo().join("examples/images/bottle_good_000.png");
    for i in 0..24 {
        std::fs::copy(&bottle, dir.path().join(format!("{i:02}.png"))).unwrap();
    }
    let mut child = predict_command(&[dir.path().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader (and with it the pipe's only read end) is dropped here.
    let line: serde_json::Value = serde_json::from_str(&first).expect("a JSON line");
    assert!(line["score"].is_number(), "{line}");
    let closed = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if closed.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running 20 s after its reader went; stderr:\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = stderr.join().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("24 images scored"), "{stderr}");
}

/// A folder of the config-carrying fixtures (OpenCLIP's or Hugging Face's layout).
fn config_fixture(case: &str) -> std::path::PathBuf {
    repo().join("crates/headclip/tests/fixtures").join(case)
}

#[test]
fn the_backbone_config_comes_from_the_folder_or_clip_config_and_its_absence_is_said() {
    let image = repo().join("examples/images/bottle_good_000.png");
    let predict = |weights: &Path, extra: &[&str]| {
        let mut args = vec!["predict", "--weights", weights.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(image.to_str().unwrap());
        headclip(&args, &[])
    };
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).to_string();

    let out = predict(&tiny("clip_openai.safetensors"), &["--image-size", "64"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("OpenAI's rules are assumed"),
        "{}",
        stderr(&out)
    );

    let folder = config_fixture("openclip_gelu_hw80");
    let out = predict(&folder, &["--image-size", "64"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("open_clip_config.json (sha256 "),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("assumed"), "{}", stderr(&out));
    assert!(lines(&out)[0]["score"].is_number());

    // --clip-config overrides the paired config: here one that contradicts the tensors.
    let hf_config = config_fixture("hf_gelu").join("config.json");
    let out = predict(&folder, &["--clip-config", hf_config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("hf_gelu/config.json"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("but the checkpoint's tensors give"),
        "{}",
        stderr(&out)
    );

    let out = predict(&folder, &["--clip-config", "/nonexistent/config.json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--clip-config /nonexistent/config.json not found"));
}

#[test]
fn weights_list_names_the_supported_checkpoints_and_their_configs() {
    let cache = tempfile::tempdir().unwrap();
    let out = headclip(
        &["weights", "list", "--cache", cache.path().to_str().unwrap()],
        &[],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "ViT-L-14-336px.pt",
        "OpenCLIP ViT-H-14 (LAION)",
        "OpenCLIP ViT-L-14 (LAION)",
        "open_clip_config.json beside it",
        "Hugging Face CLIP",
        "config.json beside it",
        "--clip-config",
        "small random-weight replicas",
    ] {
        assert!(stdout.contains(needle), "stdout lacks {needle}: {stdout}");
    }
}
