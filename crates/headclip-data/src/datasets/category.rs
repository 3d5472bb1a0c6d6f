//! What every loader ends with: a category's samples sorted and checked (the mask policy, masks
//! that are images, header sizes), with problems the user can live with as warnings.

use std::path::{Path, PathBuf};

use super::fsutil::{dimensions, sniff_file};
use super::{Category, DatasetError, DatasetWarning, LoadOptions, Sample};

/// How many example paths a warning shows.
pub(crate) const EXAMPLES: usize = 3;

/// The options of one load and the warnings gathered so far.
pub(crate) struct Ctx<'a> {
    pub opts: &'a LoadOptions,
    pub warnings: Vec<DatasetWarning>,
}

impl<'a> Ctx<'a> {
    pub fn new(opts: &'a LoadOptions) -> Self {
        Ctx {
            opts,
            warnings: Vec::new(),
        }
    }
}

/// An anomalous image whose mask was not found.
pub(crate) struct Missing {
    pub image: PathBuf,
    pub origin: String,
    pub expected: String,
}

/// A category's samples as a layout listed them, before the checks.
pub(crate) struct Listed {
    pub name: String,
    pub samples: Vec<Sample>,
    /// Whether the layout has masks at all.
    pub has_masks: bool,
    pub missing: Vec<Missing>,
    /// Where images were looked for, for the error on an empty category.
    pub looked_in: String,
}

/// Sorts, applies the mask policy and checks masks and headers; errors on an empty category.
pub(crate) fn finish(ctx: &mut Ctx, listed: Listed) -> Result<Category, DatasetError> {
    let Listed {
        name,
        mut samples,
        has_masks,
        missing,
        looked_in,
    } = listed;
    if samples.is_empty() {
        return Err(DatasetError::EmptyCategory {
            category: name,
            looked_in,
        });
    }
    samples.sort_by(|a, b| a.image.cmp(&b.image));
    let has_masks = has_masks && mask_policy(ctx, &name, missing)?;
    for s in &samples {
        check_mask_is_image(s)?;
    }
    if ctx.opts.check_sizes {
        for s in &samples {
            check_sizes(ctx, s)?;
        }
    }
    Ok(Category {
        name,
        samples,
        has_masks,
    })
}

/// Whether the category keeps pixel-level ground truth: missing masks are an error, or with
/// [`LoadOptions::allow_missing_masks`] a warning that makes the category image-level.
fn mask_policy(
    ctx: &mut Ctx,
    category: &str,
    mut missing: Vec<Missing>,
) -> Result<bool, DatasetError> {
    if missing.is_empty() {
        return Ok(true);
    }
    missing.sort_by(|a, b| a.image.cmp(&b.image));
    if !ctx.opts.allow_missing_masks {
        let count = missing.len();
        let first = missing.swap_remove(0);
        return Err(DatasetError::MissingMask {
            image: first.image,
            origin: first.origin,
            expected: first.expected,
            category: category.to_string(),
            count,
        });
    }
    ctx.warnings.push(DatasetWarning::MissingMasks {
        category: category.to_string(),
        count: missing.len(),
        examples: missing
            .into_iter()
            .take(EXAMPLES)
            .map(|m| m.image)
            .collect(),
    });
    Ok(false)
}

/// Where a mask was listed, for messages: where its image was listed.
pub(crate) fn mask_origin(source: &str, image: &Path) -> String {
    format!("{source} as the mask of {}", image.display())
}

fn check_mask_is_image(s: &Sample) -> Result<(), DatasetError> {
    let Some(mask) = &s.mask else {
        return Ok(());
    };
    match sniff_file(mask)? {
        Ok(_) => Ok(()),
        Err(reason) => Err(DatasetError::NotAnImage {
            path: mask.clone(),
            origin: mask_origin(&s.source, &s.image),
            reason,
        }),
    }
}

/// Reads the pixel sizes from the headers: a bad header is an error, a mask whose size differs
/// from its image's a warning.
fn check_sizes(ctx: &mut Ctx, s: &Sample) -> Result<(), DatasetError> {
    let image_size = dimensions(&s.image)?.map_err(|error| DatasetError::BadImage {
        path: s.image.clone(),
        origin: s.source.clone(),
        error,
    })?;
    let Some(mask) = &s.mask else {
        return Ok(());
    };
    let mask_size = dimensions(mask)?.map_err(|error| DatasetError::BadImage {
        path: mask.clone(),
        origin: mask_origin(&s.source, &s.image),
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
    Ok(())
}

/// Whether `category=` keeps the category `name` (no filter keeps all).
pub(crate) fn wanted(filter: Option<&[String]>, name: &str) -> bool {
    match filter {
        Some(names) => names.iter().any(|n| n == name),
        None => true,
    }
}

/// Errors when `category=` names a category that is not there.
pub(crate) fn check_filter(
    requested: Option<&[String]>,
    available: &[String],
    root: &Path,
) -> Result<(), DatasetError> {
    match requested
        .unwrap_or_default()
        .iter()
        .find(|r| !available.contains(r))
    {
        Some(r) => Err(DatasetError::UnknownCategory {
            requested: r.clone(),
            root: root.to_path_buf(),
            available: available.to_vec(),
        }),
        None => Ok(()),
    }
}
