//! The few-shot protocol (spec: "Few-shot mode", "Protocol"): per category, `K` references
//! drawn with a seed from its normal training images, never from its test images; figures as
//! the mean over seeds with their standard deviation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{DatasetResult, Metric, MetricSet};
use headclip_data::datasets::{
    self, Category, DataKind, DataSpec, Dataset, Layout, LoadOptions, Split,
};

/// The normal training images of every category of every data set, [data set][category]:
/// MVTec AD's `train/good`, VisA's train split, or for other layouts the spec's
/// `references=DIR` (`DIR/<category>/` where it exists, else `DIR`). Test images are left out
/// of them (with a warning). A category with fewer than `shots` is refused by name.
pub fn reference_pools(
    datasets: &[Dataset],
    specs: &[DataSpec],
    shots: usize,
) -> Result<Vec<Vec<Vec<PathBuf>>>, String> {
    datasets
        .iter()
        .zip(specs)
        .map(|(ds, spec)| {
            let train = training_images(ds, spec)?;
            ds.categories
                .iter()
                .zip(train)
                .map(|(category, pool)| {
                    let pool = without_test_images(pool, category);
                    if pool.len() < shots {
                        return Err(format!(
                            "category {} of data set {} has {} normal training image{}, fewer \
                             than --shots {shots}",
                            category.name,
                            ds.name,
                            pool.len(),
                            if pool.len() == 1 { "" } else { "s" }
                        ));
                    }
                    Ok(pool)
                })
                .collect()
        })
        .collect()
}

/// Per category of `ds`, its normal training images (unchecked).
fn training_images(ds: &Dataset, spec: &DataSpec) -> Result<Vec<Vec<PathBuf>>, String> {
    let mut train = spec.clone();
    match &mut train.layout {
        Layout::Mvtec(o) if o.split == Split::Test => o.split = Split::Train,
        Layout::Visa(o) if o.split == Split::Test => o.split = Split::Train,
        Layout::Mvtec(_) | Layout::Visa(_) => {
            return Err(format!(
                "data set {}: few-shot references come from the train split, and the test \
                 images are the train split too (split=train)",
                ds.name
            ))
        }
        _ => return folder_references(ds, spec),
    }
    let opts = LoadOptions {
        allow_missing_masks: true,
        check_sizes: false,
    };
    let loaded = datasets::load(&train, &opts).map_err(|e| {
        format!(
            "data set {}: no normal training images for few-shot references: {e}",
            ds.name
        )
    })?;
    Ok(ds
        .categories
        .iter()
        .map(|c| {
            loaded
                .category(&c.name)
                .map(|t| {
                    t.samples
                        .iter()
                        .filter(|s| !s.anomalous)
                        .map(|s| s.image.clone())
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect())
}

/// The `references=DIR` of a layout without a training split.
fn folder_references(ds: &Dataset, spec: &DataSpec) -> Result<Vec<Vec<PathBuf>>, String> {
    let Some(dir) = &spec.references else {
        return Err(format!(
            "data set {} ({}) has no training split: give its normal references with \
             references=DIR in its --data spec",
            ds.name,
            ds.kind.as_str()
        ));
    };
    ds.categories
        .iter()
        .map(|c| {
            let own = dir.join(&c.name);
            let folder = if own.is_dir() { own } else { dir.clone() };
            list_files(&folder)
        })
        .collect()
}

/// The files of a folder (not recursive), sorted; names starting with '.' left out.
fn list_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .and_then(|e| e.collect::<std::io::Result<Vec<_>>>())
        .map_err(|e| format!("references folder {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .into_iter()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The pool less any file that is also one of the category's test images (compared by
/// canonical path, so links and `..` do not hide one).
fn without_test_images(pool: Vec<PathBuf>, category: &Category) -> Vec<PathBuf> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let test: HashSet<PathBuf> = category
        .samples
        .iter()
        .map(|s| canonical(&s.image))
        .collect();
    pool.into_iter()
        .filter(|p| {
            let clash = test.contains(&canonical(p));
            if clash {
                tracing::warn!(
                    "{} is a test image of {}: not used as a reference",
                    p.display(),
                    category.name
                );
            }
            !clash
        })
        .collect()
}

/// `k` of `pool` drawn with `seed` (a Fisher–Yates shuffle driven by splitmix64, the same on
/// every machine), in pool order.
pub fn draw(pool: &[PathBuf], k: usize, seed: u64) -> Vec<PathBuf> {
    let mut state = seed ^ 0x5EED_F3A5_0000_0000;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut index: Vec<usize> = (0..pool.len()).collect();
    for i in (1..index.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        index.swap(i, j);
    }
    let mut chosen: Vec<usize> = index.into_iter().take(k).collect();
    chosen.sort_unstable();
    chosen.into_iter().map(|i| pool[i].clone()).collect()
}

/// The class name of a category in `headclip test`: the spec's `class=`, else the category's
/// name for MVTec AD and VisA, else none ("object").
pub fn class_name<'a>(spec: &'a DataSpec, category: &'a Category) -> Option<&'a str> {
    match (&spec.class_name, spec.kind()) {
        (Some(name), _) => Some(name),
        (None, DataKind::Mvtec | DataKind::Visa) => Some(&category.name),
        (None, _) => None,
    }
}

/// Mean and standard deviation over seeds of one category's (or data set's) figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedStatistics {
    pub name: String,
    /// Per metric, the mean over the seeds where it is defined.
    pub mean: MetricSet,
    /// Per metric, the sample standard deviation (n − 1); `None` with fewer than two values.
    pub std: MetricSet,
}

/// One data set's figures over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FewShotDataset {
    /// The data set's mean row.
    #[serde(flatten)]
    pub overall: SeedStatistics,
    pub categories: Vec<SeedStatistics>,
}

/// What `headclip test --shots K` adds to its report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FewShotReport {
    /// References per category.
    pub shots: usize,
    /// The seeds of the draws, in run order.
    pub seeds: Vec<u64>,
    /// β of the fused map.
    pub beta: f64,
    /// Per data set: mean and standard deviation over the seeds.
    pub datasets: Vec<FewShotDataset>,
    /// The references drawn: [seed][data set][category] → files.
    pub references: Vec<Vec<Vec<Vec<PathBuf>>>>,
    /// Every seed's own figures, in `seeds` order.
    pub per_seed: Vec<Vec<DatasetResult>>,
}

/// Mean and sample standard deviation of each metric over `sets`.
fn statistics(name: &str, sets: &[&MetricSet]) -> SeedStatistics {
    let mut mean = MetricSet::default();
    let mut std = MetricSet::default();
    for metric in Metric::ALL {
        let values: Vec<f64> = sets.iter().filter_map(|s| s.get(metric)).collect();
        if values.is_empty() {
            continue;
        }
        let n = values.len() as f64;
        let m = values.iter().sum::<f64>() / n;
        *mean.slot(metric) = Some(m);
        if values.len() > 1 {
            let var = values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
            *std.slot(metric) = Some(var.sqrt());
        }
    }
    SeedStatistics {
        name: name.to_string(),
        mean,
        std,
    }
}

/// The figures of every seed gathered per data set and category.
pub fn over_seeds(per_seed: &[Vec<DatasetResult>]) -> Vec<FewShotDataset> {
    let Some(first) = per_seed.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(d, ds)| FewShotDataset {
            overall: statistics(
                &ds.name,
                &per_seed.iter().map(|s| &s[d].mean).collect::<Vec<_>>(),
            ),
            categories: ds
                .categories
                .iter()
                .enumerate()
                .map(|(c, cat)| {
                    let sets: Vec<&MetricSet> = per_seed
                        .iter()
                        .map(|s| &s[d].categories[c].metrics)
                        .collect();
                    statistics(&cat.name, &sets)
                })
                .collect(),
        })
        .collect()
}

/// Which figure of [`SeedStatistics`] a table shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    Mean,
    Std,
}

/// `result` (a seed's figures: names, counts) with the figures replaced by their mean or
/// standard deviation over the seeds, for the tables.
pub fn with_statistic(
    result: &DatasetResult,
    stats: &FewShotDataset,
    which: Statistic,
) -> DatasetResult {
    let pick = |s: &SeedStatistics| match which {
        Statistic::Mean => s.mean,
        Statistic::Std => s.std,
    };
    let mut out = result.clone();
    for (category, s) in out.categories.iter_mut().zip(&stats.categories) {
        category.metrics = pick(s);
    }
    out.mean = pick(&stats.overall);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_seeded_distinct_and_in_pool_order() {
        let pool: Vec<PathBuf> = (0..8).map(|i| PathBuf::from(format!("{i}.png"))).collect();
        let a = draw(&pool, 4, 0);
        assert_eq!(a, draw(&pool, 4, 0));
        assert_eq!(a.len(), 4);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
        let seeds: HashSet<Vec<PathBuf>> = (0..5).map(|s| draw(&pool, 4, s)).collect();
        assert!(
            seeds.len() >= 4,
            "seeds 0–4 should mostly draw different sets"
        );
        assert_eq!(draw(&pool, 8, 3).len(), 8);
    }

    #[test]
    fn statistics_use_the_sample_deviation_and_skip_undefined() {
        let a = MetricSet {
            image_auroc: Some(0.8),
            pixel_auroc: Some(0.5),
            ..Default::default()
        };
        let b = MetricSet {
            image_auroc: Some(0.9),
            ..Default::default()
        };
        let s = statistics("x", &[&a, &b]);
        assert!((s.mean.image_auroc.unwrap() - 0.85).abs() < 1e-12);
        assert!((s.std.image_auroc.unwrap() - 0.005f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.mean.pixel_auroc, Some(0.5));
        assert_eq!(s.std.pixel_auroc, None);
        assert_eq!(s.mean.image_ap, None);
    }
}
