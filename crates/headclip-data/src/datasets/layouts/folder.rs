//! `folder`: a folder of normal images and/or a folder of anomalous images, with their masks in
//! a third folder, matched by file stem; or one folder of images labelled by their masks (MPDD
//! style). Where a label or a warning depends on a mask being empty, the mask is decoded while
//! loading.

use std::path::{Path, PathBuf};

use super::{KindInfo, LoadLayout, ParseLayout};
use crate::datasets::category::{finish, mask_origin, Ctx, Listed, Missing};
use crate::datasets::fsutil::{list_images, mask_is_empty, require_dir, stem};
use crate::datasets::masks::MaskIndex;
use crate::datasets::spec::Options;
use crate::datasets::{folder_name, Category, DatasetError, DatasetWarning, Sample};

/// `folder:[ROOT,]normal=DIR,anomalous=DIR[,masks=DIR][,mask_suffix=S][,category=NAME]`, or
/// `folder:[ROOT,]images=DIR,masks=DIR[,mask_suffix=S][,category=NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderOptions {
    /// The folder the others are relative to, if given.
    pub root: Option<PathBuf>,
    /// Normal images.
    pub normal: Option<PathBuf>,
    /// Anomalous images.
    pub anomalous: Option<PathBuf>,
    /// Images labelled by their masks: an empty mask is normal (the sample gets no mask), any
    /// anomalous pixel anomalous.
    pub images: Option<PathBuf>,
    /// Masks of the anomalous images (or of every image, with `images`).
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
      mask_suffix defaults to nothing); an empty mask (no anomalous pixel) is a warning. With
      ROOT, relative folders are inside ROOT.
      folder:[ROOT,]images=DIR,masks=DIR[,mask_suffix=SUFFIX] labels each image by its mask
      (MPDD style): an all-black mask means normal, a mask with any anomalous pixel (the mask
      rule) anomalous; an image without a mask is an error. Masks are decoded while loading.",
        examples: "
  folder:anomalous=data/kvasir/images,masks=data/kvasir/masks
  folder:data/kvasir,anomalous=images,masks=masks,name=Kvasir",
        keys: &[
            "normal",
            "anomalous",
            "images",
            "masks",
            "mask_suffix",
            "category",
        ],
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
            images: opts.path("images"),
            masks: opts.path("masks"),
            mask_suffix: mask_suffix.clone().unwrap_or_default(),
            category: opts.text("category"),
        };
        if layout.masks.is_none() && mask_suffix.is_some() {
            return Err("mask_suffix= needs masks=DIR".into());
        }
        layout.check_folders()?;
        Ok(layout)
    }
}

impl LoadLayout for FolderOptions {
    fn shown_root_and_name(&self) -> (PathBuf, Option<String>) {
        if let Some(root) = &self.root {
            return (root.clone(), folder_name(root));
        }
        let first = [&self.anomalous, &self.normal, &self.images]
            .into_iter()
            .find_map(|d| d.clone())
            .unwrap_or_default();
        let dirs: Vec<&PathBuf> = [&self.normal, &self.anomalous, &self.images, &self.masks]
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
        let images = self.resolve(&self.images);
        let masks = self.resolve(&self.masks);
        let looked_in = [&normal, &anomalous, &images]
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
        if let Some(dir) = &images {
            require_dir(dir, "image folder (images=)")?;
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
        if let (Some(dir), Some(masks)) = (&images, masks.as_mut()) {
            list_labelled_by_mask(ctx, &mut listed, dir, masks, &self.mask_suffix)?;
        }
        Ok(vec![finish(ctx, listed)?])
    }
}

impl FolderOptions {
    /// Either normal= and/or anomalous= (masks only with anomalous=), or images= with masks=.
    fn check_folders(&self) -> Result<(), String> {
        let labelled = self.normal.is_some() || self.anomalous.is_some();
        match (&self.images, labelled) {
            (Some(_), true) => Err("images= takes the labels from the masks; it cannot be \
                                    combined with normal= or anomalous="
                .into()),
            (Some(_), false) if self.masks.is_none() => {
                Err("images= needs masks=DIR: each image's mask gives its label".into())
            }
            (Some(_), false) => Ok(()),
            (None, false) => Err(
                "expected normal=DIR and/or anomalous=DIR (folders of images), \
                                  or images=DIR with masks=DIR"
                    .into(),
            ),
            (None, true) if self.masks.is_some() && self.anomalous.is_none() => {
                Err("masks= belongs to anomalous images, but anomalous=DIR is missing".into())
            }
            (None, true) => Ok(()),
        }
    }

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
            match &mask {
                None => listed.missing.push(Missing {
                    image: image.clone(),
                    origin: source.clone(),
                    expected: format!("{}/{want}.<ext>", index.dir().display()),
                }),
                Some(m) if mask_is_empty(m, &mask_origin(&source, &image))? => {
                    ctx.warnings.push(DatasetWarning::EmptyMask {
                        image: image.clone(),
                        mask: m.clone(),
                    })
                }
                Some(_) => {}
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

/// Adds the images of `dir`, each labelled by its mask `<stem><mask_suffix>.<ext>`: normal
/// (and without a mask) when the mask is empty, anomalous otherwise.
fn list_labelled_by_mask(
    ctx: &mut Ctx,
    listed: &mut Listed,
    dir: &Path,
    masks: &mut MaskIndex,
    mask_suffix: &str,
) -> Result<(), DatasetError> {
    let source = dir.display().to_string();
    for image in list_images(dir, &mut ctx.warnings)? {
        let want = format!("{}{mask_suffix}", stem(&image));
        let Some(mask) = masks.find(&image, std::slice::from_ref(&want))? else {
            return Err(DatasetError::UnlabelledImage {
                image,
                expected: format!("{}/{want}.<ext>", masks.dir().display()),
            });
        };
        let anomalous = !mask_is_empty(&mask, &mask_origin(&source, &image))?;
        listed.samples.push(Sample {
            image,
            anomalous,
            mask: anomalous.then_some(mask),
            defect: None,
            source: source.clone(),
        });
    }
    masks.warn_unused(ctx);
    Ok(())
}
