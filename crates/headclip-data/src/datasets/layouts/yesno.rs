//! `yesno`: an image-level set with `yes/` (anomalous) and `no/` (normal) folders.

use std::path::PathBuf;

use super::{KindInfo, LoadLayout, ParseLayout};
use crate::datasets::category::{finish, Ctx, Listed};
use crate::datasets::fsutil::{list_images, require_dir};
use crate::datasets::spec::Options;
use crate::datasets::{folder_name, Category, DatasetError, Sample};

/// `yesno:ROOT[,yes=DIR][,no=DIR][,category=NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YesNoOptions {
    /// The folder holding the two folders.
    pub root: PathBuf,
    /// Folder of anomalous images, inside `root`.
    pub yes: String,
    /// Folder of normal images, inside `root`.
    pub no: String,
    /// The category's name (default: the data set's name).
    pub category: Option<String>,
}

impl ParseLayout for YesNoOptions {
    const INFO: KindInfo = KindInfo {
        name: "yesno",
        usage: "yesno:ROOT[,yes=yes][,no=no][,category=NAME]",
        description: "      \
Image-level set: ROOT/yes holds anomalous images, ROOT/no normal ones.",
        examples: "
  yesno:data/brainmri,name=BrainMRI",
        keys: &["yes", "no", "category"],
        may_be_empty: &[],
        root_what: "root folder",
        root_optional: false,
    };

    fn parse(opts: &mut Options) -> Result<Self, String> {
        Ok(YesNoOptions {
            root: opts.root()?,
            yes: opts.text("yes").unwrap_or_else(|| "yes".into()),
            no: opts.text("no").unwrap_or_else(|| "no".into()),
            category: opts.text("category"),
        })
    }
}

impl LoadLayout for YesNoOptions {
    fn shown_root_and_name(&self) -> (PathBuf, Option<String>) {
        (self.root.clone(), folder_name(&self.root))
    }

    fn load(&self, ctx: &mut Ctx, name: &str) -> Result<Vec<Category>, DatasetError> {
        require_dir(&self.root, "data set root")?;
        let yes_dir = self.root.join(&self.yes);
        let no_dir = self.root.join(&self.no);
        require_dir(&yes_dir, "folder of anomalous images (yes=)")?;
        require_dir(&no_dir, "folder of normal images (no=)")?;
        let mut samples = Vec::new();
        for (dir, anomalous) in [(&no_dir, false), (&yes_dir, true)] {
            for image in list_images(dir, &mut ctx.warnings)? {
                samples.push(Sample {
                    image,
                    anomalous,
                    mask: None,
                    defect: None,
                    source: dir.display().to_string(),
                });
            }
        }
        let listed = Listed {
            name: self.category.clone().unwrap_or_else(|| name.to_string()),
            samples,
            has_masks: false,
            missing: Vec::new(),
            looked_in: format!("{} and {}", yes_dir.display(), no_dir.display()),
        };
        Ok(vec![finish(ctx, listed)?])
    }
}
