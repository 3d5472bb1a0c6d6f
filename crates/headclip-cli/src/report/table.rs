//! The Markdown table (stdout) and the CSV report (`--csv`). The table is written by hand: it is
//! a few `|`-joined cells, and no Markdown crate writes tables.

use anyhow::Result;
use headclip::eval::{
    AtThresholds, AuproVariants, CategoryResult, DatasetResult, Metric, MetricSet,
};

use super::{percent, ABSENT};

/// Escapes the characters that would break a Markdown table cell.
fn md_cell(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('\n', " ")
}

fn md_row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

/// One row per category and a mean row per data set (`mean`, over the categories where each
/// metric is defined); values ×100 with one decimal, `—` where absent. The header names the
/// AUPRO variant(s).
pub fn markdown(datasets: &[DatasetResult], aupro: AuproVariants) -> String {
    let columns = aupro.columns();
    let mut header = vec![
        "data set".to_string(),
        "category".into(),
        "normal".into(),
        "anomalous".into(),
    ];
    header.extend(columns.iter().map(|m| m.label().to_string()));
    let mut out = md_row(&header);
    let mut rule = vec!["---".to_string(), "---".into()];
    rule.extend(vec!["---:".to_string(); header.len() - 2]);
    out.push_str(&md_row(&rule));
    let metric_cells = |set: &MetricSet| {
        columns
            .iter()
            .map(|&m| percent(set.get(m)))
            .collect::<Vec<_>>()
    };
    for ds in datasets {
        for cat in &ds.categories {
            let mut row = vec![
                md_cell(&ds.name),
                md_cell(&cat.name),
                cat.normal.to_string(),
                cat.anomalous.to_string(),
            ];
            row.extend(metric_cells(&cat.metrics));
            out.push_str(&md_row(&row));
        }
        let normal: usize = ds.categories.iter().map(|c| c.normal).sum();
        let anomalous: usize = ds.categories.iter().map(|c| c.anomalous).sum();
        let mut row = vec![
            md_cell(&ds.name),
            "mean".into(),
            normal.to_string(),
            anomalous.to_string(),
        ];
        row.extend(metric_cells(&ds.mean));
        out.push_str(&md_row(&row));
    }
    out
}

/// A row per category and a mean row per data set: `dataset,category,row,normal,anomalous,`
/// then the metrics the table shows, unrounded fractions in [0, 1], empty where absent, then
/// `image_f1_threshold,pixel_f1_threshold,defect`; `row` is `category`, `mean` (whose
/// `category` cell is `mean`) or `defect` (per defect type, where a category names two or
/// more, after the data set's rows). Fields are quoted where needed.
pub fn csv(datasets: &[DatasetResult], aupro: AuproVariants) -> Result<Vec<u8>> {
    let columns = aupro.columns();
    let mut out = csv::Writer::from_writer(Vec::new());
    let header = ["dataset", "category", "row", "normal", "anomalous"];
    let tail = ["image_f1_threshold", "pixel_f1_threshold", "defect"];
    out.write_record(
        header
            .into_iter()
            .chain(columns.iter().map(|m| m.key()))
            .chain(tail),
    )?;
    let threshold = |t: Option<f32>| t.map(|v| v.to_string()).unwrap_or_default();
    let record = |dataset: &str,
                  category: &str,
                  kind: &str,
                  normal: usize,
                  anomalous: usize,
                  set: &MetricSet,
                  thresholds: [String; 2]| {
        let mut r: Vec<String> = [dataset, category, kind].map(String::from).to_vec();
        r.extend([normal.to_string(), anomalous.to_string()]);
        r.extend(
            columns
                .iter()
                .map(|&m| set.get(m).map(|v| v.to_string()).unwrap_or_default()),
        );
        r.extend(thresholds);
        r.push(String::new());
        r
    };
    for ds in datasets {
        for cat in &ds.categories {
            out.write_record(record(
                &ds.name,
                &cat.name,
                "category",
                cat.normal,
                cat.anomalous,
                &cat.metrics,
                [
                    threshold(cat.image_f1_threshold),
                    threshold(cat.pixel_f1_threshold),
                ],
            ))?;
        }
        let normal: usize = ds.categories.iter().map(|c| c.normal).sum();
        let anomalous: usize = ds.categories.iter().map(|c| c.anomalous).sum();
        out.write_record(record(
            &ds.name,
            "mean",
            "mean",
            normal,
            anomalous,
            &ds.mean,
            [String::new(), String::new()],
        ))?;
        for r in defect_records(ds, &columns) {
            out.write_record(r)?;
        }
    }
    Ok(out.into_inner()?)
}

/// A threshold as tables show it: four decimals, `—` where absent.
fn threshold_cell(value: Option<f32>) -> String {
    value.map_or_else(|| ABSENT.to_string(), |v| format!("{v:.4}"))
}

/// Whether a category gets per-defect rows: two named defect types or more (one would repeat
/// the category's row).
fn has_defect_rows(cat: &CategoryResult) -> bool {
    cat.defects.len() >= 2
}

/// Per defect type of each category whose layout names two or more (MVTec AD's folders), its
/// images against all of the category's normal images: image AUROC, AP, F1-max ×100, and with
/// a calibration the share of the defect's images flagged (recall). Empty when no category has
/// defect rows.
pub fn markdown_defects(datasets: &[DatasetResult]) -> String {
    let calibrated = datasets
        .iter()
        .any(|d| d.categories.iter().any(|c| c.calibrated.is_some()));
    let mut header = ["data set", "category", "defect", "normal", "anomalous"]
        .map(String::from)
        .to_vec();
    header.extend(["image AUROC", "image AP", "image F1-max"].map(String::from));
    if calibrated {
        header.push("flagged (recall)".into());
    }
    let mut body = String::new();
    for ds in datasets {
        for cat in ds.categories.iter().filter(|c| has_defect_rows(c)) {
            for d in &cat.defects {
                let mut row = vec![
                    md_cell(&ds.name),
                    md_cell(&cat.name),
                    md_cell(&d.name),
                    d.normal.to_string(),
                    d.anomalous.to_string(),
                    percent(d.image.auroc),
                    percent(d.image.ap),
                    percent(d.image.f1_max),
                ];
                if calibrated {
                    row.push(percent(d.calibrated.and_then(|f| f.recall)));
                }
                body.push_str(&md_row(&row));
            }
        }
    }
    if body.is_empty() {
        return body;
    }
    let mut rule = vec!["---".to_string(); 3];
    rule.extend(vec!["---:".to_string(); header.len() - 3]);
    md_row(&header) + &md_row(&rule) + &body
}

/// Per category: the thresholds where image and pixel F1-max are reached, and with a
/// calibration its thresholds and, at them, image precision, recall, F1 (×100), the image
/// confusion matrix (TP FP TN FN) and pixel precision, recall, F1; a data set's `all` row pools
/// its categories' counts.
pub fn markdown_thresholds(datasets: &[DatasetResult]) -> String {
    let calibrated = datasets
        .iter()
        .any(|d| d.categories.iter().any(|c| c.calibrated.is_some()));
    let mut header = ["data set", "category", "image F1-max at", "pixel F1-max at"]
        .map(String::from)
        .to_vec();
    if calibrated {
        header.extend(
            [
                "image threshold",
                "image P",
                "image R",
                "image F1",
                "TP",
                "FP",
                "TN",
                "FN",
                "pixel threshold",
                "pixel P",
                "pixel R",
                "pixel F1",
            ]
            .map(String::from),
        );
    }
    let mut out = md_row(&header);
    let mut rule = vec!["---".to_string(); 2];
    rule.extend(vec!["---:".to_string(); header.len() - 2]);
    out.push_str(&md_row(&rule));
    let at_cells = |at: Option<&AtThresholds>| -> Vec<String> {
        let Some(at) = at else {
            return vec![ABSENT.to_string(); 12];
        };
        let (i, c) = (&at.image, &at.image.counts);
        let pixel = at.pixel.as_ref();
        vec![
            threshold_cell(Some(at.thresholds.image)),
            percent(i.precision),
            percent(i.recall),
            percent(i.f1),
            c.true_positives.to_string(),
            c.false_positives.to_string(),
            c.true_negatives.to_string(),
            c.false_negatives.to_string(),
            threshold_cell(at.thresholds.pixel),
            percent(pixel.and_then(|p| p.precision)),
            percent(pixel.and_then(|p| p.recall)),
            percent(pixel.and_then(|p| p.f1)),
        ]
    };
    for ds in datasets {
        for cat in &ds.categories {
            let mut row = vec![
                md_cell(&ds.name),
                md_cell(&cat.name),
                threshold_cell(cat.image_f1_threshold),
                threshold_cell(cat.pixel_f1_threshold),
            ];
            if calibrated {
                row.extend(at_cells(cat.calibrated.as_ref()));
            }
            out.push_str(&md_row(&row));
        }
        if calibrated && ds.categories.len() > 1 {
            let mut row = vec![
                md_cell(&ds.name),
                "all".into(),
                ABSENT.into(),
                ABSENT.into(),
            ];
            row.extend(at_cells(ds.calibrated.as_ref()));
            out.push_str(&md_row(&row));
        }
    }
    out
}

/// `--csv` rows per defect type, after the table's rows: `row` is `defect`, the `defect`
/// column names it, the image metrics are its own and the pixel ones empty.
fn defect_records<'a>(
    ds: &'a DatasetResult,
    columns: &[Metric],
) -> impl Iterator<Item = Vec<String>> + 'a {
    let columns = columns.to_vec();
    ds.categories
        .iter()
        .filter(|c| has_defect_rows(c))
        .flat_map(move |cat| {
            let columns = columns.clone();
            cat.defects.iter().map(move |d| {
                let metrics = MetricSet::from_parts(Some(&d.image), None);
                let mut record = vec![
                    ds.name.clone(),
                    cat.name.clone(),
                    "defect".into(),
                    d.normal.to_string(),
                    d.anomalous.to_string(),
                ];
                record.extend(
                    columns
                        .iter()
                        .map(|&m| metrics.get(m).map(|v| v.to_string()).unwrap_or_default()),
                );
                record.extend([String::new(), String::new(), d.name.clone()]);
                record
            })
        })
}
