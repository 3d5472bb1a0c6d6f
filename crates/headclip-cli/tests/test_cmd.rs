//! `headclip test` end to end on small subsets of the real shared data, with the tiny
//! random-weight fixture model (S = 96): the table, the JSON / CSV reports, saved maps, pictures,
//! and the errors that must come before any compute.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{copy, shared_data, text};

/// Runs `headclip test` with the tiny model and `args`.
fn headclip_test(args: &[String]) -> Output {
    common::headclip_tiny_learned("test")
        .args(args)
        .output()
        .expect("run headclip")
}

/// A small MVTec AD layout under `root/bottle`: `good` normal images and, per defect, anomalous
/// images with their masks (copied from the shared MVTec bottle category).
fn mvtec_subset(root: &Path, good: &[&str], defects: &[(&str, &[&str])]) -> PathBuf {
    let src = shared_data().join("mvtec_bottle/bottle");
    let dst = root.join("bottle");
    for n in good {
        copy(
            &src.join(format!("test/good/{n}.png")),
            &dst.join(format!("test/good/{n}.png")),
        );
    }
    for (defect, ids) in defects {
        for n in *ids {
            copy(
                &src.join(format!("test/{defect}/{n}.png")),
                &dst.join(format!("test/{defect}/{n}.png")),
            );
            copy(
                &src.join(format!("ground_truth/{defect}/{n}_mask.png")),
                &dst.join(format!("ground_truth/{defect}/{n}_mask.png")),
            );
        }
    }
    dst
}

/// A HeadCT manifest (`id, hemorrhage`, as the original) listing `rows`, images found through
/// an absolute template into the shared folder.
fn headct_spec(dir: &Path, rows: &[(&str, &str)]) -> String {
    let manifest = dir.join("labels.csv");
    let mut csv = String::from("id, hemorrhage\n");
    for (id, label) in rows {
        csv.push_str(&format!("{id},{label}\n"));
    }
    std::fs::write(&manifest, csv).unwrap();
    let images = shared_data().join("headct/head_ct");
    format!(
        "csv:{},image=id,label=hemorrhage,template={}/{{:03}}.png,name=headct",
        manifest.display(),
        images.canonicalize().unwrap().display()
    )
}

/// The cells of each row (header and rule included) of the first Markdown table, the metrics;
/// the per-defect and threshold tables follow it after a blank line.
fn table(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn row<'a>(rows: &'a [Vec<String>], dataset: &str, category: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r[0] == dataset && r[1] == category)
        .unwrap_or_else(|| panic!("no row {dataset}/{category} in {rows:?}"))
}

fn is_percent(cell: &str) -> bool {
    cell.parse::<f64>()
        .is_ok_and(|v| (0.0..=100.0).contains(&v))
        && cell.split('.').nth(1).is_some_and(|d| d.len() == 1)
}

/// Every record of a CSV file, header included; fails on a record whose field count differs.
fn csv_records(path: &Path) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .unwrap()
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

/// An image name that HTML must escape and CSV must quote.
const HOSTILE: &str = "<img src=x onerror=alert(1)> & \"q\", 'a'";

#[test]
fn evaluates_three_kinds_of_data_set_and_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let mvtec = mvtec_subset(
        &dir.path().join("mvtec"),
        &["000", "001"],
        &[
            ("broken_large", &["000", "001"]),
            ("contamination", &["000", "001"]),
        ],
    );
    std::fs::rename(
        mvtec.join("test/good/001.png"),
        mvtec.join(format!("test/good/{HOSTILE}.png")),
    )
    .unwrap();
    // One mask of another size than its image: resized, with a warning.
    let small_mask = mvtec.join("ground_truth/contamination/001_mask.png");
    let mask = image::open(&small_mask).unwrap().to_luma8();
    image::imageops::resize(&mask, 450, 450, image::imageops::FilterType::Nearest)
        .save(&small_mask)
        .unwrap();
    // An anomalous-only set with masks (ColonDB's layout: one defect type, no good images).
    let colon_src = shared_data().join("colondb/colon");
    let colon = dir.path().join("colon");
    for n in ["001", "002"] {
        copy(
            &colon_src.join(format!("test/polyp/{n}.png")),
            &colon.join(format!("test/polyp/{n}.png")),
        );
        copy(
            &colon_src.join(format!("ground_truth/polyp/{n}_mask.png")),
            &colon.join(format!("ground_truth/polyp/{n}_mask.png")),
        );
    }
    let headct = headct_spec(
        dir.path(),
        &[
            ("0", "1"),
            ("1", "1"),
            ("2", "1"),
            ("100", "0"),
            ("101", "0"),
            ("102", "0"),
        ],
    );

    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let (json_path, csv_path) = (out_dir.join("report.json"), out_dir.join("report.csv"));
    let (maps, pictures) = (out_dir.join("maps"), out_dir.join("pictures"));
    let specs = [
        format!("mvtec:{}", mvtec.display()),
        headct.clone(),
        format!("mvtec:{},name=ColonDB", colon.display()),
    ];
    let mut args: Vec<String> = Vec::new();
    for s in &specs {
        args.extend(["--data".to_string(), s.clone()]);
    }
    for (flag, path) in [
        ("--json", &json_path),
        ("--csv", &csv_path),
        ("--save-maps", &maps),
        ("--pictures", &pictures),
    ] {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    args.extend(["--aupro", "both", "--batch-size", "4"].map(String::from));
    let out = headclip_test(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    // The table: header, rule, a row per category and a mean row per data set, 4 + 8 cells.
    let rows = table(&stdout);
    assert_eq!(rows.len(), 2 + 6, "{stdout}");
    assert!(rows.iter().all(|r| r.len() == 12), "{stdout}");
    assert!(
        rows[0].iter().any(|c| c.contains("AnomalyCLIP"))
            && rows[0].iter().any(|c| c.contains("MVTec")),
        "{stdout}"
    );
    assert!(!stdout.contains("NaN"), "{stdout}");
    let bottle = row(&rows, "bottle", "bottle");
    assert_eq!(&bottle[2..4], ["2", "4"]);
    assert!(bottle[4..].iter().all(|c| is_percent(c)), "{bottle:?}");
    // Image level only: pixel cells absent.
    let ct = row(&rows, "headct", "headct");
    assert_eq!(&ct[2..4], ["3", "3"]);
    assert!(ct[4..7].iter().all(|c| is_percent(c)), "{ct:?}");
    assert!(ct[7..].iter().all(|c| c == "—"), "{ct:?}");
    // Anomalous only: image cells absent, pixel cells present.
    let colon_row = row(&rows, "ColonDB", "colon");
    assert!(colon_row[4..7].iter().all(|c| c == "—"), "{colon_row:?}");
    assert!(
        colon_row[7..].iter().all(|c| is_percent(c)),
        "{colon_row:?}"
    );
    assert_eq!(row(&rows, "headct", "mean")[4..], ct[4..]);

    // stderr: the mask size warning, the summary with time per image and peak memory.
    assert!(
        stderr.contains("450×450") && stderr.contains("resized"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ms per image") && stderr.contains("peak memory (VmHWM)"),
        "{stderr}"
    );

    // JSON: unrounded figures, counts, specs, the AUPRO variant, the model, timing.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(report["aupro"], "both");
    assert_eq!(report["aupro_fpr_limit"], 0.3);
    assert_eq!(report["model"]["image_size"], 96);
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(report["timing"]["images"], 14);
    let ds = report["datasets"].as_array().unwrap();
    assert_eq!(ds.len(), 3);
    for (d, spec) in ds.iter().zip(&specs) {
        assert_eq!(d["spec"].as_str().unwrap(), spec);
    }
    assert_eq!(ds[0]["categories"][0]["anomalous"], 4);
    assert!(ds[0]["categories"][0]["metrics"]["aupro_mvtec"].is_f64());
    assert!(ds[1]["categories"][0]["metrics"]["pixel_auroc"].is_null());
    assert!(ds[2]["categories"][0]["metrics"]["image_auroc"].is_null());
    assert_eq!(ds[0]["warnings"].as_array().unwrap().len(), 1);

    // CSV: a row per category and a mean row per data set, consistent columns.
    // Then a row per defect type of bottle (two of them), the `defect` column naming it.
    let lines = csv_records(&csv_path);
    assert_eq!(lines.len(), 1 + 6 + 2, "{lines:?}");
    let defect_rows: Vec<&Vec<String>> = lines.iter().filter(|l| l[2] == "defect").collect();
    assert_eq!(defect_rows.len(), 2);
    assert_eq!(lines[0].last().unwrap(), "defect");
    assert_eq!(defect_rows[0].last().unwrap(), "broken_large");
    assert_eq!((&defect_rows[0][3][..], &defect_rows[0][4][..]), ("2", "2"));
    // The thresholds where F1-max is reached are in the table after the metrics.
    assert!(
        stdout.contains("Thresholds where F1-max is reached at"),
        "{stdout}"
    );
    assert_eq!(
        lines[0][..5],
        ["dataset", "category", "row", "normal", "anomalous"]
    );
    let ct_csv = lines
        .iter()
        .find(|l| l[0] == "headct" && l[2] == "category")
        .unwrap();
    let pixel_auroc = lines[0].iter().position(|c| c == "pixel_auroc").unwrap();
    assert_eq!(ct_csv[pixel_auroc], "");

    // Saved maps and scores.csv; recompute bottle's image metrics from it.
    let srows = csv_records(&maps.join("scores.csv"));
    assert_eq!(
        srows[0],
        [
            "dataset",
            "category",
            "image",
            "label",
            "mask",
            "score",
            "global_score",
            "pixel_score",
            "npy",
            "defect"
        ]
    );
    assert_eq!(srows.len(), 1 + 14);
    for r in &srows[1..] {
        let npy = maps.join(&r[8]);
        let bytes = std::fs::read(&npy).unwrap_or_else(|e| panic!("{}: {e}", npy.display()));
        assert_eq!(bytes.len() % 16, 0);
        assert!(bytes.len() >= 96 * 96 * 4, "{}", npy.display());
    }
    assert!(maps.join("bottle/bottle/broken_large/000.npy").is_file());
    assert!(maps.join("bottle/bottle/normal/000.npy").is_file());
    assert!(
        srows
            .iter()
            .any(|r| r[2].ends_with(&format!("/{HOSTILE}.png"))),
        "{srows:?}"
    );
    let bottle_rows: Vec<&Vec<String>> = srows[1..].iter().filter(|r| r[0] == "bottle").collect();
    let s: Vec<f32> = bottle_rows.iter().map(|r| r[5].parse().unwrap()).collect();
    let l: Vec<bool> = bottle_rows.iter().map(|r| r[3] == "1").collect();
    let recomputed = headclip_metrics::image_metrics(&s, &l).unwrap();
    let in_json = &ds[0]["categories"][0]["metrics"];
    assert_eq!(recomputed.auroc, in_json["image_auroc"].as_f64());
    assert_eq!(recomputed.ap, in_json["image_ap"].as_f64());

    // Pictures: the index, and per category charts and a gallery with its thumbnails.
    assert!(pictures.join("index.html").is_file());
    for cat in ["bottle/bottle", "headct/headct", "ColonDB/colon"] {
        let d = pictures.join(cat);
        for f in ["index.html", "roc.svg", "pr.svg"] {
            assert!(d.join(f).is_file(), "{}", d.join(f).display());
        }
        let svg = std::fs::read_to_string(d.join("roc.svg")).unwrap();
        assert!(svg.starts_with("<svg"));
        let html = std::fs::read_to_string(d.join("index.html")).unwrap();
        for src in html
            .split("src=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap())
        {
            assert!(d.join(src).is_file(), "{cat}: {src} missing");
        }
    }
    let bottle_page = std::fs::read_to_string(pictures.join("bottle/bottle/index.html")).unwrap();
    assert!(
        bottle_page
            .contains("&lt;img src=x onerror=alert(1)&gt; &amp; &quot;q&quot;, &#x27;a&#x27;.png")
            && !bottle_page.contains("<img src=x"),
        "{bottle_page}"
    );
    let thumbs = std::fs::read_dir(pictures.join("bottle/bottle/thumbs"))
        .unwrap()
        .count();
    assert_eq!(
        thumbs,
        6 * 2 + 4,
        "image and overlay per image, mask per anomalous image"
    );
}

#[test]
fn a_missing_mask_stops_the_run_before_compute_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let mvtec = mvtec_subset(
        dir.path(),
        &["000", "001"],
        &[("broken_large", &["000", "001"])],
    );
    let missing = mvtec.join("ground_truth/broken_large/001_mask.png");
    std::fs::remove_file(&missing).unwrap();
    let spec = format!("mvtec:{}", mvtec.display());

    let out = headclip_test(&["--data".into(), spec.clone()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("broken_large/001.png") && stderr.contains("has no mask"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("loaded in"),
        "the model must not be loaded: {stderr}"
    );
    assert!(out.stdout.is_empty());

    let out = headclip_test(&["--data".into(), spec, "--allow-missing-masks".into()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("without a mask"), "{stderr}");
    let rows = table(&stdout);
    let r = row(&rows, "bottle", "bottle");
    assert!(r[4..7].iter().all(|c| is_percent(c)), "{r:?}");
    assert!(r[7..].iter().all(|c| c == "—"), "image level only: {r:?}");
    assert!(
        rows[0].last().unwrap().contains("AnomalyCLIP"),
        "default AUPRO: {:?}",
        rows[0]
    );
}

#[test]
fn a_manifest_with_a_missing_file_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = headct_spec(dir.path(), &[("0", "1"), ("100", "0"), ("999", "1")]);
    let out = headclip_test(&["--data".into(), spec]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 4") && stderr.contains("999.png"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("loaded in"),
        "the model must not be loaded: {stderr}"
    );
}

#[test]
fn an_image_that_fails_to_decode_stops_the_evaluation_with_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let mvtec = mvtec_subset(dir.path(), &["000"], &[("broken_large", &["000"])]);
    // A valid header (the loader reads it) over truncated pixel data.
    let image = mvtec.join("test/good/000.png");
    let bytes = std::fs::read(&image).unwrap();
    std::fs::write(&image, &bytes[..4096]).unwrap();
    let json = dir.path().join("report.json");
    let out = headclip_test(&[
        "--data".into(),
        format!("mvtec:{}", mvtec.display()),
        "--json".into(),
        json.display().to_string(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("good/000.png"), "{stderr}");
    assert!(out.stdout.is_empty() && !json.exists(), "no partial report");
}
