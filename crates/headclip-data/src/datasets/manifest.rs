//! CSV manifests (read with the `csv` crate) and the files their rows name; every error names
//! the manifest line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use csv::StringRecord;

use super::category::Ctx;
use super::fsutil::sniff_file;
use super::{DatasetError, DatasetWarning};

/// One data record.
#[derive(Debug)]
pub(crate) struct Row {
    /// 1-based line where the record starts (a quoted field may span lines).
    pub line: usize,
    pub fields: StringRecord,
}

/// A CSV manifest with a header row.
#[derive(Debug)]
pub(crate) struct Table {
    pub path: PathBuf,
    /// Column names, trimmed.
    pub header: Vec<String>,
    pub rows: Vec<Row>,
}

impl Table {
    /// Reads the manifest; blank lines are skipped, a row whose field count differs from the
    /// header's is an error.
    pub fn read(path: &Path) -> Result<Table, DatasetError> {
        let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text);
        let lines = LineIndex::new(text);
        let mut records = reader
            .records()
            .map(|r| r.map_err(|e| csv_error(path, &lines, e)));
        let Some(header) = records.next().transpose()? else {
            return Err(manifest_error(
                path,
                1,
                "the file is empty; expected a header row with column names".into(),
            ));
        };
        let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
        let mut rows = Vec::new();
        for record in records {
            let fields = record?;
            let line = lines.of(fields.position());
            if fields.len() == 1 && fields[0].trim().is_empty() {
                continue; // a line of spaces
            }
            if fields.len() != header.len() {
                let message = format!(
                    "{} fields, but the header has {} columns ({})",
                    fields.len(),
                    header.len(),
                    header.join(",")
                );
                return Err(manifest_error(path, line, message));
            }
            rows.push(Row { line, fields });
        }
        Ok(Table {
            path: path.to_path_buf(),
            header,
            rows,
        })
    }

    /// The index of a column: exact (trimmed) name first, then ignoring case.
    pub fn column(&self, name: &str, option: &str) -> Result<usize, DatasetError> {
        let name = name.trim();
        let find = |same: &dyn Fn(&str) -> bool| -> Vec<usize> {
            (0..self.header.len())
                .filter(|&i| same(&self.header[i]))
                .collect()
        };
        let mut found = find(&|h| h == name);
        if found.is_empty() {
            found = find(&|h| h.eq_ignore_ascii_case(name));
        }
        match found.as_slice() {
            [i] => Ok(*i),
            [] => Err(DatasetError::MissingColumn {
                path: self.path.clone(),
                column: name.to_string(),
                option: option.to_string(),
                available: self.header.clone(),
            }),
            _ => Err(manifest_error(
                &self.path,
                1,
                format!("the header has more than one column named \"{name}\""),
            )),
        }
    }
}

fn manifest_error(path: &Path, line: usize, message: String) -> DatasetError {
    DatasetError::Manifest {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// Physical line numbers from byte offsets. The `csv` crate's own line count skips the line
/// breaks inside quoted fields, and a record's offset is where its reader started: before the
/// line breaks and blank lines that precede the record.
struct LineIndex<'a> {
    text: &'a [u8],
    /// Byte offsets of the '\n's.
    breaks: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a [u8]) -> Self {
        let breaks = (0..text.len()).filter(|&i| text[i] == b'\n').collect();
        LineIndex { text, breaks }
    }

    /// The 1-based line of a record or error position (line 1 when there is none).
    fn of(&self, position: Option<&csv::Position>) -> usize {
        let mut byte = position.map_or(0, |p| p.byte() as usize);
        while self
            .text
            .get(byte)
            .is_some_and(|b| matches!(b, b'\r' | b'\n'))
        {
            byte += 1;
        }
        1 + self.breaks.partition_point(|&b| b < byte)
    }
}

fn csv_error(path: &Path, lines: &LineIndex, e: csv::Error) -> DatasetError {
    let line = lines.of(e.position());
    let message = match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "not UTF-8 text".to_string(),
        _ => e.to_string(),
    };
    manifest_error(path, line, message)
}

/// The images a manifest listed so far (by canonical path, so that `a/../x.png` is `x.png`),
/// with the line and label of their first row.
#[derive(Default)]
pub(crate) struct SeenImages {
    first: HashMap<PathBuf, (usize, bool)>,
}

impl SeenImages {
    /// Whether the row at `line` is the first to list `image`. A repeat with the same label is
    /// a warning (the caller drops it, so the image is not counted twice); with the other label
    /// it is an error.
    pub fn first_listing(
        &mut self,
        ctx: &mut Ctx,
        manifest: &Path,
        image: &Path,
        line: usize,
        anomalous: bool,
    ) -> Result<bool, DatasetError> {
        let key = std::fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf());
        let Some(&(first_line, first_anomalous)) = self.first.get(&key) else {
            self.first.insert(key, (line, anomalous));
            return Ok(true);
        };
        if first_anomalous != anomalous {
            return Err(DatasetError::ConflictingLabels {
                manifest: manifest.to_path_buf(),
                image: image.to_path_buf(),
                first_line,
                first_anomalous,
                line,
            });
        }
        ctx.warnings.push(DatasetWarning::DuplicateRow {
            manifest: manifest.to_path_buf(),
            image: image.to_path_buf(),
            first_line,
            line,
        });
        Ok(false)
    }
}

/// Where a manifest row is, for messages: `"<manifest> line N"`.
pub(crate) fn row_origin(manifest: &Path, line: usize) -> String {
    format!("{} line {line}", manifest.display())
}

/// Resolves a file named by a manifest cell and checks it exists and is an image.
pub(crate) fn listed_file(
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
                origin: row_origin(manifest, line),
                reason: "a folder, not a file".into(),
            })
        }
        Err(_) => {
            return Err(DatasetError::MissingFile {
                manifest: manifest.to_path_buf(),
                line,
                column: column.into(),
                path,
                hint: id_hint(cell, column),
            })
        }
    }
    match sniff_file(&path)? {
        Ok(_) => Ok(path),
        Err(reason) => Err(DatasetError::NotAnImage {
            path,
            origin: row_origin(manifest, line),
            reason,
        }),
    }
}

/// An image cell without an extension is likely an id that needs `template=`.
fn id_hint(cell: &str, column: &str) -> String {
    if column == "image" && Path::new(cell).extension().is_none() {
        format!(
            "; the cell is \"{cell}\": if it is an id, use template= to turn it into a file name \
             (e.g. template=images/{{:03}}.png)"
        )
    } else {
        String::new()
    }
}

pub(crate) fn empty_cell(manifest: &Path, line: usize, column: &str) -> DatasetError {
    manifest_error(manifest, line, format!("the {column} cell is empty"))
}
