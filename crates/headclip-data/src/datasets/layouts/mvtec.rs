//! `mvtec`: the MVTec AD folder layout, also used by MVTec-like sets (ColonDB...).

use std::path::{Path, PathBuf};

use super::{KindInfo, LoadLayout, ParseLayout};
use crate::datasets::category::{check_filter, finish, wanted, Ctx, Listed, Missing};
use crate::datasets::fsutil::{is_dir, list_images, require_dir, stem, subdirs};
use crate::datasets::masks::MaskIndex;
use crate::datasets::spec::{Options, Split};
use crate::datasets::{folder_name, Category, DataKind, DatasetError, DatasetWarning, Sample};

/// `mvtec:ROOT[,category=A+B][,split=test|train]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MvtecOptions {
    /// The folder of categories, or one category folder.
    pub root: PathBuf,
    /// Categories to keep (`None`: all).
    pub categories: Option<Vec<String>>,
    /// The split to read.
    pub split: Split,
}

impl ParseLayout for MvtecOptions {
    const INFO: KindInfo = KindInfo {
        name: "mvtec",
        usage: "mvtec:ROOT[,category=A+B][,split=test|train]",
        description: "      \
MVTec AD layout: ROOT/<category>/test/<defect>/<image> with masks at
      ROOT/<category>/ground_truth/<defect>/<stem>_mask.<ext> (or <stem>.<ext>). ROOT may also be
      a single category folder. test/good holds the normal images; every other defect folder is
      anomalous and needs masks. category= keeps only the named categories. split=train reads
      <category>/train/ (train/good: normal images only) instead of test/.",
        examples: "
  mvtec:data/mvtec_anomaly_detection,category=bottle+cable
  mvtec:data/CVC-ColonDB,name=ColonDB",
        keys: &["category", "split"],
        may_be_empty: &[],
        root_what: "root folder",
        root_optional: false,
    };

    fn parse(opts: &mut Options) -> Result<Self, String> {
        Ok(MvtecOptions {
            root: opts.root()?,
            categories: opts.list("category")?,
            split: opts.split()?,
        })
    }
}

impl LoadLayout for MvtecOptions {
    fn shown_root_and_name(&self) -> (PathBuf, Option<String>) {
        (self.root.clone(), folder_name(&self.root))
    }

    fn load(&self, ctx: &mut Ctx, _name: &str) -> Result<Vec<Category>, DatasetError> {
        let filter = self.categories.as_deref();
        let all = category_folders(&self.root)?;
        let names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
        check_filter(filter, &names, &self.root)?;
        all.into_iter()
            .filter(|(name, _)| wanted(filter, name))
            .map(|(name, dir)| load_category(ctx, name, &dir, self.split))
            .collect()
    }
}

fn is_category(dir: &Path) -> bool {
    ["test", "train", "ground_truth"]
        .iter()
        .any(|d| is_dir(&dir.join(d)))
}

/// The categories under `root` as (name, folder); `root` itself when it is one.
fn category_folders(root: &Path) -> Result<Vec<(String, PathBuf)>, DatasetError> {
    require_dir(root, "MVTec AD root")?;
    if is_category(root) {
        let name = folder_name(root).unwrap_or_else(|| "category".into());
        return Ok(vec![(name, root.to_path_buf())]);
    }
    let all: Vec<_> = subdirs(root)?
        .into_iter()
        .filter(|(_, d)| is_category(d))
        .collect();
    if all.is_empty() {
        return Err(DatasetError::NotLayout {
            kind: DataKind::Mvtec,
            root: root.to_path_buf(),
            expected: "expected category folders ROOT/<category>/test/<defect>/ (or ROOT itself \
                       a category folder with test/ and ground_truth/)"
                .into(),
        });
    }
    Ok(all)
}

fn load_category(
    ctx: &mut Ctx,
    name: String,
    dir: &Path,
    split: Split,
) -> Result<Category, DatasetError> {
    let split_dir = dir.join(split.as_str());
    let what = format!("{split} split of MVTec AD category \"{name}\"");
    require_dir(&split_dir, &what)?;
    warn_loose_files(ctx, &split_dir)?;
    let mut listed = Listed {
        name,
        samples: Vec::new(),
        has_masks: true,
        missing: Vec::new(),
        looked_in: format!("{}/<defect>/", split_dir.display()),
    };
    let defects = subdirs(&split_dir)?;
    if defects.is_empty() {
        listed.looked_in = format!("{} (no defect folders)", split_dir.display());
    }
    for (defect, defect_dir) in defects {
        let gt = dir.join("ground_truth").join(&defect);
        list_defect(ctx, &mut listed, defect, &defect_dir, &gt)?;
    }
    finish(ctx, listed)
}

/// Files beside the defect folders belong to no defect: they are skipped with a warning.
fn warn_loose_files(ctx: &mut Ctx, split_dir: &Path) -> Result<(), DatasetError> {
    let io = |source| DatasetError::Io {
        path: split_dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(split_dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden && !is_dir(&path) {
            ctx.warnings.push(DatasetWarning::SkippedFile {
                path,
                reason: "a file outside any defect folder".into(),
            });
        }
    }
    Ok(())
}

/// Adds one defect folder's images: `good` ones normal, the others anomalous with their masks
/// from `gt` (`<stem>_mask.<ext>`, or `<stem>.<ext>`).
fn list_defect(
    ctx: &mut Ctx,
    listed: &mut Listed,
    defect: String,
    defect_dir: &Path,
    gt: &Path,
) -> Result<(), DatasetError> {
    let images = list_images(defect_dir, &mut ctx.warnings)?;
    let source = defect_dir.display().to_string();
    let anomalous = defect != "good";
    let mut masks = MaskIndex::new(gt)?;
    for image in images {
        let mut mask = None;
        if anomalous {
            let s = stem(&image);
            mask = masks.find(&image, &[format!("{s}_mask"), s.clone()])?;
            if mask.is_none() {
                listed.missing.push(Missing {
                    image: image.clone(),
                    origin: source.clone(),
                    expected: format!("{}/{s}_mask.png", gt.display()),
                });
            }
        }
        listed.samples.push(Sample {
            image,
            anomalous,
            mask,
            defect: anomalous.then(|| defect.clone()),
            source: source.clone(),
        });
    }
    if anomalous {
        masks.warn_unused(ctx);
    }
    Ok(())
}
