//! `headclip calibrate` and `--calibration` in `predict` and `test`, end to end with the tiny
//! fixture model (S = 96) on small subsets of the shared MVTec AD bottle category.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{shared_data, text};

fn run(command: &str, args: &[String]) -> Output {
    common::headclip_tiny_learned(command)
        .args(args)
        .output()
        .expect("run headclip")
}

fn ok(out: &Output) -> String {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// An MVTec AD layout under `root/bottle` with `good` normal images and, per defect, anomalous
/// images and their masks.
fn bottle(root: &Path, good: &[&str], defects: &[(&str, &[&str])]) -> PathBuf {
    let src = shared_data().join("mvtec_bottle/bottle");
    let dst = root.join("bottle");
    let copy = |from: PathBuf, to: PathBuf| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    };
    for n in good {
        copy(
            src.join(format!("test/good/{n}.png")),
            dst.join(format!("test/good/{n}.png")),
        );
    }
    for (defect, ids) in defects {
        for n in *ids {
            copy(
                src.join(format!("test/{defect}/{n}.png")),
                dst.join(format!("test/{defect}/{n}.png")),
            );
            copy(
                src.join(format!("ground_truth/{defect}/{n}_mask.png")),
                dst.join(format!("ground_truth/{defect}/{n}_mask.png")),
            );
        }
    }
    dst
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f32_of(v: &serde_json::Value) -> f32 {
    v.as_f64().unwrap() as f32
}

fn csv_records(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

/// Labelled calibration gives the thresholds where `test` says F1-max is reached on the same
/// set; `predict` and `test` then apply them exactly (`>=`, anomalib's normalisation, masks at
/// the image's size), and a calibration made at another image size is refused unless forced.
#[test]
fn calibrate_then_predict_and_test() {
    let dir = tempfile::tempdir().unwrap();
    let cal_root = bottle(
        &dir.path().join("cal"),
        &["000", "001", "002", "003"],
        &[
            ("broken_large", &["000", "001"]),
            ("contamination", &["000", "001"]),
        ],
    );
    let test_root = bottle(
        &dir.path().join("test"),
        &["004", "005", "006"],
        &[
            ("broken_small", &["000", "001"]),
            ("contamination", &["002", "003"]),
        ],
    );
    let cal_file = dir.path().join("cal.json");
    let cal_spec = format!("mvtec:{}", cal_root.display());
    let out = run(
        "calibrate",
        &[
            "--data".into(),
            cal_spec.clone(),
            "--out".into(),
            s(&cal_file),
        ],
    );
    let stdout = ok(&out);
    assert!(stdout.contains("image threshold"), "{stdout}");
    let cal = json(&cal_file);
    assert_eq!(cal["method"]["kind"], "f1_max");
    assert_eq!(cal["counts"]["images"], 8);
    assert_eq!(cal["counts"]["anomalous"], 4);
    assert_eq!(cal["identity"]["image_size"], 96);
    assert_eq!(
        cal["identity"]["weights_sha256"].as_str().unwrap().len(),
        64
    );
    assert!(cal["identity"]["references"].as_array().unwrap().is_empty());
    let (t, lo, hi) = (
        f32_of(&cal["image"]["threshold"]),
        f32_of(&cal["image"]["min"]),
        f32_of(&cal["image"]["max"]),
    );
    let pixel_t = f32_of(&cal["pixel"]["threshold"]);

    // `test` on the calibration set reports F1-max at the same thresholds.
    let report = dir.path().join("cal-report.json");
    ok(&run(
        "test",
        &["--data".into(), cal_spec, "--json".into(), s(&report)],
    ));
    let cat = &json(&report)["datasets"][0]["categories"][0];
    assert_eq!(f32_of(&cat["image_f1_threshold"]), t);
    assert_eq!(f32_of(&cat["pixel_f1_threshold"]), pixel_t);

    // predict: verdicts, normalised scores, masks at the image's size, annotated overlays.
    let out_dir = dir.path().join("pred");
    let images: Vec<String> = ["test/broken_small/000.png", "test/good/004.png"]
        .iter()
        .map(|p| s(&test_root.join(p)))
        .collect();
    let mut args = vec![
        "--calibration".to_string(),
        s(&cal_file),
        "--out".into(),
        s(&out_dir),
    ];
    args.extend(images.iter().cloned());
    let stdout = ok(&run("predict", &args));
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let score = f32_of(&line["score"]);
        assert_eq!(line["anomalous"], score >= t, "{line}");
        let want = ((f64::from(score) - f64::from(t)) / (f64::from(hi) - f64::from(lo)) + 0.5)
            .clamp(0.0, 1.0);
        assert!((line["normalised_score"].as_f64().unwrap() - want).abs() < 1e-6);
        let mask = image::open(line["mask"].as_str().unwrap())
            .unwrap()
            .to_luma8();
        assert_eq!(mask.dimensions(), (900, 900));
        let flagged = mask.pixels().filter(|p| p.0[0] == 255).count() as u64;
        assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
        assert_eq!(Some(flagged), line["anomalous_pixels"].as_u64(), "{line}");
        let overlay = image::open(line["overlay"].as_str().unwrap())
            .unwrap()
            .to_rgb8();
        // The score's box in the corner is black.
        assert_eq!(overlay.get_pixel(0, 0).0, [0, 0, 0]);
    }

    // test: figures at the calibrated thresholds, agreeing with scores.csv; defect rows.
    let (report, maps) = (dir.path().join("report.json"), dir.path().join("maps"));
    let test_spec = format!("mvtec:{}", test_root.display());
    let stdout = ok(&run(
        "test",
        &[
            "--data".into(),
            test_spec,
            "--calibration".into(),
            s(&cal_file),
            "--json".into(),
            s(&report),
            "--save-maps".into(),
            s(&maps),
        ],
    ));
    assert!(
        stdout.contains("figures at the calibrated thresholds"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| bottle | bottle | broken_small | 3 | 2 |"),
        "{stdout}"
    );
    let cat = json(&report)["datasets"][0]["categories"][0].clone();
    let counts = &cat["calibrated"]["image"]["counts"];
    let rows = csv_records(&maps.join("scores.csv"));
    let col = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    let (score_col, label_col, verdict_col, defect_col) =
        (col("score"), col("label"), col("verdict"), col("defect"));
    let mut tp = 0;
    let mut fp = 0;
    for r in &rows[1..] {
        let flagged = r[score_col].parse::<f32>().unwrap() >= t;
        assert_eq!(r[verdict_col], if flagged { "1" } else { "0" });
        let anomalous = r[label_col] == "1";
        assert_eq!(r[defect_col].is_empty(), !anomalous, "{r:?}");
        tp += u64::from(flagged && anomalous);
        fp += u64::from(flagged && !anomalous);
    }
    assert_eq!(rows.len(), 1 + 7);
    assert_eq!(counts["true_positives"].as_u64(), Some(tp));
    assert_eq!(counts["false_positives"].as_u64(), Some(fp));
    assert!(cat["calibrated"]["pixel"]["counts"]["true_positives"].is_u64());
    let defects = cat["defects"].as_array().unwrap();
    assert_eq!(defects.len(), 2);
    assert_eq!(defects[0]["name"], "broken_small");
    assert_eq!(
        (
            defects[0]["normal"].as_u64(),
            defects[0]["anomalous"].as_u64()
        ),
        (Some(3), Some(2))
    );

    // Another image size moves every score: refused, naming it, unless forced.
    let mut args = vec![
        "--calibration".to_string(),
        s(&cal_file),
        "--image-size".into(),
        "112".into(),
        images[0].clone(),
    ];
    let out = run("predict", &args);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("image size: 112 here, 96 in"), "{stderr}");
    args.insert(0, "--force-calibration".into());
    ok(&run("predict", &args));

    // Few-shot references move every score too: refused, naming them and β.
    let references = shared_data().join("mvtec_bottle/bottle/train/good");
    let args = [
        "--calibration".to_string(),
        s(&cal_file),
        "--references".into(),
        s(&references),
        images[0].clone(),
    ];
    let out = run("predict", &args);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("references: ["), "{stderr}");
    assert!(stderr.contains("beta: Some(0.5) here, None in"), "{stderr}");
}

/// Normal images only: the 0.99 quantile (numpy's linear interpolation) of their scores; and
/// `--plain-overlays` leaves the overlay unannotated.
#[test]
fn normal_images_only_take_the_quantile() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dir.path().join("normal");
    std::fs::create_dir_all(&normal).unwrap();
    let ids = ["000", "001", "002", "003", "004"];
    for n in ids {
        std::fs::copy(
            shared_data().join(format!("mvtec_bottle/bottle/test/good/{n}.png")),
            normal.join(format!("{n}.png")),
        )
        .unwrap();
    }
    let cal_file = dir.path().join("cal.json");
    ok(&run(
        "calibrate",
        &[
            "--data".into(),
            format!("folder:normal={}", normal.display()),
            "--out".into(),
            s(&cal_file),
        ],
    ));
    let cal = json(&cal_file);
    assert_eq!(cal["method"]["kind"], "quantile");
    assert_eq!(cal["method"]["quantile"], 0.99);
    assert_eq!(cal["counts"]["normal"], 5);

    let out_dir = dir.path().join("plain");
    let stdout = ok(&run(
        "predict",
        &[
            "--plain-overlays".into(),
            "--out".into(),
            s(&out_dir),
            s(&normal),
        ],
    ));
    let mut scores: Vec<f64> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["score"]
                .as_f64()
                .unwrap()
        })
        .collect();
    scores.sort_by(f64::total_cmp);
    // numpy.quantile(scores, 0.99): position 0.99·4 = 3.96 between the two largest.
    let want = scores[4] - (scores[4] - scores[3]) * (1.0 - 0.96);
    let got = cal["image"]["threshold"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-6, "{got} vs {want} from {scores:?}");
    let plain = image::open(out_dir.join("000_overlay.png"))
        .unwrap()
        .to_rgb8();
    assert_ne!(plain.get_pixel(0, 0).0, [0, 0, 0]);
}
