//! Data set loaders: from a `--data` spec to a list of images, labels and masks.
//!
//! A data set is named by one string, `KIND:ROOT[,key=value...]` ([`DataSpec`], parsed with
//! [`str::parse`]; the full syntax is [`DATA_SPEC_HELP`]):
//!
//! | kind | layout | example |
//! |---|---|---|
//! | `mvtec` | MVTec AD: `<category>/test/<defect>/`, `<category>/ground_truth/<defect>/<stem>_mask.png` | `mvtec:data/mvtec,category=bottle+cable` |
//! | `visa` | VisA: `split_csv/1cls.csv` (object,split,label,image,mask) | `visa:data/VisA_20220922` |
//! | `folder` | normal / anomalous image folders, masks matched by stem; or one image folder labelled by its masks | `folder:data/kvasir,anomalous=images,masks=masks` |
//! | `csv` | a CSV manifest of paths or ids and labels | `csv:data/headct/labels.csv,image=id,label=hemorrhage,template=head_ct/{:03}.png` |
//! | `yesno` | image-level `yes/` (anomalous) and `no/` (normal) | `yesno:data/brainmri` |
//!
//! Every kind takes `name=NAME`, the display name (default: the root folder's name).
//!
//! [`load`] lists the files and checks them before any compute: it reads directory entries and the
//! first bytes of files (the format, and with [`LoadOptions::check_sizes`] the pixel size from
//! the header) but never decodes an image, except the `folder` layout's masks: whether a mask is
//! empty decides an image's label (`images=`) or a warning (`anomalous=`), and masks are small.
//! Problems that make an evaluation wrong are errors ([`DatasetError`]) naming the file, and the manifest line where there is one; problems a
//! caller can live with (a stray non-image file, a mask whose size differs from its image, an
//! empty mask of an anomalous image, a manifest row given twice) are
//! [`DatasetWarning`]s in [`Dataset::warnings`]. Samples are sorted by path, categories by name.

mod category;
mod fsutil;
mod layouts;
mod manifest;
mod masks;
mod spec;

use std::fmt;
use std::path::{Path, PathBuf};

pub use layouts::{
    CsvOptions, DataKind, FolderOptions, Layout, MvtecOptions, VisaOptions, YesNoOptions,
    DATA_SPEC_HELP,
};
pub use spec::{DataSpec, SpecError, Split, Template};

use crate::images::DataError;

/// One image of a data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The image file.
    pub image: PathBuf,
    /// Whether the image is anomalous (label 1).
    pub anomalous: bool,
    /// The ground-truth mask, where the layout has one. Normal images have none: their mask is
    /// all zero. Masks may be 0/255 images or label maps (every value above 0 anomalous).
    pub mask: Option<PathBuf>,
    /// The defect type (MVTec AD's defect folder), if the layout names one.
    pub defect: Option<String>,
    /// Where the sample was listed, for messages: a folder, or `"<manifest> line N"`.
    pub source: String,
}

/// The images of one category; metrics are computed per category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Category {
    /// The category's name (MVTec AD category, VisA object, or the data set's name).
    pub name: String,
    /// Sorted by image path.
    pub samples: Vec<Sample>,
    /// Whether pixel-level ground truth exists: the layout has masks and every anomalous image
    /// has one. False for image-level layouts and for categories loaded with
    /// [`LoadOptions::allow_missing_masks`] where some mask was missing.
    pub has_masks: bool,
}

impl Category {
    /// Number of anomalous samples.
    pub fn num_anomalous(&self) -> usize {
        self.samples.iter().filter(|s| s.anomalous).count()
    }

    /// Number of normal samples.
    pub fn num_normal(&self) -> usize {
        self.samples.len() - self.num_anomalous()
    }

    /// Image AUROC and AP need both normal and anomalous images.
    pub fn image_metrics_defined(&self) -> bool {
        self.num_normal() > 0 && self.num_anomalous() > 0
    }

    /// Pixel metrics need masks and at least one anomalous image.
    pub fn pixel_metrics_defined(&self) -> bool {
        self.has_masks && self.num_anomalous() > 0
    }
}

/// A loaded data set: categories of samples, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// The display name (`name=`, or the root folder's name).
    pub name: String,
    /// The layout it was read from.
    pub kind: DataKind,
    /// The root folder as given: the manifest for `csv`, and for `folder` without a ROOT the
    /// anomalous (else normal) image folder.
    pub root: PathBuf,
    /// Sorted by name; never empty, and no category is empty.
    pub categories: Vec<Category>,
    /// Whether every category has pixel-level ground truth ([`Category::has_masks`]).
    pub has_masks: bool,
    /// Problems that did not stop loading, to show to the user.
    pub warnings: Vec<DatasetWarning>,
}

impl Dataset {
    /// All samples, category by category.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.categories.iter().flat_map(|c| c.samples.iter())
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.categories.iter().map(|c| c.samples.len()).sum()
    }

    /// Never true for a loaded data set; here for completeness.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of anomalous samples.
    pub fn num_anomalous(&self) -> usize {
        self.samples().filter(|s| s.anomalous).count()
    }

    /// Number of normal samples.
    pub fn num_normal(&self) -> usize {
        self.len() - self.num_anomalous()
    }

    /// The category with this name.
    pub fn category(&self, name: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.name == name)
    }
}

/// How [`load`] treats incomplete data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// An anomalous image without a mask in a layout that has masks is an error, unless this is
    /// set: then the category is loaded as image-level (`has_masks = false`) with a warning.
    pub allow_missing_masks: bool,
    /// Read the pixel size of every image and mask from its header: a corrupt header is an
    /// error, a mask whose size differs from its image's a warning. Costs one small read per
    /// file; nothing is decoded.
    pub check_sizes: bool,
}

impl Default for LoadOptions {
    /// Missing masks are errors; sizes are checked.
    fn default() -> Self {
        LoadOptions {
            allow_missing_masks: false,
            check_sizes: true,
        }
    }
}

/// Something [`load`] accepted but the user should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetWarning {
    /// A file inside an image folder whose bytes are not an image; it was skipped.
    SkippedFile {
        /// The file.
        path: PathBuf,
        /// Why it is not an image.
        reason: String,
    },
    /// A folder where image files were expected; it was not read.
    SkippedFolder {
        /// The folder.
        path: PathBuf,
    },
    /// An image folder (e.g. a defect type) without images.
    EmptyFolder {
        /// The folder.
        path: PathBuf,
    },
    /// A mask whose pixel size differs from its image's; callers resize masks to the model's
    /// side anyway, but the pair may be mismatched.
    MaskSizeMismatch {
        /// The image.
        image: PathBuf,
        /// Its mask.
        mask: PathBuf,
        /// Image width and height.
        image_size: (u32, u32),
        /// Mask width and height.
        mask_size: (u32, u32),
    },
    /// With [`LoadOptions::allow_missing_masks`]: anomalous images without masks; the category
    /// is image-level.
    MissingMasks {
        /// The category.
        category: String,
        /// How many anomalous images lack a mask.
        count: usize,
        /// The first few of them.
        examples: Vec<PathBuf>,
    },
    /// An anomalous image whose mask marks no pixel anomalous: its pixels all count as normal.
    EmptyMask {
        /// The image.
        image: PathBuf,
        /// Its mask.
        mask: PathBuf,
    },
    /// A manifest lists an image again with the same label; the repeat was dropped.
    DuplicateRow {
        /// The manifest.
        manifest: PathBuf,
        /// The image.
        image: PathBuf,
        /// The line that listed it first.
        first_line: usize,
        /// The line of the repeat.
        line: usize,
    },
    /// Mask files that belong to no image (often a wrong `mask_suffix`).
    UnusedMasks {
        /// The mask folder.
        folder: PathBuf,
        /// How many.
        count: usize,
        /// The first few.
        examples: Vec<PathBuf>,
    },
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for DatasetWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetWarning::SkippedFile { path, reason } => {
                write!(f, "skipped {}: not an image ({reason})", path.display())
            }
            DatasetWarning::SkippedFolder { path } => write!(
                f,
                "skipped folder {}: image files were expected here",
                path.display()
            ),
            DatasetWarning::EmptyFolder { path } => {
                write!(f, "folder {} holds no images", path.display())
            }
            DatasetWarning::DuplicateRow {
                manifest,
                image,
                first_line,
                line,
            } => write!(
                f,
                "{} line {line} lists {} again, with the same label as line {first_line}; it \
                 is counted once",
                manifest.display(),
                image.display()
            ),
            _ => self.fmt_mask_warning(f),
        }
    }
}

impl DatasetWarning {
    /// The warnings about masks, kept apart to keep `fmt` short.
    fn fmt_mask_warning(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetWarning::MaskSizeMismatch {
                image,
                mask,
                image_size,
                mask_size,
            } => write!(
                f,
                "mask {} is {}×{} but its image {} is {}×{}; the mask will be resized",
                mask.display(),
                mask_size.0,
                mask_size.1,
                image.display(),
                image_size.0,
                image_size.1
            ),
            DatasetWarning::MissingMasks {
                category,
                count,
                examples,
            } => write!(
                f,
                "category {category}: {count} anomalous image(s) without a mask (e.g. {}); \
                 the category is image-level, without pixel metrics",
                list_paths(examples)
            ),
            DatasetWarning::EmptyMask { image, mask } => write!(
                f,
                "anomalous image {} has an empty mask {} (no anomalous pixel): pixel metrics \
                 count all its pixels as normal",
                image.display(),
                mask.display()
            ),
            DatasetWarning::UnusedMasks {
                folder,
                count,
                examples,
            } => write!(
                f,
                "{count} mask(s) in {} match no image (e.g. {}); check the file names or \
                 mask_suffix",
                folder.display(),
                list_paths(examples)
            ),
            _ => unreachable!("fmt handles the other warnings"),
        }
    }
}

/// Why a data set could not be loaded. Every message names the file (and the manifest line)
/// at fault.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The spec string is malformed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A folder or file the spec names does not exist.
    #[error("{what} {} does not exist", path.display())]
    Missing {
        /// What it should have been (e.g. "data set root", "normal image folder").
        what: String,
        /// The path.
        path: PathBuf,
    },
    /// A path that should be a folder is a file, or the reverse.
    #[error("{what} {} is not a {expected}", path.display())]
    WrongType {
        /// What it should have been.
        what: String,
        /// The path.
        path: PathBuf,
        /// "folder" or "file".
        expected: &'static str,
    },
    /// Reading a folder or file failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The folder has none of the layout's structure.
    #[error("{} does not have the {kind} layout: {expected}", root.display())]
    NotLayout {
        /// The kind asked for.
        kind: DataKind,
        /// The root.
        root: PathBuf,
        /// What was expected there.
        expected: String,
    },
    /// `category=` names a category the data set does not have.
    #[error(
        "unknown category \"{requested}\" in {}; available: {}",
        root.display(),
        available.join(", ")
    )]
    UnknownCategory {
        /// The name asked for.
        requested: String,
        /// The data set's root.
        root: PathBuf,
        /// The categories there are.
        available: Vec<String>,
    },
    /// A category without any image.
    #[error("category \"{category}\" has no images (looked in {looked_in})")]
    EmptyCategory {
        /// The category.
        category: String,
        /// Where images were looked for.
        looked_in: String,
    },
    /// A manifest without a single row for the chosen split (or at all).
    #[error("no images listed in {} {detail}", path.display())]
    NoImages {
        /// The manifest.
        path: PathBuf,
        /// Which rows were looked for.
        detail: String,
    },
    /// An anomalous image without its mask in a layout that has masks.
    #[error(
        "anomalous image {} (listed in {origin}) has no mask: expected {expected}{}; \
         allow missing masks to evaluate the category at image level only",
        image.display(),
        if *count > 1 { format!(" ({count} anomalous images of category \"{category}\" lack a mask)") } else { String::new() }
    )]
    MissingMask {
        /// The image.
        image: PathBuf,
        /// Where it was listed.
        origin: String,
        /// Where its mask was looked for.
        expected: String,
        /// The category.
        category: String,
        /// How many images of the category lack a mask.
        count: usize,
    },
    /// Several mask files fit one image.
    #[error("more than one mask fits image {}: {}", image.display(), list_paths(candidates))]
    AmbiguousMask {
        /// The image.
        image: PathBuf,
        /// The masks that fit.
        candidates: Vec<PathBuf>,
    },
    /// A manifest row that cannot be read (wrong number of fields, empty cell, bad quote...).
    #[error("{} line {line}: {message}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// 1-based line (the header is line 1).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The manifest lacks a column an option names.
    #[error(
        "{}: no column \"{column}\" (asked for by {option}=); the columns are: {}",
        path.display(),
        available.join(", ")
    )]
    MissingColumn {
        /// The manifest.
        path: PathBuf,
        /// The column asked for.
        column: String,
        /// The option that named it.
        option: String,
        /// The header's columns.
        available: Vec<String>,
    },
    /// A file a manifest row names does not exist.
    #[error(
        "{} line {line}: the {column} file {} does not exist{hint}",
        manifest.display(),
        path.display()
    )]
    MissingFile {
        /// The manifest.
        manifest: PathBuf,
        /// 1-based line.
        line: usize,
        /// The column ("image" or "mask").
        column: String,
        /// The missing path.
        path: PathBuf,
        /// A suggestion (empty, or starting with "; ").
        hint: String,
    },
    /// A label value that is neither an anomalous nor a normal value.
    #[error(
        "{} line {line}: unknown label \"{value}\" in column \"{column}\"; accepted values: \
         {accepted}",
        manifest.display()
    )]
    UnknownLabel {
        /// The manifest.
        manifest: PathBuf,
        /// 1-based line.
        line: usize,
        /// The label column.
        column: String,
        /// The value found.
        value: String,
        /// The accepted values, e.g. `anomalous = 1, yes; normal = 0, no`.
        accepted: String,
    },
    /// With `folder:...,images=DIR,masks=DIR` an image's mask is its label: one without is
    /// an error.
    #[error(
        "image {} has no mask (expected {expected}); with images=, the mask gives the label: \
         an empty mask means normal",
        image.display()
    )]
    UnlabelledImage {
        /// The image.
        image: PathBuf,
        /// Where its mask was looked for.
        expected: String,
    },
    /// A manifest labels one image both normal and anomalous.
    #[error(
        "{}: {} is labelled {} on line {first_line} but {} on line {line}; an image has one \
         label",
        manifest.display(),
        image.display(),
        label_word(*first_anomalous),
        label_word(!first_anomalous)
    )]
    ConflictingLabels {
        /// The manifest.
        manifest: PathBuf,
        /// The image.
        image: PathBuf,
        /// The line that listed it first.
        first_line: usize,
        /// Whether that line says anomalous.
        first_anomalous: bool,
        /// The line that says the other label.
        line: usize,
    },
    /// A file that must be an image (listed by a manifest, or a mask) is not one.
    #[error("{} (listed in {origin}) is not an image: {reason}", path.display())]
    NotAnImage {
        /// The file.
        path: PathBuf,
        /// Where it was listed.
        origin: String,
        /// Why.
        reason: String,
    },
    /// An image whose header could not be read.
    #[error("{} (listed in {origin}): {error}", path.display())]
    BadImage {
        /// The file.
        path: PathBuf,
        /// Where it was listed.
        origin: String,
        /// The decoder's complaint.
        error: DataError,
    },
}

fn label_word(anomalous: bool) -> &'static str {
    if anomalous {
        "anomalous"
    } else {
        "normal"
    }
}

fn accepted_labels(anomalous: &[String], normal: &[String]) -> String {
    format!(
        "anomalous = {}; normal = {}",
        anomalous.join(", "),
        normal.join(", ")
    )
}

/// Lists and checks the data set `spec` names. See the module documentation.
pub fn load(spec: &DataSpec, opts: &LoadOptions) -> Result<Dataset, DatasetError> {
    let loader = spec.layout.loader();
    let (root, default_name) = loader.shown_root_and_name();
    let name = spec
        .name
        .clone()
        .or(default_name)
        .unwrap_or_else(|| spec.kind().to_string());
    let mut ctx = category::Ctx::new(opts);
    let categories = loader.load(&mut ctx, &name)?;
    let has_masks = categories.iter().all(|c| c.has_masks);
    Ok(Dataset {
        name,
        kind: spec.kind(),
        root,
        categories,
        has_masks,
        warnings: ctx.warnings,
    })
}

/// Parses `spec` and loads it.
pub fn load_str(spec: &str, opts: &LoadOptions) -> Result<Dataset, DatasetError> {
    load(&spec.parse()?, opts)
}

/// The last component of a folder's absolute path ("." and ".." resolved); `None` at a root.
fn folder_name(path: &Path) -> Option<String> {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    abs.file_name().map(|n| n.to_string_lossy().into_owned())
}
