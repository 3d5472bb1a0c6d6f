//! File names derived from data set, category and image names: one folder per data set and
//! category, and for saved maps `<dataset>/<category>/<defect or normal|anomalous>/<stem>`,
//! unique however the inputs are named.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use headclip_data::datasets::{Dataset, Sample};

/// A name made safe as one path component: letters, digits, `-`, `_`, `.` and spaces stay,
/// anything else (separators, control characters) becomes `_`; a leading `.` (hidden files,
/// `..`) is prefixed with `_`; the empty name becomes `_`.
pub fn component(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    out = out.trim().to_string();
    if out.is_empty() {
        return "_".into();
    }
    if out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

/// Makes `names` unique by appending `_2`, `_3`, ... to later duplicates.
fn dedupe(names: &mut [PathBuf]) {
    let mut taken: HashSet<PathBuf> = HashSet::new();
    for name in names.iter_mut() {
        if taken.insert(name.clone()) {
            continue;
        }
        let base = name.as_os_str().to_owned();
        let mut n = 2;
        loop {
            let mut candidate = base.clone();
            candidate.push(format!("_{n}"));
            let candidate = PathBuf::from(candidate);
            if taken.insert(candidate.clone()) {
                *name = candidate;
                break;
            }
            n += 1;
        }
    }
}

/// The folder of every category, `<dataset>/<category>`, relative and unique: `[d][c]`.
pub fn category_folders(datasets: &[Dataset]) -> Vec<Vec<PathBuf>> {
    let mut flat: Vec<PathBuf> = datasets
        .iter()
        .flat_map(|ds| {
            ds.categories
                .iter()
                .map(move |c| Path::new(&component(&ds.name)).join(component(&c.name)))
        })
        .collect();
    dedupe(&mut flat);
    let mut it = flat.into_iter();
    datasets
        .iter()
        .map(|ds| {
            ds.categories
                .iter()
                .map(|_| it.next().expect("one per category"))
                .collect()
        })
        .collect()
}

fn sample_folder(sample: &Sample) -> String {
    match &sample.defect {
        Some(d) => component(d),
        None if sample.anomalous => "anomalous".into(),
        None => "normal".into(),
    }
}

fn stem(path: &Path) -> String {
    component(
        &path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into()),
    )
}

/// The map name of every sample, `[d][c][s]`, relative and without extension:
/// `<category folder>/<defect or normal|anomalous>/<stem>`. Stems that collide in one folder
/// keep their extension (`Y92_jpg`, `Y92_png`); anything still colliding gets `_2`, `_3`, ...
pub fn map_names(datasets: &[Dataset], folders: &[Vec<PathBuf>]) -> Vec<Vec<Vec<PathBuf>>> {
    let mut flat: Vec<(PathBuf, String, Option<String>)> = Vec::new();
    for (d, ds) in datasets.iter().enumerate() {
        for (c, cat) in ds.categories.iter().enumerate() {
            for s in &cat.samples {
                let dir = folders[d][c].join(sample_folder(s));
                let ext = s.image.extension().map(|e| component(&e.to_string_lossy()));
                flat.push((dir, stem(&s.image), ext));
            }
        }
    }
    let mut count: HashMap<(PathBuf, String), usize> = HashMap::new();
    for (dir, stem, _) in &flat {
        *count.entry((dir.clone(), stem.clone())).or_default() += 1;
    }
    let mut names: Vec<PathBuf> = flat
        .into_iter()
        .map(|(dir, stem, ext)| {
            let name = match ext {
                Some(ext) if count[&(dir.clone(), stem.clone())] > 1 => format!("{stem}_{ext}"),
                _ => stem,
            };
            dir.join(name)
        })
        .collect();
    dedupe(&mut names);
    let mut it = names.into_iter();
    datasets
        .iter()
        .map(|ds| {
            ds.categories
                .iter()
                .map(|c| {
                    c.samples
                        .iter()
                        .map(|_| it.next().expect("one per sample"))
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// `base` with `suffix` appended to its file name (`a/b` + `.npy` = `a/b.npy`); unlike
/// `Path::with_extension`, nothing in the name is replaced (`a/b.c` + `.npy` = `a/b.c.npy`).
pub fn append_to_file_name(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_safe() {
        assert_eq!(component("bottle"), "bottle");
        assert_eq!(component("a/b"), "a_b");
        assert_eq!(component(".."), "_..");
        assert_eq!(component(""), "_");
        assert_eq!(component("Y1 (2)"), "Y1 _2_");
    }

    #[test]
    fn suffixes_are_appended_not_substituted() {
        assert_eq!(
            append_to_file_name(Path::new("a/b"), ".npy"),
            Path::new("a/b.npy")
        );
        assert_eq!(
            append_to_file_name(Path::new("a/Y92_jpg.v2"), ".npy"),
            Path::new("a/Y92_jpg.v2.npy")
        );
    }

    #[test]
    fn duplicates_get_numbers() {
        let mut names = vec![
            PathBuf::from("a"),
            PathBuf::from("a"),
            PathBuf::from("a_2"),
            PathBuf::from("a"),
        ];
        dedupe(&mut names);
        let set: HashSet<_> = names.iter().collect();
        assert_eq!(set.len(), 4, "{names:?}");
        assert_eq!(names[0], PathBuf::from("a"));
    }
}
