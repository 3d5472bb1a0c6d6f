//! Finding an image's mask in a mask folder by file stem, and the masks no image claimed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::category::{Ctx, EXAMPLES};
use super::fsutil::index_stems;
use super::{DatasetError, DatasetWarning};

/// The files of a mask folder by stem, and which stems an image claimed.
pub(crate) struct MaskIndex {
    dir: PathBuf,
    by_stem: BTreeMap<String, Vec<PathBuf>>,
    used: BTreeSet<String>,
}

impl MaskIndex {
    /// Indexes `dir`; a folder that does not exist holds no masks.
    pub fn new(dir: &Path) -> Result<MaskIndex, DatasetError> {
        let by_stem = if super::fsutil::is_dir(dir) {
            index_stems(dir)?
        } else {
            BTreeMap::new()
        };
        Ok(MaskIndex {
            dir: dir.to_path_buf(),
            by_stem,
            used: BTreeSet::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mask of `image`: the file whose stem is the first of `stems` found. Two files with
    /// that stem are an error.
    pub fn find(
        &mut self,
        image: &Path,
        stems: &[String],
    ) -> Result<Option<PathBuf>, DatasetError> {
        let Some((stem, paths)) = stems
            .iter()
            .find_map(|s| self.by_stem.get(s).map(|paths| (s, paths)))
        else {
            return Ok(None);
        };
        if paths.len() > 1 {
            return Err(DatasetError::AmbiguousMask {
                image: image.to_path_buf(),
                candidates: paths.clone(),
            });
        }
        let mask = paths[0].clone();
        self.used.insert(stem.clone());
        Ok(Some(mask))
    }

    /// Warns about the masks that no image claimed (often a wrong `mask_suffix`).
    pub fn warn_unused(&self, ctx: &mut Ctx) {
        let unused: Vec<&PathBuf> = self
            .by_stem
            .iter()
            .filter(|(stem, _)| !self.used.contains(*stem))
            .flat_map(|(_, paths)| paths)
            .collect();
        if !unused.is_empty() {
            ctx.warnings.push(DatasetWarning::UnusedMasks {
                folder: self.dir.clone(),
                count: unused.len(),
                examples: unused.into_iter().take(EXAMPLES).cloned().collect(),
            });
        }
    }
}
