//! `headclip bench`: one JSON line per run, with only the options that apply to its mode.

use std::process::Output;

use serde_json::Value;

mod common;

fn bench(extra: &[&str]) -> Output {
    common::headclip()
        .args(["bench", "--weights"])
        .arg(common::tiny("clip_openai.safetensors"))
        .args(["--image-size", "64", "--threads", "1", "--iters", "2"])
        .args(extra)
        .output()
        .unwrap()
}

fn json_line(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line on stdout: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

#[test]
fn inference_line_has_timings_and_no_training_options() {
    let line = json_line(&bench(&["--batch", "2"]));
    assert_eq!(line["mode"], "infer");
    assert_eq!(line["batch"], 2);
    assert_eq!(line["threads"], 1);
    let (median, min) = (
        line["ms_per_batch_median"].as_f64().unwrap(),
        line["ms_per_batch_min"].as_f64().unwrap(),
    );
    assert!(min > 0.0 && min <= median, "{line}");
    let per_s = line["images_per_s"].as_f64().unwrap();
    assert!((per_s - 2e3 / median).abs() < 1e-9 * per_s, "{line}");
    assert!(line["peak_rss_mb"].as_f64().unwrap() > 0.0);
    assert!(line.get("lhw_paths").is_none(), "{line}");
    assert!(line.get("gradient_checkpointing").is_none(), "{line}");
}

#[test]
fn training_line_names_its_attention_paths() {
    let line = json_line(&bench(&[
        "--mode",
        "train",
        "--batch",
        "2",
        "--lhw-paths",
        "both",
        "--gradient-checkpointing",
    ]));
    assert_eq!(line["mode"], "train");
    assert_eq!(line["lhw_paths"], "both");
    assert_eq!(line["gradient_checkpointing"], true);
}

#[test]
fn training_options_with_inference_are_refused() {
    for extra in [
        &["--gradient-checkpointing"][..],
        &["--lhw-paths", "both"][..],
    ] {
        let out = bench(extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--mode train only"), "{stderr}");
    }
    let out = bench(&["--mode", "fit"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("infer"));
}
