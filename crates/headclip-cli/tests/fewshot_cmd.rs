//! Few-shot end to end with the tiny random-weight model (S = 96): `headclip test --shots` over
//! seeds, its refusals before any compute, and references in `predict` through a folder and a
//! saved bank (`headclip bank`).

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{copy, shared_data, text, tiny};

fn run(args: &[&str]) -> Output {
    let mut cmd = common::headclip();
    cmd.args(args)
        .arg("--weights")
        .arg(tiny("clip_openai.safetensors"))
        .args(["--image-size", "96", "--threads", "2"]);
    cmd.output().expect("run headclip")
}

fn bottle(rel: &str) -> PathBuf {
    shared_data().join("mvtec_bottle/bottle").join(rel)
}

/// MVTec layout: test/good 000–001, test/broken_large 000–001 with masks, train/good 000–002
/// and a link in train/good to a test image (which must never be drawn).
fn small_mvtec(root: &Path) -> PathBuf {
    let cat = root.join("bottle");
    for n in ["000", "001"] {
        copy(
            &bottle(&format!("test/good/{n}.png")),
            &cat.join(format!("test/good/{n}.png")),
        );
        copy(
            &bottle(&format!("test/broken_large/{n}.png")),
            &cat.join(format!("test/broken_large/{n}.png")),
        );
        copy(
            &bottle(&format!("ground_truth/broken_large/{n}_mask.png")),
            &cat.join(format!("ground_truth/broken_large/{n}_mask.png")),
        );
    }
    for n in ["000", "001", "002"] {
        copy(
            &bottle(&format!("train/good/{n}.png")),
            &cat.join(format!("train/good/{n}.png")),
        );
    }
    std::os::unix::fs::symlink(
        cat.join("test/good/000.png"),
        cat.join("train/good/900_test_link.png"),
    )
    .unwrap();
    root.to_path_buf()
}

#[test]
fn test_shots_reports_mean_and_deviation_over_seeds_without_test_images() {
    let dir = tempfile::tempdir().unwrap();
    let root = small_mvtec(dir.path());
    let json = dir.path().join("report.json");
    let out = run(&[
        "test",
        "--data",
        &format!("mvtec:{}", root.display()),
        "--shots",
        "2",
        "--seeds",
        "0,1,2",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("K = 2 references per category, mean over seeds 0,1,2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Standard deviation over the seeds"),
        "{stdout}"
    );
    assert!(
        stderr.contains("900_test_link.png is a test image of bottle: not used as a reference"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let fs = &report["few_shot"];
    assert_eq!(fs["shots"], 2);
    assert_eq!(fs["seeds"], serde_json::json!([0, 1, 2]));
    assert_eq!(fs["per_seed"].as_array().unwrap().len(), 3);
    let mut drawn_sets = std::collections::HashSet::new();
    for seed in fs["references"].as_array().unwrap() {
        let refs: Vec<String> = seed[0][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        assert_eq!(refs.len(), 2);
        for r in &refs {
            assert!(r.contains("train/good/00"), "{r} is not a training image");
        }
        drawn_sets.insert(refs);
    }
    assert!(drawn_sets.len() >= 2, "every seed drew the same references");
    // The mean row is the mean of the seeds' figures.
    let mean = fs["datasets"][0]["categories"][0]["mean"]["pixel_auroc"]
        .as_f64()
        .unwrap();
    let seeds: Vec<f64> = fs["per_seed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s[0]["categories"][0]["metrics"]["pixel_auroc"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!((mean - seeds.iter().sum::<f64>() / 3.0).abs() < 1e-12);
    let table = report["datasets"][0]["categories"][0]["metrics"]["pixel_auroc"]
        .as_f64()
        .unwrap();
    assert_eq!(table, mean);
    assert!(fs["datasets"][0]["categories"][0]["std"]["pixel_auroc"]
        .as_f64()
        .is_some());
}

#[test]
fn a_category_without_enough_training_images_is_refused_by_name() {
    let out = run(&[
        "test",
        "--data",
        &format!("mvtec:{}", shared_data().join("mvtec_bottle").display()),
        "--shots",
        "9",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "category bottle of data set mvtec_bottle has 8 normal training images, fewer than --shots 9"
        ),
        "{stderr}"
    );
    // Refused before the model is loaded.
    assert!(!stderr.contains("loaded in"), "{stderr}");

    let out = run(&[
        "test",
        "--data",
        &format!("yesno:{}", shared_data().join("brainmri").display()),
        "--shots",
        "1",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("has no training split"), "{stderr}");
    assert!(stderr.contains("references=DIR"), "{stderr}");
}

fn scores(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["score"].as_f64().unwrap()
        })
        .collect()
}

#[test]
fn predict_with_a_folder_and_with_its_saved_bank_agree() {
    let dir = tempfile::tempdir().unwrap();
    let refs = dir.path().join("refs");
    for n in ["000", "001"] {
        copy(
            &bottle(&format!("train/good/{n}.png")),
            &refs.join(format!("{n}.png")),
        );
    }
    std::fs::write(refs.join("broken.png"), b"not an image").unwrap();
    let images = [
        bottle("test/good/000.png"),
        bottle("test/broken_large/000.png"),
    ];
    let image_args: Vec<&str> = images.iter().map(|p| p.to_str().unwrap()).collect();

    let mut args = vec!["predict", "--references", refs.to_str().unwrap()];
    args.extend(&image_args);
    let from_folder = run(&args);
    let stderr = text(&from_folder.stderr);
    assert_eq!(from_folder.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("broken.png left out"), "{stderr}");
    assert!(stderr.contains("few-shot: 2 references"), "{stderr}");

    let bank = dir.path().join("bank.safetensors");
    let out = run(&[
        "bank",
        "--references",
        refs.to_str().unwrap(),
        "--out",
        bank.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut args = vec!["predict", "--references", bank.to_str().unwrap()];
    args.extend(&image_args);
    let from_bank = run(&args);
    assert_eq!(
        from_bank.status.code(),
        Some(0),
        "{}",
        text(&from_bank.stderr)
    );
    assert_eq!(
        scores(&text(&from_folder.stdout)),
        scores(&text(&from_bank.stdout))
    );

    let mut args = vec!["predict"];
    args.extend(&image_args);
    let zero_shot = run(&args);
    assert_ne!(
        scores(&text(&zero_shot.stdout)),
        scores(&text(&from_bank.stdout))
    );

    // A bank is refused by another model (here: another side S).
    let mut cmd = common::headclip();
    let out = cmd
        .args(["predict", "--references", bank.to_str().unwrap()])
        .arg("--weights")
        .arg(tiny("clip_openai.safetensors"))
        .args(["--image-size", "64"])
        .arg(&images[0])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("built for another model: image size 96 (this model: 64)"),
        "{stderr}"
    );
}

#[test]
fn references_over_the_cap_or_all_broken_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let refs = dir.path().join("refs");
    for n in ["000", "001", "002"] {
        copy(
            &bottle(&format!("train/good/{n}.png")),
            &refs.join(format!("{n}.png")),
        );
    }
    let image = bottle("test/good/000.png");
    let out = run(&[
        "predict",
        "--references",
        refs.to_str().unwrap(),
        "--bank-cap",
        "100",
        image.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("3 references of 6×6 patches make 108 patch features per read-out layer"),
        "{stderr}"
    );
    assert!(stderr.contains("over the bank cap of 100"), "{stderr}");

    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("a.png"), b"no").unwrap();
    let out = run(&[
        "predict",
        "--references",
        broken.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a.png left out"), "{stderr}");
    assert!(
        stderr.contains("none of the 1 reference files could be used"),
        "{stderr}"
    );
}
