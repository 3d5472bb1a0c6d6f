//! `folder`: a folder of normal images and/or a folder of anomalous images, with their masks in
//! a third folder, matched by file stem.

use std::path::{Path, PathBuf};

use super::{KindInfo, LoadLayout, ParseLayout};
use crate::datasets::category::{finish, Ctx, Listed, Missing};
use crate::datasets::fsutil::{list_images, require_dir, stem};
use crate::datasets::masks::MaskIndex;
use crate::datasets::spec::Options;
use crate::datasets::{folder_name, Category, DatasetError, Sample};

/// `folder:[ROOT,]normal=DIR,anomalous=DIR[,masks=DIR][,mask_suffix=S][,category=NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderOptions {
    /// The folder the others are relative to, if given.
    pub root: Option<PathBuf>,
    /// Normal images.
    pub normal: Option<PathBuf>,
    /// Anomalous images.
    pub anomalous: Option<PathBuf>,
    /// Masks of the anomalous images.
    pub masks: Option<PathBuf>,
    /// Appended to an image's stem to give its mask's stem.
    pub mask_suffix: String,
    /// The category's name (default: the data set's name).
    pub category: Option<String>,
}

impl ParseLayout for FolderOptions {
    const INFO: KindInfo = KindInfo {
        name: "folder",
        usage: "folder:[ROOT,]normal=DIR,anomalous=DIR[,masks=DIR][,mask_suffix=SUFFIX]\
                [,category=NAME]",
        description: "      \
Folders of normal and of anomalous images (either may be left out). With masks=, every
      anomalous image X.<ext> needs a mask X<SUFFIX>.<any ext> there (matched by file stem;
      mask_suffix defaults to nothing). With ROOT, relative folders are inside ROOT.",
        examples: "
  folder:anomalous=data/kvasir/images,masks=data/kvasir/masks
  folder:data/kvasir,anomalous=images,masks=masks,name=Kvasir",
        keys: &["normal", "anomalous", "masks", "mask_suffix", "category"],
        may_be_empty: &["mask_suffix"],
        root_what: "root folder",
        root_optional: true,
    };

    fn parse(opts: &mut Options) -> Result<Self, String> {
        let mask_suffix = opts.raw("mask_suffix");
        let layout = FolderOptions {
            root: opts.optional_root(),
            normal: opts.path("normal"),
            anomalous: opts.path("anomalous"),
            masks: opts.path("masks"),
            mask_suffix: mask_suffix.clone().unwrap_or_default(),
            category: opts.text("category"),
        };
        if layout.normal.is_none() && layout.anomalous.is_none() {
            return Err("expected normal=DIR and/or anomalous=DIR (folders of images)".into());
        }
        if layout.masks.is_none() && mask_suffix.is_some() {
            return Err("mask_suffix= needs masks=DIR".into());
        }
        if layout.masks.is_some() && layout.anomalous.is_none() {
            return Err("masks= belongs to anomalous images, but anomalous=DIR is missing".into());
        }
        Ok(layout)
    }
}

impl LoadLayout for FolderOptions {
    fn shown_root_and_name(&self) -> (PathBuf, Option<String>) {
        if let Some(root) = &self.root {
            return (root.clone(), folder_name(root));
        }
        let first = self.anomalous.as_ref().or(self.normal.as_ref());
        let first = first.cloned().unwrap_or_default();
        let dirs: Vec<&PathBuf> = [&self.normal, &self.anomalous, &self.masks]
            .into_iter()
            .flatten()
            .collect();
        // The deepest folder holding all the given folders (kvasir for kvasir/images and
        // kvasir/masks), else the image folder itself.
        let name = match common_ancestor(&dirs) {
            Some(c) if dirs.len() > 1 && c.file_name().is_some() => folder_name(&c),
            _ => folder_name(&first),
        };
        (first, name)
    }

    fn load(&self, ctx: &mut Ctx, name: &str) -> Result<Vec<Category>, DatasetError> {
        if let Some(root) = &self.root {
            require_dir(root, "folder root")?;
        }
        let normal = self.resolve(&self.normal);
        let anomalous = self.resolve(&self.anomalous);
        let masks = self.resolve(&self.masks);
        let looked_in = [&normal, &anomalous]
            .into_iter()
            .flatten()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ");
        let mut listed = Listed {
            name: self.category.clone().unwrap_or_else(|| name.to_string()),
            samples: Vec::new(),
            has_masks: masks.is_some(),
            missing: Vec::new(),
            looked_in,
        };
        if let Some(dir) = &normal {
            require_dir(dir, "normal image folder (normal=)")?;
        }
        if let Some(dir) = &anomalous {
            require_dir(dir, "anomalous image folder (anomalous=)")?;
        }
        let mut masks = match &masks {
            Some(dir) => {
                require_dir(dir, "mask folder (masks=)")?;
                Some(MaskIndex::new(dir)?)
            }
            None => None,
        };
        if let Some(dir) = &normal {
            list_normal(ctx, &mut listed, dir)?;
        }
        if let Some(dir) = &anomalous {
            list_anomalous(ctx, &mut listed, dir, masks.as_mut(), &self.mask_suffix)?;
        }
        Ok(vec![finish(ctx, listed)?])
    }
}

impl FolderOptions {
    /// A folder option, inside ROOT when it is relative and ROOT is given.
    fn resolve(&self, dir: &Option<PathBuf>) -> Option<PathBuf> {
        let dir = dir.as_ref()?;
        Some(match &self.root {
            Some(root) if dir.is_relative() => root.join(dir),
            _ => dir.clone(),
        })
    }
}

/// The longest common prefix of the folders' absolute paths.
fn common_ancestor(dirs: &[&PathBuf]) -> Option<PathBuf> {
    let absolute = |d: &PathBuf| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
    let (first, rest) = dirs.split_first()?;
    let mut common = absolute(first);
    for d in rest {
        let d = absolute(d);
        common = common
            .components()
            .zip(d.components())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .collect();
    }
    Some(common)
}

fn list_normal(ctx: &mut Ctx, listed: &mut Listed, dir: &Path) -> Result<(), DatasetError> {
    let source = dir.display().to_string();
    for image in list_images(dir, &mut ctx.warnings)? {
        listed.samples.push(Sample {
            image,
            anomalous: false,
            mask: None,
            defect: None,
            source: source.clone(),
        });
    }
    Ok(())
}

/// Adds the anomalous images, each with its mask `<stem><mask_suffix>.<ext>` when there are masks.
fn list_anomalous(
    ctx: &mut Ctx,
    listed: &mut Listed,
    dir: &Path,
    mut masks: Option<&mut MaskIndex>,
    mask_suffix: &str,
) -> Result<(), DatasetError> {
    let source = dir.display().to_string();
    for image in list_images(dir, &mut ctx.warnings)? {
        let mut mask = None;
        if let Some(index) = masks.as_deref_mut() {
            let want = format!("{}{mask_suffix}", stem(&image));
            mask = index.find(&image, std::slice::from_ref(&want))?;
            if mask.is_none() {
                listed.missing.push(Missing {
                    image: image.clone(),
                    origin: source.clone(),
                    expected: format!("{}/{want}.<ext>", index.dir().display()),
                });
            }
        }
        listed.samples.push(Sample {
            image,
            anomalous: true,
            mask,
            defect: None,
            source: source.clone(),
        });
    }
    if let Some(index) = masks {
        index.warn_unused(ctx);
    }
    Ok(())
}
