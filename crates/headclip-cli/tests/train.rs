//! `headclip train` end to end with the tiny fixture model on a few real MVTec images.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{safetensors_metadata, shared_data, tiny};

fn bottle() -> PathBuf {
    shared_data().join("mvtec_bottle/bottle")
}

/// A small MVTec-layout category: 3 good and 3 broken images with their masks.
fn small_category(root: &Path) -> PathBuf {
    let cat = root.join("bottle");
    for (defect, n) in [("good", 3), ("broken_large", 3)] {
        std::fs::create_dir_all(cat.join("test").join(defect)).unwrap();
        for i in 0..n {
            let name = format!("{i:03}.png");
            std::fs::copy(
                bottle().join("test").join(defect).join(&name),
                cat.join("test").join(defect).join(&name),
            )
            .unwrap();
            if defect != "good" {
                let gt = cat.join("ground_truth").join(defect);
                std::fs::create_dir_all(&gt).unwrap();
                let mask = format!("{i:03}_mask.png");
                std::fs::copy(
                    bottle().join("ground_truth").join(defect).join(&mask),
                    gt.join(&mask),
                )
                .unwrap();
            }
        }
    }
    cat
}

fn train_command(data: &str, out: &Path, extra: &[&str]) -> Command {
    let weights = tiny("clip_openai.safetensors");
    let mut args = vec![
        "train".to_string(),
        "--weights".into(),
        weights.display().to_string(),
        "--data".into(),
        data.into(),
        "--out".into(),
        out.display().to_string(),
        "--image-size".into(),
        "64".into(),
        "--readout".into(),
        "2,4,6".into(),
        "--dpam-start".into(),
        "3".into(),
        "--batch-size".into(),
        "4".into(),
        "--threads".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut command = common::headclip();
    command.args(&args);
    command
}

fn train(data: &str, out: &Path, extra: &[&str]) -> Output {
    train_command(data, out, extra).output().unwrap()
}

/// Runs `headclip train`, failing the test unless it succeeds; returns what it logged.
fn train_ok(data: &str, out: &Path, extra: &[&str]) -> String {
    let output = train(data, out, extra);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{extra:?}: {stderr}");
    stderr
}

/// Trains two epochs straight into `dir/straight.safetensors`, and one epoch then `--resume`
/// to two into `dir/resumed.safetensors` (only complete epochs are ever saved), with `extra`
/// options; asserts that both reach the same parameters bit for bit. Returns the straight path.
fn assert_resume_is_bit_identical(dir: &Path, data: &str, extra: &[&str]) -> PathBuf {
    let with = |more: &[&'static str]| [extra, more].concat();
    let straight = dir.join("straight.safetensors");
    train_ok(data, &straight, &with(&["--epochs", "2"]));
    let resumed = dir.join("resumed.safetensors");
    train_ok(data, &resumed, &with(&["--epochs", "1"]));
    let stderr = train_ok(data, &resumed, &with(&["--epochs", "2", "--resume"]));
    assert!(stderr.contains("resuming"), "{stderr}");
    assert_eq!(
        tensors(&straight),
        tensors(&resumed),
        "{extra:?}: resumed parameters differ from an uninterrupted run"
    );
    straight
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.data().to_vec()))
        .collect();
    out.sort();
    out
}

#[test]
fn resumed_training_is_bit_identical_and_params_are_usable() {
    let dir = tempfile::tempdir().unwrap();
    let cat = small_category(dir.path());
    let data = format!("mvtec:{}", cat.display());
    let straight = assert_resume_is_bit_identical(dir.path(), &data, &[]);

    // The state file is separate from the deployable parameters.
    let names: Vec<String> = tensors(&straight).into_iter().map(|(k, _)| k).collect();
    assert!(
        names
            .iter()
            .all(|k| k.starts_with("prompt.") || k.starts_with("lhw.")),
        "{names:?}"
    );
    assert!(dir.path().join("straight.state.safetensors").exists());

    // The loss log has a line per batch and a summary per epoch.
    let log = std::fs::read_to_string(dir.path().join("straight.losses.jsonl")).unwrap();
    let summaries = log
        .lines()
        .filter(|l| l.contains("\"summary\":true"))
        .count();
    assert_eq!(summaries, 2);

    // The parameters drive predict.
    let image = cat.join("test/good/000.png");
    let out = common::headclip()
        .args(["predict", "--weights"])
        .arg(tiny("clip_openai.safetensors"))
        .arg("--params")
        .arg(&straight)
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("S = 64"));
}

/// SIGTERM in the middle of an epoch: the run stops after the batch under way, saves its state
/// with how far the epoch got, exits 130, and `--resume` continues from that batch to the same
/// parameters as a run that was never stopped.
#[test]
fn sigterm_mid_epoch_saves_state_and_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let cat = small_category(dir.path());
    let data = format!("mvtec:{}", cat.display());
    // Batches of 4 over 6 images: two per epoch, so half the batch ends are mid-epoch.
    let args = ["--epochs", "6"];

    let straight = dir.path().join("straight.safetensors");
    train_ok(&data, &straight, &args);

    let stopped = dir.path().join("stopped.safetensors");
    let log = dir.path().join("stopped.losses.jsonl");
    let child = train_command(&data, &stopped, &args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first batch line of epoch 2, so a complete epoch exists, then signal.
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(r#""batch":1,"epoch":2,"#)
    {
        assert!(
            started.elapsed().as_secs() < 120,
            "training never reached epoch 2"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopped after batch"), "{stderr}");
    let epochs_in_params = |path: &Path| safetensors_metadata(path)["headclip.epochs"].clone();
    let saved_epochs: usize = epochs_in_params(&stopped).parse().unwrap();
    assert!(
        (1..6).contains(&saved_epochs),
        "the parameters file should hold the last complete epoch, not {saved_epochs}"
    );

    let stderr = train_ok(&data, &stopped, &[&args[..], &["--resume"]].concat());
    assert_eq!(
        tensors(&straight),
        tensors(&stopped),
        "parameters after a stop and resume differ from an uninterrupted run:\n{stderr}"
    );
    assert_eq!(epochs_in_params(&stopped), "6");
}

#[test]
fn bad_training_data_is_refused_before_compute() {
    let dir = tempfile::tempdir().unwrap();
    let cat = small_category(dir.path());
    // Only normal images: refused unless asked.
    std::fs::remove_dir_all(cat.join("test/broken_large")).unwrap();
    std::fs::remove_dir_all(cat.join("ground_truth")).unwrap();
    let out = train(
        &format!("mvtec:{}", cat.display()),
        &dir.path().join("p.safetensors"),
        &["--epochs", "1"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("both classes are needed"));
    train_ok(
        &format!("mvtec:{}", cat.display()),
        &dir.path().join("p.safetensors"),
        &["--epochs", "1", "--allow-single-class"],
    );

    // Anomalous images without masks: refused, or global term only when allowed.
    let cat = small_category(&dir.path().join("second"));
    std::fs::remove_dir_all(cat.join("ground_truth")).unwrap();
    let data = format!("mvtec:{}", cat.display());
    let out = train(&data, &dir.path().join("q.safetensors"), &["--epochs", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mask"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = train_ok(
        &data,
        &dir.path().join("q.safetensors"),
        &["--epochs", "1", "--allow-missing-masks"],
    );
    assert!(
        stderr.contains("6 of 6 images have no pixel ground truth"),
        "{stderr}"
    );
}

/// The spec's mixed data: a masked set with an image-level one keeps the focal and Dice terms
/// for the masked set's images (every batch of 4 here holds some of them).
#[test]
fn mixed_data_keeps_the_pixel_terms_of_masked_images() {
    let dir = tempfile::tempdir().unwrap();
    let cat = small_category(dir.path());
    let manifest = dir.path().join("ct.csv");
    let head_ct = shared_data().join("headct/head_ct");
    std::fs::write(
        &manifest,
        format!(
            "image,label\n{0}/000.png,1\n{0}/199.png,0\n",
            head_ct.display()
        ),
    )
    .unwrap();
    let data = [
        "--data".to_string(),
        format!("csv:{},image=image,label=label", manifest.display()),
    ];
    let extra: Vec<&str> = ["--epochs", "1"]
        .into_iter()
        .chain(data.iter().map(String::as_str))
        .collect();
    let stderr = train_ok(
        &format!("mvtec:{}", cat.display()),
        &dir.path().join("mixed.safetensors"),
        &extra,
    );
    assert!(
        stderr.contains("2 of 8 images have no pixel ground truth"),
        "{stderr}"
    );
    let log = std::fs::read_to_string(dir.path().join("mixed.losses.jsonl")).unwrap();
    let batches: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("summary").is_none())
        .collect();
    assert_eq!(batches.len(), 2, "{log}");
    for line in &batches {
        assert!(line["loss"]["focal"].as_f64().unwrap() > 0.0, "{line}");
        assert!(line["loss"]["dice"].as_f64().unwrap() > 0.0, "{line}");
    }
}

/// `--joint-loss-weight`: the joint score's cross-entropy is trained and logged, weighted into
/// the total, recorded in the training state; a negative weight is refused.
#[test]
fn joint_loss_weight_adds_the_joint_term() {
    let dir = tempfile::tempdir().unwrap();
    let cat = small_category(dir.path());
    let data = format!("mvtec:{}", cat.display());
    let out_path = dir.path().join("joint.safetensors");
    let stderr = train_ok(
        &data,
        &out_path,
        &["--epochs", "1", "--joint-loss-weight", "0.5"],
    );
    assert!(stderr.contains(", joint "), "{stderr}");
    let log = std::fs::read_to_string(dir.path().join("joint.losses.jsonl")).unwrap();
    let batches: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("summary").is_none())
        .collect();
    assert_eq!(batches.len(), 2);
    for line in &batches {
        let loss = &line["loss"];
        let term = |k: &str| loss[k].as_f64().unwrap();
        assert!(term("joint") > 0.0, "{line}");
        let sum = term("ce") + term("focal") + term("dice") + 0.5 * term("joint");
        assert!((term("total") - sum).abs() < 1e-5 * sum, "{line}");
    }
    let state = safetensors_metadata(&dir.path().join("joint.state.safetensors"));
    let meta: serde_json::Value = serde_json::from_str(&state["headclip.training_state"]).unwrap();
    assert_eq!(meta["options"]["loss"]["joint_weight"], 0.5);

    for bad in ["--joint-loss-weight=-1", "--joint-loss-weight=nan"] {
        let out = train(
            &data,
            &dir.path().join("bad.safetensors"),
            &["--epochs", "1", bad],
        );
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--joint-loss-weight must be"), "{stderr}");
    }
    assert!(!dir.path().join("bad.safetensors").exists());
}

/// `--precision bf16` trains mixed (towers in bf16, parameters and Adam in fp32): it used to
/// stop with a dtype panic in the first batch.
#[test]
fn bf16_training_runs_and_keeps_fp32_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let cat = small_category(dir.path());
    let out_path = dir.path().join("bf16.safetensors");
    for paths in ["vv", "both"] {
        let stderr = train_ok(
            &format!("mvtec:{}", cat.display()),
            &out_path,
            &["--epochs", "1", "--precision", "bf16", "--lhw-paths", paths],
        );
        assert!(stderr.contains("epoch 1/1"), "{stderr}");
        let bytes = std::fs::read(&out_path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{paths}: {name}");
        }
        std::fs::remove_file(&out_path).unwrap();
        std::fs::remove_file(dir.path().join("bf16.state.safetensors")).unwrap();
        std::fs::remove_file(dir.path().join("bf16.losses.jsonl")).unwrap();
    }
}

/// Mixed precision resumes bit for bit too (same seed, same thread count).
#[test]
fn bf16_resumed_training_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let cat = small_category(dir.path());
    let data = format!("mvtec:{}", cat.display());
    assert_resume_is_bit_identical(dir.path(), &data, &["--precision", "bf16"]);
}

/// `small_category` with 2 good and 2 broken images: one batch of 4 per epoch.
fn four_image_category(root: &Path) -> PathBuf {
    let cat = small_category(root);
    for file in [
        "test/good/002.png",
        "test/broken_large/002.png",
        "ground_truth/broken_large/002_mask.png",
    ] {
        std::fs::remove_file(cat.join(file)).unwrap();
    }
    cat
}

/// A learning rate of 10³⁰: the first epoch's update leaves huge but finite parameters, the
/// next loss is NaN. The run stops with an error (exit 2) naming the epoch and the loss, and the
/// parameters, state and loss log of the last good epoch are left byte for byte as they were.
#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_files() {
    let dir = tempfile::tempdir().unwrap();
    let cat = four_image_category(dir.path());
    let data = format!("mvtec:{}", cat.display());
    let out = dir.path().join("p.safetensors");
    let files = [
        out.clone(),
        dir.path().join("p.state.safetensors"),
        dir.path().join("p.losses.jsonl"),
    ];
    train_ok(&data, &out, &["--epochs", "1", "--lr", "1e30"]);
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();

    let output = train(&data, &out, &["--epochs", "3", "--lr", "1e30", "--resume"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("training diverged in epoch 2, batch 1: the loss (total NaN"),
        "{stderr}"
    );
    for (file, bytes) in files.iter().zip(&before) {
        assert!(
            std::fs::read(file).unwrap() == *bytes,
            "{} changed",
            file.display()
        );
    }
    assert_eq!(safetensors_metadata(&out)["headclip.epochs"], "1");
}

/// A training state with a NaN (here in an Adam moment) is refused by `--resume`, naming the
/// file and the tensor; nothing is trained or written.
#[test]
fn a_non_finite_training_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cat = four_image_category(dir.path());
    let data = format!("mvtec:{}", cat.display());
    let out = dir.path().join("p.safetensors");
    train_ok(&data, &out, &["--epochs", "1"]);
    let state = dir.path().join("p.state.safetensors");
    common::rewrite_f32_tensors(&state.clone(), &state, |name, v| {
        if name == "adam.v.lhw.theta" {
            v[0] = f32::INFINITY;
        }
    });
    let params_before = std::fs::read(&out).unwrap();
    let output = train(&data, &out, &["--epochs", "2", "--resume"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for words in ["p.state.safetensors", "`adam.v.lhw.theta`", "1 non-finite"] {
        assert!(stderr.contains(words), "{words}: {stderr}");
    }
    assert!(std::fs::read(&out).unwrap() == params_before);
}

/// Out-of-range values in a training state's metadata are refused by `--resume` (exit 2),
/// naming the file, the field and its range; an Adam step of 10¹⁸ used to train to NaN.
#[test]
fn out_of_range_training_state_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cat = four_image_category(dir.path());
    let data = format!("mvtec:{}", cat.display());
    let out = dir.path().join("p.safetensors");
    train_ok(&data, &out, &["--epochs", "1"]);
    let state = dir.path().join("p.state.safetensors");
    let good = std::fs::read(&state).unwrap();
    let cases: [(&str, &str, serde_json::Value, &str); 6] = [
        (
            "",
            "adam_step",
            1_000_000_000_000_000_000i64.into(),
            "adam_step 1000000000000000000 is outside 0..=2147483647",
        ),
        ("", "adam_step", (-1).into(), "outside 0..=2147483647"),
        (
            "options",
            "batch_size",
            0.into(),
            "batch_size 0 is outside 1..=4096",
        ),
        (
            "options",
            "lr",
            (-1.0).into(),
            "lr -1 must be a finite number > 0",
        ),
        ("options", "beta2", 1.0.into(), "beta2 1 is outside [0, 1)"),
        ("config", "smoothing_sigma", 1e300.into(), "smoothing_sigma"),
    ];
    for (parent, field, value, words) in cases {
        std::fs::write(&state, &good).unwrap();
        common::rewrite_metadata(&state.clone(), &state, |m| {
            let mut meta: serde_json::Value =
                serde_json::from_str(&m["headclip.training_state"]).unwrap();
            let target = if parent.is_empty() {
                &mut meta
            } else {
                &mut meta[parent]
            };
            target[field] = value.clone();
            m.insert("headclip.training_state".into(), meta.to_string());
        });
        let output = train(&data, &out, &["--epochs", "2", "--resume"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{field}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        for w in ["p.state.safetensors", words] {
            assert!(stderr.contains(w), "{field}: {w}: {stderr}");
        }
        assert_eq!(safetensors_metadata(&out)["headclip.epochs"], "1");
    }
    // The same bounds for a fresh run's options.
    let output = train(
        &data,
        &dir.path().join("q.safetensors"),
        &["--epochs", "200000"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("epochs 200000 is outside 1..=100000"),
        "{stderr}"
    );
}

/// `--resume` refuses options that change the result (naming each, with both values) unless
/// `--force-resume`; a fresh run refuses an existing state and loss log unless `--overwrite`,
/// which starts the log afresh; bad output paths fail before any compute. Refused runs leave
/// the files as they were.
#[test]
fn runs_are_not_mixed_and_outputs_are_checked_first() {
    let dir = tempfile::tempdir().unwrap();
    let cat = four_image_category(dir.path());
    let data = format!("mvtec:{}", cat.display());
    let out = dir.path().join("p.safetensors");
    let files = [
        out.clone(),
        dir.path().join("p.state.safetensors"),
        dir.path().join("p.losses.jsonl"),
    ];
    train_ok(&data, &out, &["--epochs", "1"]);
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let unchanged = |what: &str| {
        for (f, b) in files.iter().zip(&before) {
            assert!(
                std::fs::read(f).unwrap() == *b,
                "{what}: {} changed",
                f.display()
            );
        }
    };
    let refused = |data: &str, extra: &[&str], words: &[&str]| {
        let output = train(data, &out, extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
        for w in words {
            assert!(stderr.contains(w), "{extra:?}: {w}: {stderr}");
        }
        unchanged(&format!("{extra:?}"));
    };
    refused(
        &data,
        &["--epochs", "1"],
        &[
            "p.state.safetensors and",
            "p.losses.jsonl already exist",
            "--overwrite",
        ],
    );
    refused(
        &data,
        &[
            "--epochs",
            "2",
            "--resume",
            "--lr",
            "0.01",
            "--seed",
            "5",
            "--lhw-form",
            "sigmoid",
        ],
        &[
            "lr: 0.001 in the state, 0.01 now",
            "seed: 111 in the state, 5 now",
            "lhw_form: softmax in the state, sigmoid now",
            "--force-resume",
        ],
    );
    let other = small_category(&dir.path().join("other"));
    refused(
        &format!("mvtec:{}", other.display()),
        &["--epochs", "2", "--resume"],
        &["data: mvtec:", "in the state"],
    );
    refused(
        &data,
        &["--epochs", "2", "--resume", "--precision", "bf16"],
        &["precision: fp32 in the state, bf16 now"],
    );
    // Output paths: a folder, a missing folder; refused before the data or model are read.
    for (extra, words) in [
        (vec!["--state", dir.path().to_str().unwrap()], "is a folder"),
        (
            vec!["--loss-log", "/nonexistent/dir/x.jsonl"],
            "does not exist",
        ),
    ] {
        let output = train(&data, &dir.path().join("new.safetensors"), &extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(words), "{words}: {stderr}");
        assert!(!stderr.contains("training on"), "{stderr}");
        assert!(!dir.path().join("new.safetensors").exists());
    }

    // More epochs are fine; --force-resume continues with the state's options.
    let stderr = train_ok(
        &data,
        &out,
        &[
            "--epochs",
            "2",
            "--resume",
            "--lr",
            "0.01",
            "--force-resume",
        ],
    );
    assert!(
        stderr.contains("lr: 0.001 in the state, 0.01 now"),
        "{stderr}"
    );
    assert_eq!(safetensors_metadata(&out)["headclip.epochs"], "2");
    // --overwrite starts afresh: one epoch in the parameters, one summary in the log.
    train_ok(&data, &out, &["--epochs", "1", "--overwrite"]);
    assert_eq!(safetensors_metadata(&out)["headclip.epochs"], "1");
    let log = std::fs::read_to_string(&files[2]).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"summary\":true"))
            .count(),
        1,
        "{log}"
    );
}

/// A checkpoint's config moves results, so `--resume` refuses a run whose paired config changed
/// (here OpenCLIP's `quick_gelu`, which switches both towers' activation).
#[test]
fn resume_refuses_a_changed_backbone_config() {
    let dir = tempfile::tempdir().unwrap();
    let cat = small_category(dir.path());
    let model = dir.path().join("openclip");
    std::fs::create_dir(&model).unwrap();
    let fixture = common::repo().join("crates/headclip/tests/fixtures/openclip_quickgelu");
    for file in ["open_clip_model.safetensors", "open_clip_config.json"] {
        std::fs::copy(fixture.join(file), model.join(file)).unwrap();
    }
    let out = dir.path().join("p.safetensors");
    let run = |extra: &[&str]| {
        common::headclip()
            .args(["train", "--weights"])
            .arg(&model)
            .arg("--data")
            .arg(format!("mvtec:{}", cat.display()))
            .arg("--out")
            .arg(&out)
            .args([
                "--image-size",
                "64",
                "--readout",
                "1,2",
                "--dpam-start",
                "1",
            ])
            .args(["--batch-size", "4", "--threads", "2"])
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&["--epochs", "1"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let config = model.join("open_clip_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\"quick_gelu\": true"), "{text}");
    std::fs::write(
        &config,
        text.replace("\"quick_gelu\": true", "\"quick_gelu\": false"),
    )
    .unwrap();
    let resumed = run(&["--epochs", "2", "--resume"]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert_eq!(resumed.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("CLIP config"), "{stderr}");
}
