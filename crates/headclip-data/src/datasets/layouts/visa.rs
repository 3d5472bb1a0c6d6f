//! `visa`: VisA, listed by its `split_csv/1cls.csv` manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{KindInfo, LoadLayout, ParseLayout};
use crate::datasets::category::{check_filter, finish, wanted, Ctx, Listed, Missing};
use crate::datasets::fsutil::require_dir;
use crate::datasets::manifest::{empty_cell, listed_file, row_origin, Row, SeenImages, Table};
use crate::datasets::spec::{Options, Split};
use crate::datasets::{folder_name, Category, DataKind, DatasetError, Sample};

/// `visa:ROOT[,category=A+B][,split=test|train][,manifest=PATH]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisaOptions {
    /// The folder holding `split_csv/` and one folder per object.
    pub root: PathBuf,
    /// Objects to keep (`None`: all).
    pub categories: Option<Vec<String>>,
    /// The split to read.
    pub split: Split,
    /// The manifest, relative to `root` unless absolute (default `split_csv/1cls.csv`).
    pub manifest: PathBuf,
}

impl ParseLayout for VisaOptions {
    const INFO: KindInfo = KindInfo {
        name: "visa",
        usage: "visa:ROOT[,category=A+B][,split=test|train][,manifest=split_csv/1cls.csv]",
        description: "      \
VisA: the manifest (default ROOT/split_csv/1cls.csv) has the columns
      object,split,label,image,mask; label is normal or anomaly; paths are relative to ROOT; masks
      are label maps (every value above 0 is anomalous). One category per object.",
        examples: "
  visa:data/VisA_20220922,split=test",
        keys: &["category", "split", "manifest"],
        may_be_empty: &[],
        root_what: "root folder",
        root_optional: false,
    };

    fn parse(opts: &mut Options) -> Result<Self, String> {
        Ok(VisaOptions {
            root: opts.root()?,
            categories: opts.list("category")?,
            split: opts.split()?,
            manifest: opts
                .path("manifest")
                .unwrap_or_else(|| PathBuf::from("split_csv/1cls.csv")),
        })
    }
}

/// The manifest's columns, by index.
struct Columns {
    object: usize,
    split: usize,
    label: usize,
    image: usize,
    mask: usize,
}

/// What one manifest row says, before its files are checked.
struct RowFacts<'a> {
    object: &'a str,
    split: Split,
    anomalous: bool,
}

impl LoadLayout for VisaOptions {
    fn shown_root_and_name(&self) -> (PathBuf, Option<String>) {
        (self.root.clone(), folder_name(&self.root))
    }

    fn load(&self, ctx: &mut Ctx, _name: &str) -> Result<Vec<Category>, DatasetError> {
        require_dir(&self.root, "VisA root")?;
        let manifest = self.root.join(&self.manifest);
        let table = read_manifest(&self.root, &manifest)?;
        let cols = columns(&table)?;
        let filter = self.categories.as_deref();
        let mut objects: BTreeMap<String, Listed> = BTreeMap::new();
        let mut all_objects = BTreeSet::new();
        let mut seen = SeenImages::default();
        for row in &table.rows {
            let facts = row_facts(&table, &cols, row)?;
            all_objects.insert(facts.object.to_string());
            if facts.split == self.split && wanted(filter, facts.object) {
                let listed = objects
                    .entry(facts.object.to_string())
                    .or_insert_with(|| new_listed(facts.object, &manifest));
                let at = (&table, &cols, row);
                add_row(ctx, &mut seen, listed, &self.root, at, facts.anomalous)?;
            }
        }
        let available: Vec<String> = all_objects.into_iter().collect();
        check_filter(filter, &available, &self.root)?;
        check_rows_found(&objects, filter, &manifest, self.split)?;
        objects.into_values().map(|l| finish(ctx, l)).collect()
    }
}

fn read_manifest(root: &Path, manifest: &Path) -> Result<Table, DatasetError> {
    if !manifest.is_file() {
        return Err(DatasetError::NotLayout {
            kind: DataKind::Visa,
            root: root.to_path_buf(),
            expected: format!(
                "expected the manifest {} (columns object,split,label,image,mask)",
                manifest.display()
            ),
        });
    }
    Table::read(manifest)
}

fn columns(table: &Table) -> Result<Columns, DatasetError> {
    Ok(Columns {
        object: table.column("object", "visa")?,
        split: table.column("split", "visa")?,
        label: table.column("label", "visa")?,
        image: table.column("image", "visa")?,
        mask: table.column("mask", "visa")?,
    })
}

/// The object, split and label of a row; every row must have them, whichever split is read.
fn row_facts<'a>(
    table: &Table,
    cols: &Columns,
    row: &'a Row,
) -> Result<RowFacts<'a>, DatasetError> {
    let cell = |i: usize| row.fields[i].trim();
    let object = cell(cols.object);
    if object.is_empty() {
        return Err(empty_cell(&table.path, row.line, "object"));
    }
    let split = match cell(cols.split).to_ascii_lowercase().as_str() {
        "train" => Split::Train,
        "test" => Split::Test,
        other => {
            return Err(DatasetError::Manifest {
                path: table.path.clone(),
                line: row.line,
                message: format!("unknown split \"{other}\"; expected train or test"),
            })
        }
    };
    let anomalous = match cell(cols.label).to_ascii_lowercase().as_str() {
        "normal" => false,
        "anomaly" => true,
        _ => {
            return Err(DatasetError::UnknownLabel {
                manifest: table.path.clone(),
                line: row.line,
                column: table.header[cols.label].clone(),
                value: cell(cols.label).to_string(),
                accepted: "anomalous = anomaly; normal = normal".into(),
            })
        }
    };
    Ok(RowFacts {
        object,
        split,
        anomalous,
    })
}

fn new_listed(object: &str, manifest: &Path) -> Listed {
    Listed {
        name: object.to_string(),
        samples: Vec::new(),
        has_masks: true,
        missing: Vec::new(),
        looked_in: manifest.display().to_string(),
    }
}

/// Checks a row's files and adds its sample.
fn add_row(
    ctx: &mut Ctx,
    seen: &mut SeenImages,
    listed: &mut Listed,
    root: &Path,
    (table, cols, row): (&Table, &Columns, &Row),
    anomalous: bool,
) -> Result<(), DatasetError> {
    let (manifest, line) = (&table.path, row.line);
    let cell = |i: usize| row.fields[i].trim();
    if cell(cols.image).is_empty() {
        return Err(empty_cell(manifest, line, "image"));
    }
    let image = listed_file(root, cell(cols.image), manifest, line, "image")?;
    if !seen.first_listing(ctx, manifest, &image, line, anomalous)? {
        return Ok(());
    }
    let mask = match cell(cols.mask) {
        "" => None,
        m => Some(listed_file(root, m, manifest, line, "mask")?),
    };
    let source = row_origin(manifest, line);
    if anomalous && mask.is_none() {
        listed.missing.push(Missing {
            image: image.clone(),
            origin: source.clone(),
            expected: "a path in the mask column".into(),
        });
    }
    listed.samples.push(Sample {
        image,
        anomalous,
        mask,
        defect: None,
        source,
    });
    Ok(())
}

/// Errors when the split has no rows, or none of a requested object.
fn check_rows_found(
    objects: &BTreeMap<String, Listed>,
    filter: Option<&[String]>,
    manifest: &Path,
    split: Split,
) -> Result<(), DatasetError> {
    if objects.is_empty() {
        return Err(DatasetError::NoImages {
            path: manifest.to_path_buf(),
            detail: format!("for split {split}"),
        });
    }
    let absent = filter
        .unwrap_or_default()
        .iter()
        .find(|c| !objects.contains_key(*c));
    match absent {
        Some(absent) => Err(DatasetError::EmptyCategory {
            category: absent.clone(),
            looked_in: format!("{} rows of split {split}", manifest.display()),
        }),
        None => Ok(()),
    }
}
