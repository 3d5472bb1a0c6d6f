//! The five layouts: listing files into categories of samples.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::fsutil::{
    dimensions, index_stems, is_dir, list_images, require_dir, require_file, sniff_file, stem,
    subdirs,
};
use super::spec::{Layout, Split, Template};
use super::table::Table;
use super::{
    accepted_labels, folder_name, Category, DataSpec, Dataset, DatasetError, DatasetWarning,
    LoadOptions, Sample,
};

/// How many example paths a warning shows.
const EXAMPLES: usize = 3;

struct Ctx<'a> {
    opts: &'a LoadOptions,
    warnings: Vec<DatasetWarning>,
}

/// An anomalous image whose mask was not found.
struct Missing {
    image: PathBuf,
    origin: String,
    expected: String,
}

pub(crate) fn load(spec: &DataSpec, opts: &LoadOptions) -> Result<Dataset, DatasetError> {
    let mut ctx = Ctx {
        opts,
        warnings: Vec::new(),
    };
    let (root, default_name) = root_and_name(&spec.layout);
    let name = spec
        .name
        .clone()
        .or(default_name)
        .unwrap_or_else(|| spec.kind().to_string());
    let categories = match &spec.layout {
        Layout::Mvtec {
            root,
            categories,
            split,
        } => load_mvtec(&mut ctx, root, categories.as_deref(), *split)?,
        Layout::Visa {
            root,
            categories,
            split,
            manifest,
        } => load_visa(&mut ctx, root, categories.as_deref(), *split, manifest)?,
        Layout::Folder {
            root,
            normal,
            anomalous,
            masks,
            mask_suffix,
            category,
        } => {
            let resolve = |d: &Option<PathBuf>| {
                d.as_ref().map(|d| match root {
                    Some(r) if d.is_relative() => r.join(d),
                    _ => d.clone(),
                })
            };
            if let Some(r) = root {
                require_dir(r, "folder root")?;
            }
            let cat = category.clone().unwrap_or_else(|| name.clone());
            vec![load_folder(
                &mut ctx,
                cat,
                resolve(normal).as_deref(),
                resolve(anomalous).as_deref(),
                resolve(masks).as_deref(),
                mask_suffix,
            )?]
        }
        Layout::Csv {
            manifest,
            image_column,
            label_column,
            anomalous_values,
            normal_values,
            mask_column,
            template,
            category,
        } => {
            let cat = category.clone().unwrap_or_else(|| name.clone());
            vec![load_csv(
                &mut ctx,
                cat,
                manifest,
                CsvColumns {
                    image: image_column,
                    label: label_column,
                    mask: mask_column.as_deref(),
                    anomalous_values,
                    normal_values,
                    template: template.as_ref(),
                },
            )?]
        }
        Layout::YesNo {
            root,
            yes,
            no,
            category,
        } => {
            require_dir(root, "data set root")?;
            let cat = category.clone().unwrap_or_else(|| name.clone());
            let yes_dir = root.join(yes);
            let no_dir = root.join(no);
            require_dir(&yes_dir, "folder of anomalous images (yes=)")?;
            require_dir(&no_dir, "folder of normal images (no=)")?;
            let mut samples = Vec::new();
            for (dir, anomalous) in [(&no_dir, false), (&yes_dir, true)] {
                for image in list_images(dir, &mut ctx.warnings)? {
                    samples.push(Sample {
                        image,
                        anomalous,
                        mask: None,
                        defect: None,
                        source: dir.display().to_string(),
                    });
                }
            }
            let looked = format!("{} and {}", yes_dir.display(), no_dir.display());
            vec![finish(&mut ctx, cat, samples, false, Vec::new(), looked)?]
        }
    };
    let has_masks = categories.iter().all(|c| c.has_masks);
    Ok(Dataset {
        name,
        kind: spec.kind(),
        root,
        categories,
        has_masks,
        warnings: ctx.warnings,
    })
}

/// The root shown in the data set, and the default display name.
fn root_and_name(layout: &Layout) -> (PathBuf, Option<String>) {
    match layout {
        Layout::Mvtec { root, .. } | Layout::Visa { root, .. } | Layout::YesNo { root, .. } => {
            (root.clone(), folder_name(root))
        }
        Layout::Csv { manifest, .. } => {
            let dir = match manifest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (manifest.clone(), folder_name(&dir))
        }
        Layout::Folder {
            root: Some(root), ..
        } => (root.clone(), folder_name(root)),
        Layout::Folder {
            root: None,
            normal,
            anomalous,
            masks,
            ..
        } => {
            // The deepest folder holding all the given folders (kvasir for kvasir/images and
            // kvasir/masks), else the image folder itself.
            let dirs: Vec<PathBuf> = [normal, anomalous, masks]
                .into_iter()
                .flatten()
                .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
                .collect();
            let first = anomalous
                .as_ref()
                .or(normal.as_ref())
                .cloned()
                .unwrap_or_default();
            let mut common: Option<PathBuf> = None;
            for d in &dirs {
                common = Some(match common {
                    None => d.clone(),
                    Some(c) => c
                        .components()
                        .zip(d.components())
                        .take_while(|(a, b)| a == b)
                        .map(|(a, _)| a)
                        .collect(),
                });
            }
            let name = match common {
                Some(c) if dirs.len() > 1 && c.file_name().is_some() => folder_name(&c),
                _ => folder_name(&first),
            };
            (first, name)
        }
    }
}

/// Sorts, applies the mask policy and checks headers; errors on an empty category.
fn finish(
    ctx: &mut Ctx,
    name: String,
    mut samples: Vec<Sample>,
    layout_has_masks: bool,
    mut missing: Vec<Missing>,
    looked_in: String,
) -> Result<Category, DatasetError> {
    if samples.is_empty() {
        return Err(DatasetError::EmptyCategory {
            category: name,
            looked_in,
        });
    }
    samples.sort_by(|a, b| a.image.cmp(&b.image));
    let mut has_masks = layout_has_masks;
    if !missing.is_empty() {
        missing.sort_by(|a, b| a.image.cmp(&b.image));
        if !ctx.opts.allow_missing_masks {
            let count = missing.len();
            let first = missing.swap_remove(0);
            return Err(DatasetError::MissingMask {
                image: first.image,
                origin: first.origin,
                expected: first.expected,
                category: name,
                count,
            });
        }
        has_masks = false;
        ctx.warnings.push(DatasetWarning::MissingMasks {
            category: name.clone(),
            count: missing.len(),
            examples: missing
                .iter()
                .take(EXAMPLES)
                .map(|m| m.image.clone())
                .collect(),
        });
    }
    for s in &samples {
        if let Some(mask) = &s.mask {
            if let Err(reason) = sniff_file(mask)? {
                return Err(DatasetError::NotAnImage {
                    path: mask.clone(),
                    origin: format!("{} as the mask of {}", s.source, s.image.display()),
                    reason,
                });
            }
        }
    }
    if ctx.opts.check_sizes {
        for s in &samples {
            let image_size = dimensions(&s.image)?.map_err(|error| DatasetError::BadImage {
                path: s.image.clone(),
                origin: s.source.clone(),
                error,
            })?;
            if let Some(mask) = &s.mask {
                let mask_size = dimensions(mask)?.map_err(|error| DatasetError::BadImage {
                    path: mask.clone(),
                    origin: format!("{} as the mask of {}", s.source, s.image.display()),
                    error,
                })?;
                if mask_size != image_size {
                    ctx.warnings.push(DatasetWarning::MaskSizeMismatch {
                        image: s.image.clone(),
                        mask: mask.clone(),
                        image_size,
                        mask_size,
                    });
                }
            }
        }
    }
    Ok(Category {
        name,
        samples,
        has_masks,
    })
}

/// Finds the mask of `image` among `index` (masks by stem), trying the stems in order.
fn find_mask(
    index: &BTreeMap<String, Vec<PathBuf>>,
    used: &mut BTreeSet<String>,
    image: &Path,
    stems: &[String],
) -> Result<Option<PathBuf>, DatasetError> {
    for s in stems {
        if let Some(paths) = index.get(s) {
            if paths.len() > 1 {
                return Err(DatasetError::AmbiguousMask {
                    image: image.to_path_buf(),
                    candidates: paths.clone(),
                });
            }
            used.insert(s.clone());
            return Ok(Some(paths[0].clone()));
        }
    }
    Ok(None)
}

fn warn_unused(
    ctx: &mut Ctx,
    folder: &Path,
    index: &BTreeMap<String, Vec<PathBuf>>,
    used: &BTreeSet<String>,
) {
    let unused: Vec<&PathBuf> = index
        .iter()
        .filter(|(k, _)| !used.contains(*k))
        .flat_map(|(_, v)| v)
        .collect();
    if !unused.is_empty() {
        ctx.warnings.push(DatasetWarning::UnusedMasks {
            folder: folder.to_path_buf(),
            count: unused.len(),
            examples: unused.into_iter().take(EXAMPLES).cloned().collect(),
        });
    }
}

fn check_filter(
    requested: Option<&[String]>,
    available: &[String],
    root: &Path,
) -> Result<(), DatasetError> {
    for r in requested.unwrap_or_default() {
        if !available.contains(r) {
            return Err(DatasetError::UnknownCategory {
                requested: r.clone(),
                root: root.to_path_buf(),
                available: available.to_vec(),
            });
        }
    }
    Ok(())
}

fn is_mvtec_category(dir: &Path) -> bool {
    ["test", "train", "ground_truth"]
        .iter()
        .any(|d| is_dir(&dir.join(d)))
}

fn load_mvtec(
    ctx: &mut Ctx,
    root: &Path,
    filter: Option<&[String]>,
    split: Split,
) -> Result<Vec<Category>, DatasetError> {
    require_dir(root, "MVTec AD root")?;
    let all: Vec<(String, PathBuf)> = if is_mvtec_category(root) {
        let name = folder_name(root).unwrap_or_else(|| "category".into());
        vec![(name, root.to_path_buf())]
    } else {
        subdirs(root)?
            .into_iter()
            .filter(|(_, d)| is_mvtec_category(d))
            .collect()
    };
    if all.is_empty() {
        return Err(DatasetError::NotLayout {
            kind: super::DataKind::Mvtec,
            root: root.to_path_buf(),
            expected: "expected category folders ROOT/<category>/test/<defect>/ (or ROOT itself \
                       a category folder with test/ and ground_truth/)"
                .into(),
        });
    }
    let names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    check_filter(filter, &names, root)?;
    let mut out = Vec::new();
    for (name, dir) in all {
        if filter.is_some_and(|f| !f.contains(&name)) {
            continue;
        }
        let split_dir = dir.join(split.as_str());
        require_dir(
            &split_dir,
            &format!("{split} split of MVTec AD category \"{name}\""),
        )?;
        let gt = dir.join("ground_truth");
        let mut samples = Vec::new();
        let mut missing = Vec::new();
        let mut defects = 0;
        for entry in std::fs::read_dir(&split_dir).map_err(|source| DatasetError::Io {
            path: split_dir.clone(),
            source,
        })? {
            let entry = entry.map_err(|source| DatasetError::Io {
                path: split_dir.clone(),
                source,
            })?;
            let path = entry.path();
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if !file_name.starts_with('.') && !is_dir(&path) {
                ctx.warnings.push(DatasetWarning::SkippedFile {
                    path,
                    reason: "a file outside any defect folder".into(),
                });
            }
        }
        for (defect, ddir) in subdirs(&split_dir)? {
            defects += 1;
            let images = list_images(&ddir, &mut ctx.warnings)?;
            let source = ddir.display().to_string();
            if defect == "good" {
                samples.extend(images.into_iter().map(|image| Sample {
                    image,
                    anomalous: false,
                    mask: None,
                    defect: None,
                    source: source.clone(),
                }));
                continue;
            }
            let mask_dir = gt.join(&defect);
            let index = if is_dir(&mask_dir) {
                index_stems(&mask_dir)?
            } else {
                BTreeMap::new()
            };
            let mut used = BTreeSet::new();
            for image in images {
                let s = stem(&image);
                let mask = find_mask(&index, &mut used, &image, &[format!("{s}_mask"), s.clone()])?;
                if mask.is_none() {
                    missing.push(Missing {
                        image: image.clone(),
                        origin: source.clone(),
                        expected: format!("{}/{s}_mask.png", mask_dir.display()),
                    });
                }
                samples.push(Sample {
                    image,
                    anomalous: true,
                    mask,
                    defect: Some(defect.clone()),
                    source: source.clone(),
                });
            }
            warn_unused(ctx, &mask_dir, &index, &used);
        }
        let looked = if defects == 0 {
            format!("{} (no defect folders)", split_dir.display())
        } else {
            format!("{}/<defect>/", split_dir.display())
        };
        out.push(finish(ctx, name, samples, true, missing, looked)?);
    }
    Ok(out)
}

fn load_folder(
    ctx: &mut Ctx,
    category: String,
    normal: Option<&Path>,
    anomalous: Option<&Path>,
    masks: Option<&Path>,
    mask_suffix: &str,
) -> Result<Category, DatasetError> {
    if let Some(d) = normal {
        require_dir(d, "normal image folder (normal=)")?;
    }
    if let Some(d) = anomalous {
        require_dir(d, "anomalous image folder (anomalous=)")?;
    }
    if let Some(d) = masks {
        require_dir(d, "mask folder (masks=)")?;
    }
    let mut samples = Vec::new();
    let mut missing = Vec::new();
    if let Some(dir) = normal {
        let source = dir.display().to_string();
        for image in list_images(dir, &mut ctx.warnings)? {
            samples.push(Sample {
                image,
                anomalous: false,
                mask: None,
                defect: None,
                source: source.clone(),
            });
        }
    }
    if let Some(dir) = anomalous {
        let source = dir.display().to_string();
        let index = masks.map(index_stems).transpose()?;
        let mut used = BTreeSet::new();
        for image in list_images(dir, &mut ctx.warnings)? {
            let mut mask = None;
            if let (Some(index), Some(mask_dir)) = (&index, masks) {
                let want = format!("{}{mask_suffix}", stem(&image));
                mask = find_mask(index, &mut used, &image, std::slice::from_ref(&want))?;
                if mask.is_none() {
                    missing.push(Missing {
                        image: image.clone(),
                        origin: source.clone(),
                        expected: format!("{}/{want}.<ext>", mask_dir.display()),
                    });
                }
            }
            samples.push(Sample {
                image,
                anomalous: true,
                mask,
                defect: None,
                source: source.clone(),
            });
        }
        if let (Some(index), Some(mask_dir)) = (&index, masks) {
            warn_unused(ctx, mask_dir, index, &used);
        }
    }
    let looked = [normal, anomalous]
        .into_iter()
        .flatten()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ");
    finish(ctx, category, samples, masks.is_some(), missing, looked)
}

/// Resolves a file named by a manifest cell and checks it exists and is an image.
fn listed_file(
    base: &Path,
    cell: &str,
    manifest: &Path,
    line: usize,
    column: &str,
) -> Result<PathBuf, DatasetError> {
    let path = base.join(cell);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(DatasetError::NotAnImage {
                path,
                origin: format!("{} line {line}", manifest.display()),
                reason: "a folder, not a file".into(),
            })
        }
        Err(_) => {
            let hint = if column == "image" && Path::new(cell).extension().is_none() {
                format!(
                    "; the cell is \"{cell}\": if it is an id, use template= to turn it into a \
                     file name (e.g. template=images/{{:03}}.png)"
                )
            } else {
                String::new()
            };
            return Err(DatasetError::MissingFile {
                manifest: manifest.to_path_buf(),
                line,
                column: column.into(),
                path,
                hint,
            });
        }
    }
    if let Err(reason) = sniff_file(&path)? {
        return Err(DatasetError::NotAnImage {
            path,
            origin: format!("{} line {line}", manifest.display()),
            reason,
        });
    }
    Ok(path)
}

fn empty_cell(manifest: &Path, line: usize, column: &str) -> DatasetError {
    DatasetError::Manifest {
        path: manifest.to_path_buf(),
        line,
        message: format!("the {column} cell is empty"),
    }
}

fn load_visa(
    ctx: &mut Ctx,
    root: &Path,
    filter: Option<&[String]>,
    split: Split,
    manifest: &Path,
) -> Result<Vec<Category>, DatasetError> {
    require_dir(root, "VisA root")?;
    let manifest = root.join(manifest);
    if !manifest.is_file() {
        return Err(DatasetError::NotLayout {
            kind: super::DataKind::Visa,
            root: root.to_path_buf(),
            expected: format!(
                "expected the manifest {} (columns object,split,label,image,mask)",
                manifest.display()
            ),
        });
    }
    let table = Table::read(&manifest)?;
    let c_object = table.column("object", "visa")?;
    let c_split = table.column("split", "visa")?;
    let c_label = table.column("label", "visa")?;
    let c_image = table.column("image", "visa")?;
    let c_mask = table.column("mask", "visa")?;
    let mut objects: BTreeMap<String, (Vec<Sample>, Vec<Missing>)> = BTreeMap::new();
    let mut all_objects = BTreeSet::new();
    for row in &table.rows {
        let line = row.line;
        let cell = |i: usize| row.fields[i].trim();
        let object = cell(c_object);
        if object.is_empty() {
            return Err(empty_cell(&manifest, line, "object"));
        }
        all_objects.insert(object.to_string());
        let row_split = match cell(c_split).to_ascii_lowercase().as_str() {
            "train" => Split::Train,
            "test" => Split::Test,
            other => {
                return Err(DatasetError::Manifest {
                    path: manifest.clone(),
                    line,
                    message: format!("unknown split \"{other}\"; expected train or test"),
                })
            }
        };
        let anomalous = match cell(c_label).to_ascii_lowercase().as_str() {
            "normal" => false,
            "anomaly" => true,
            _ => {
                return Err(DatasetError::UnknownLabel {
                    manifest: manifest.clone(),
                    line,
                    column: table.header[c_label].clone(),
                    value: cell(c_label).to_string(),
                    accepted: "anomalous = anomaly; normal = normal".into(),
                })
            }
        };
        if row_split != split || filter.is_some_and(|f| !f.iter().any(|c| c == object)) {
            continue;
        }
        if cell(c_image).is_empty() {
            return Err(empty_cell(&manifest, line, "image"));
        }
        let image = listed_file(root, cell(c_image), &manifest, line, "image")?;
        let mask = match cell(c_mask) {
            "" => None,
            m => Some(listed_file(root, m, &manifest, line, "mask")?),
        };
        let source = format!("{} line {line}", manifest.display());
        let entry = objects.entry(object.to_string()).or_default();
        if anomalous && mask.is_none() {
            entry.1.push(Missing {
                image: image.clone(),
                origin: source.clone(),
                expected: "a path in the mask column".into(),
            });
        }
        entry.0.push(Sample {
            image,
            anomalous,
            mask,
            defect: None,
            source,
        });
    }
    let available: Vec<String> = all_objects.into_iter().collect();
    check_filter(filter, &available, root)?;
    if objects.is_empty() {
        return Err(DatasetError::NoImages {
            path: manifest,
            detail: format!("for split {split}"),
        });
    }
    if let Some(f) = filter {
        if let Some(absent) = f.iter().find(|c| !objects.contains_key(*c)) {
            return Err(DatasetError::EmptyCategory {
                category: absent.clone(),
                looked_in: format!("{} rows of split {split}", manifest.display()),
            });
        }
    }
    let looked = format!("{}", manifest.display());
    objects
        .into_iter()
        .map(|(name, (samples, missing))| finish(ctx, name, samples, true, missing, looked.clone()))
        .collect()
}

struct CsvColumns<'a> {
    image: &'a str,
    label: &'a str,
    mask: Option<&'a str>,
    anomalous_values: &'a [String],
    normal_values: &'a [String],
    template: Option<&'a Template>,
}

fn load_csv(
    ctx: &mut Ctx,
    category: String,
    manifest: &Path,
    cols: CsvColumns,
) -> Result<Category, DatasetError> {
    require_file(manifest, "manifest")?;
    let base = match manifest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let table = Table::read(manifest)?;
    let c_image = table.column(cols.image, "image")?;
    let c_label = table.column(cols.label, "label")?;
    let c_mask = cols.mask.map(|m| table.column(m, "mask")).transpose()?;
    let mut samples = Vec::new();
    let mut missing = Vec::new();
    for row in &table.rows {
        let line = row.line;
        let label = row.fields[c_label].trim();
        let lower = label.to_lowercase();
        let anomalous = if cols.anomalous_values.contains(&lower) {
            true
        } else if cols.normal_values.contains(&lower) {
            false
        } else {
            return Err(DatasetError::UnknownLabel {
                manifest: manifest.to_path_buf(),
                line,
                column: table.header[c_label].clone(),
                value: label.to_string(),
                accepted: accepted_labels(cols.anomalous_values, cols.normal_values),
            });
        };
        let cell = row.fields[c_image].trim();
        if cell.is_empty() {
            return Err(empty_cell(manifest, line, &table.header[c_image]));
        }
        let file = match cols.template {
            Some(t) => t.apply(cell).map_err(|message| DatasetError::Manifest {
                path: manifest.to_path_buf(),
                line,
                message,
            })?,
            None => cell.to_string(),
        };
        let image = listed_file(&base, &file, manifest, line, "image")?;
        let source = format!("{} line {line}", manifest.display());
        let mask = match c_mask.map(|c| row.fields[c].trim()) {
            None | Some("") => None,
            Some(m) => Some(listed_file(&base, m, manifest, line, "mask")?),
        };
        if anomalous && mask.is_none() {
            if let Some(c) = c_mask {
                missing.push(Missing {
                    image: image.clone(),
                    origin: source.clone(),
                    expected: format!("a path in column \"{}\"", table.header[c]),
                });
            }
        }
        samples.push(Sample {
            image,
            anomalous,
            mask,
            defect: None,
            source,
        });
    }
    if samples.is_empty() {
        return Err(DatasetError::NoImages {
            path: manifest.to_path_buf(),
            detail: "(the file has a header but no rows)".into(),
        });
    }
    let looked = manifest.display().to_string();
    finish(ctx, category, samples, c_mask.is_some(), missing, looked)
}
