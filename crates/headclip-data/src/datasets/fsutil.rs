//! Folder listing and header probing: reads directory entries and the first bytes of files only.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DatasetError, DatasetWarning};
use crate::images::{
    image_dimensions, is_empty_mask, looks_like, sniff_format, DataError, DecodeLimits, ImageFormat,
};

/// Bytes read to recognise a format (every magic number fits).
const SNIFF_BYTES: usize = 32;
/// Bytes read first to find the pixel size; the whole file is read when the header goes beyond.
const HEADER_BYTES: usize = 16 * 1024;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Errors unless `path` is an existing folder.
pub(crate) fn require_dir(path: &Path, what: &str) -> Result<(), DatasetError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DatasetError::WrongType {
            what: what.into(),
            path: path.to_path_buf(),
            expected: "folder",
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DatasetError::Missing {
            what: what.into(),
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Errors unless `path` is an existing file.
pub(crate) fn require_file(path: &Path, what: &str) -> Result<(), DatasetError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(DatasetError::WrongType {
            what: what.into(),
            path: path.to_path_buf(),
            expected: "file",
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DatasetError::Missing {
            what: what.into(),
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io_err(path)(e)),
    }
}

pub(crate) fn is_dir(path: &Path) -> bool {
    fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false)
}

/// A folder's entries that are not hidden (names starting with '.'), sorted by name; each with
/// whether it is a folder (links followed).
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, DatasetError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = fs::metadata(&path).map_err(io_err(&path))?;
        out.push((name, path, meta.is_dir()));
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// The sub-folders of `dir`, sorted by name, as (name, path).
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, DatasetError> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|e| e.2)
        .map(|(n, p, _)| (n, p))
        .collect())
}

/// The image files directly inside `dir`, sorted. Files whose bytes are not an image are skipped
/// with a warning, and so are sub-folders.
pub(crate) fn list_images(
    dir: &Path,
    warnings: &mut Vec<DatasetWarning>,
) -> Result<Vec<PathBuf>, DatasetError> {
    let mut out = Vec::new();
    for (_, path, is_dir) in entries(dir)? {
        if is_dir {
            warnings.push(DatasetWarning::SkippedFolder { path });
            continue;
        }
        match sniff_file(&path)? {
            Ok(_) => out.push(path),
            Err(reason) => warnings.push(DatasetWarning::SkippedFile { path, reason }),
        }
    }
    if out.is_empty() {
        warnings.push(DatasetWarning::EmptyFolder {
            path: dir.to_path_buf(),
        });
    }
    Ok(out)
}

/// The non-hidden files of `dir` by file stem (the name before its last dot).
pub(crate) fn index_stems(dir: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>, DatasetError> {
    let mut index: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for (_, path, is_dir) in entries(dir)? {
        if !is_dir {
            index.entry(stem(&path)).or_default().push(path);
        }
    }
    Ok(index)
}

/// The file name without its last extension.
pub(crate) fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_prefix(path: &Path, limit: usize) -> Result<(Vec<u8>, bool), DatasetError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::with_capacity(limit.min(HEADER_BYTES));
    file.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    let whole = buf.len() <= limit;
    buf.truncate(limit);
    Ok((buf, whole))
}

/// The image format of a file from its first bytes: `Ok(Err(reason))` when it is not an image.
pub(crate) fn sniff_file(path: &Path) -> Result<Result<ImageFormat, String>, DatasetError> {
    let (head, _) = read_prefix(path, SNIFF_BYTES)?;
    Ok(match sniff_format(&head) {
        Some(f) => Ok(f),
        None if head.is_empty() => Err("empty file".into()),
        None => Err(DataError::UnknownFormat {
            looks_like: looks_like(&head),
        }
        .to_string()),
    })
}

/// Width and height from the header, reading the whole file only when the header is not within
/// the first 16 KiB.
pub(crate) fn dimensions(path: &Path) -> Result<Result<(u32, u32), DataError>, DatasetError> {
    let (head, whole) = read_prefix(path, HEADER_BYTES)?;
    match image_dimensions(&head) {
        Ok((_, w, h)) => Ok(Ok((w, h))),
        Err(e) if whole => Ok(Err(e)),
        Err(_) => {
            let all = fs::read(path).map_err(io_err(path))?;
            Ok(image_dimensions(&all).map(|(_, w, h)| (w, h)))
        }
    }
}

/// Whether a mask file marks no pixel anomalous; decodes it (masks are small), so that a label
/// or a warning can depend on it at load time. `origin` says where the mask was listed.
pub(crate) fn mask_is_empty(mask: &Path, origin: &str) -> Result<bool, DatasetError> {
    let bytes = fs::read(mask).map_err(io_err(mask))?;
    is_empty_mask(&bytes, &DecodeLimits::default()).map_err(|error| DatasetError::BadImage {
        path: mask.to_path_buf(),
        origin: origin.to_string(),
        error,
    })
}
