//! The Markdown table (stdout) and the CSV report (`--csv`). The table is written by hand: it is
//! a few `|`-joined cells, and no Markdown crate writes tables.

use anyhow::Result;
use headclip::eval::{AuproVariants, DatasetResult, MetricSet};

use super::percent;

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
/// then the metrics the table shows, unrounded fractions in [0, 1], empty where absent; `row` is
/// `category` or `mean` (whose `category` cell is `mean`). Fields are quoted where needed.
pub fn csv(datasets: &[DatasetResult], aupro: AuproVariants) -> Result<Vec<u8>> {
    let columns = aupro.columns();
    let mut out = csv::Writer::from_writer(Vec::new());
    let header = ["dataset", "category", "row", "normal", "anomalous"];
    out.write_record(header.into_iter().chain(columns.iter().map(|m| m.key())))?;
    let mut row = |dataset: &str,
                   category: &str,
                   kind: &str,
                   normal: usize,
                   anomalous: usize,
                   set: &MetricSet| {
        let counts = [normal.to_string(), anomalous.to_string()];
        let values = columns
            .iter()
            .map(|&m| set.get(m).map(|v| v.to_string()).unwrap_or_default());
        out.write_record(
            [dataset, category, kind]
                .map(String::from)
                .into_iter()
                .chain(counts)
                .chain(values),
        )
    };
    for ds in datasets {
        for cat in &ds.categories {
            row(
                &ds.name,
                &cat.name,
                "category",
                cat.normal,
                cat.anomalous,
                &cat.metrics,
            )?;
        }
        let normal: usize = ds.categories.iter().map(|c| c.normal).sum();
        let anomalous: usize = ds.categories.iter().map(|c| c.anomalous).sum();
        row(&ds.name, "mean", "mean", normal, anomalous, &ds.mean)?;
    }
    Ok(out.into_inner()?)
}
