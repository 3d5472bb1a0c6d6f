//! `csv`: a CSV manifest of image paths (or ids) and labels, with an optional mask column.

use std::path::{Path, PathBuf};

use super::{KindInfo, LoadLayout, ParseLayout};
use crate::datasets::category::{finish, Ctx, Listed, Missing};
use crate::datasets::fsutil::require_file;
use crate::datasets::manifest::{empty_cell, listed_file, row_origin, Row, SeenImages, Table};
use crate::datasets::spec::{Options, Template};
use crate::datasets::{accepted_labels, folder_name, Category, DatasetError, Sample};

/// `csv:MANIFEST,image=COL,label=COL[,...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvOptions {
    /// The CSV file.
    pub manifest: PathBuf,
    /// Column of image paths (or ids, with `template`).
    pub image_column: String,
    /// Column of labels.
    pub label_column: String,
    /// Label values meaning anomalous (lower case).
    pub anomalous_values: Vec<String>,
    /// Label values meaning normal (lower case).
    pub normal_values: Vec<String>,
    /// Column of mask paths, if any (empty cells: no mask).
    pub mask_column: Option<String>,
    /// Turns the image cell into a path.
    pub template: Option<Template>,
    /// The category's name (default: the data set's name).
    pub category: Option<String>,
}

const DEFAULT_ANOMALOUS: [&str; 6] = ["1", "true", "yes", "anomaly", "anomalous", "abnormal"];
const DEFAULT_NORMAL: [&str; 5] = ["0", "false", "no", "normal", "good"];

impl ParseLayout for CsvOptions {
    const INFO: KindInfo = KindInfo {
        name: "csv",
        usage: "csv:MANIFEST,image=COL,label=COL[,anomalous=V1+V2][,normal=V1+V2][,mask=COL]\
                [,template=FMT][,category=NAME]",
        description: "      \
A CSV file with a header row (column names are trimmed). Paths are relative to the
      manifest's folder. template= turns the image cell into a file name: {} is the value, {:0N}
      the value zero-padded to N digits. Label values are trimmed and compared without case;
      defaults: anomalous=1+true+yes+anomaly+anomalous+abnormal, normal=0+false+no+normal+good.
      Without mask= the set is image-level (no pixel metrics).",
        examples: "
  csv:data/headct/labels.csv,image=id,label=hemorrhage,template=head_ct/{:03}.png",
        keys: &[
            "image",
            "label",
            "anomalous",
            "normal",
            "mask",
            "template",
            "category",
        ],
        may_be_empty: &[],
        root_what: "manifest file",
        root_optional: false,
    };

    fn parse(opts: &mut Options) -> Result<Self, String> {
        let manifest = opts.root()?;
        let (Some(image_column), Some(label_column)) = (opts.text("image"), opts.text("label"))
        else {
            return Err("expected image=COL and label=COL (the manifest's column names)".into());
        };
        let (anomalous_values, normal_values) = label_values(opts)?;
        Ok(CsvOptions {
            manifest,
            image_column,
            label_column,
            anomalous_values,
            normal_values,
            mask_column: opts.text("mask"),
            template: opts.template("template")?,
            category: opts.text("category"),
        })
    }
}

/// The anomalous and normal label values, lower case; a default normal value that the user
/// made anomalous is dropped.
fn label_values(opts: &mut Options) -> Result<(Vec<String>, Vec<String>), String> {
    let lower = |v: Vec<String>| -> Vec<String> { v.iter().map(|s| s.to_lowercase()).collect() };
    let defaults = |d: &[&str]| -> Vec<String> { d.iter().map(|s| s.to_string()).collect() };
    let anomalous = lower(
        opts.list("anomalous")?
            .unwrap_or_else(|| defaults(&DEFAULT_ANOMALOUS)),
    );
    let normal = match opts.list("normal")? {
        Some(v) => lower(v),
        None => defaults(&DEFAULT_NORMAL)
            .into_iter()
            .filter(|s| !anomalous.contains(s))
            .collect(),
    };
    if let Some(both) = anomalous.iter().find(|v| normal.contains(v)) {
        return Err(format!(
            "label value \"{both}\" is both anomalous and normal"
        ));
    }
    Ok((anomalous, normal))
}

/// The manifest's columns, by index.
struct Columns {
    image: usize,
    label: usize,
    mask: Option<usize>,
}

impl LoadLayout for CsvOptions {
    fn shown_root_and_name(&self) -> (PathBuf, Option<String>) {
        (
            self.manifest.clone(),
            folder_name(&manifest_dir(&self.manifest)),
        )
    }

    fn load(&self, ctx: &mut Ctx, name: &str) -> Result<Vec<Category>, DatasetError> {
        require_file(&self.manifest, "manifest")?;
        let table = Table::read(&self.manifest)?;
        let cols = Columns {
            image: table.column(&self.image_column, "image")?,
            label: table.column(&self.label_column, "label")?,
            mask: self
                .mask_column
                .as_ref()
                .map(|m| table.column(m, "mask"))
                .transpose()?,
        };
        let mut listed = Listed {
            name: self.category.clone().unwrap_or_else(|| name.to_string()),
            samples: Vec::new(),
            has_masks: cols.mask.is_some(),
            missing: Vec::new(),
            looked_in: self.manifest.display().to_string(),
        };
        let mut seen = SeenImages::default();
        for row in &table.rows {
            self.add_row(ctx, &mut seen, &mut listed, (&table, &cols, row))?;
        }
        if listed.samples.is_empty() {
            return Err(DatasetError::NoImages {
                path: self.manifest.clone(),
                detail: "(the file has a header but no rows)".into(),
            });
        }
        Ok(vec![finish(ctx, listed)?])
    }
}

/// The folder the manifest's paths are relative to.
fn manifest_dir(manifest: &Path) -> PathBuf {
    match manifest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl CsvOptions {
    fn label(&self, table: &Table, cols: &Columns, row: &Row) -> Result<bool, DatasetError> {
        let label = row.fields[cols.label].trim();
        let lower = label.to_lowercase();
        if self.anomalous_values.contains(&lower) {
            Ok(true)
        } else if self.normal_values.contains(&lower) {
            Ok(false)
        } else {
            Err(DatasetError::UnknownLabel {
                manifest: self.manifest.clone(),
                line: row.line,
                column: table.header[cols.label].clone(),
                value: label.to_string(),
                accepted: accepted_labels(&self.anomalous_values, &self.normal_values),
            })
        }
    }

    /// The image file a row names, through the template if there is one.
    fn image_file(&self, table: &Table, cols: &Columns, row: &Row) -> Result<String, DatasetError> {
        let cell = row.fields[cols.image].trim();
        if cell.is_empty() {
            return Err(empty_cell(
                &self.manifest,
                row.line,
                &table.header[cols.image],
            ));
        }
        match &self.template {
            Some(t) => t.apply(cell).map_err(|message| DatasetError::Manifest {
                path: self.manifest.clone(),
                line: row.line,
                message,
            }),
            None => Ok(cell.to_string()),
        }
    }

    /// Checks a row's label and files and adds its sample.
    fn add_row(
        &self,
        ctx: &mut Ctx,
        seen: &mut SeenImages,
        listed: &mut Listed,
        (table, cols, row): (&Table, &Columns, &Row),
    ) -> Result<(), DatasetError> {
        let (manifest, line) = (&self.manifest, row.line);
        let base = manifest_dir(manifest);
        let anomalous = self.label(table, cols, row)?;
        let file = self.image_file(table, cols, row)?;
        let image = listed_file(&base, &file, manifest, line, "image")?;
        if !seen.first_listing(ctx, manifest, &image, line, anomalous)? {
            return Ok(());
        }
        let mask = match cols.mask.map(|c| row.fields[c].trim()) {
            None | Some("") => None,
            Some(m) => Some(listed_file(&base, m, manifest, line, "mask")?),
        };
        let source = row_origin(manifest, line);
        if let (true, None, Some(c)) = (anomalous, &mask, cols.mask) {
            listed.missing.push(Missing {
                image: image.clone(),
                origin: source.clone(),
                expected: format!("a path in column \"{}\"", table.header[c]),
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
}
