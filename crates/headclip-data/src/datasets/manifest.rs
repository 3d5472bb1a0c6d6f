//! Files named by manifest rows: resolved, checked to exist and to be images, errors naming the
//! manifest line.

use std::path::{Path, PathBuf};

use super::fsutil::sniff_file;
use super::DatasetError;

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
    DatasetError::Manifest {
        path: manifest.to_path_buf(),
        line,
        message: format!("the {column} cell is empty"),
    }
}
