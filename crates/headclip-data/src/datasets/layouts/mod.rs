//! The layouts, one module each: its keys, help text, options (taken from the spec's
//! `key=value` items) and loader. This file lists them once, in [`layouts!`], which makes the
//! [`DataKind`] and [`Layout`] enums, the dispatch to the modules and [`DATA_SPEC_HELP`]; adding
//! a layout is adding a module and its line there.

mod csv;
mod folder;
mod mvtec;
mod visa;
mod yesno;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use self::csv::CsvOptions;
pub use self::folder::FolderOptions;
pub use self::mvtec::MvtecOptions;
pub use self::visa::VisaOptions;
pub use self::yesno::YesNoOptions;

use super::category::Ctx;
use super::spec::Options;
use super::{Category, DatasetError};

/// What the spec parser and the help need to know about a layout.
pub(crate) struct KindInfo {
    /// The word before the colon.
    pub name: &'static str,
    /// The syntax line, without the `name=` every kind takes.
    pub usage: &'static str,
    /// Its paragraph of the help, each line indented by six spaces.
    pub description: &'static str,
    /// Example specs, each on a line of its own starting with "\n  ".
    pub examples: &'static str,
    /// The option keys besides `name`.
    pub keys: &'static [&'static str],
    /// Keys whose value may be empty.
    pub may_be_empty: &'static [&'static str],
    /// What comes after the colon ("root folder", "manifest file").
    pub root_what: &'static str,
    /// Whether the spec may start with an option instead of the root.
    pub root_optional: bool,
}

/// A layout's options: parsed from a spec.
pub(crate) trait ParseLayout: Sized {
    const INFO: KindInfo;
    /// Takes the layout's values out of `opts`; the message says what is wrong.
    fn parse(opts: &mut Options) -> Result<Self, String>;
}

/// A layout's loader.
pub(crate) trait LoadLayout {
    /// The root shown in the [`Dataset`](super::Dataset), and the default display name.
    fn shown_root_and_name(&self) -> (PathBuf, Option<String>);
    /// Lists and checks the categories; `name` is the data set's display name.
    fn load(&self, ctx: &mut Ctx, name: &str) -> Result<Vec<Category>, DatasetError>;
}

/// Makes the kind and layout enums from the list of layouts.
macro_rules! layouts {
    ($($(#[$doc:meta])* $kind:ident($options:ty),)*) => {
        /// The layout family of a data set.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum DataKind {
            $($(#[$doc])* $kind,)*
        }

        /// How a data set is laid out on disk, with the options of its kind.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Layout {
            $($(#[$doc])* $kind($options),)*
        }

        impl DataKind {
            /// Every kind, in the order the help lists them.
            pub const ALL: [DataKind; [$(DataKind::$kind),*].len()] = [$(DataKind::$kind),*];

            pub(crate) fn info(self) -> &'static KindInfo {
                match self {
                    $(DataKind::$kind => &<$options as ParseLayout>::INFO,)*
                }
            }
        }

        impl Layout {
            pub(crate) fn parse(kind: DataKind, opts: &mut Options) -> Result<Layout, String> {
                match kind {
                    $(DataKind::$kind => <$options>::parse(opts).map(Layout::$kind),)*
                }
            }

            /// The kind of this layout.
            pub fn kind(&self) -> DataKind {
                match self {
                    $(Layout::$kind(_) => DataKind::$kind,)*
                }
            }

            pub(crate) fn loader(&self) -> &dyn LoadLayout {
                match self {
                    $(Layout::$kind(options) => options,)*
                }
            }
        }

        const HELP_PARTS: &[&str] = &[
            HELP_INTRO,
            $("\n  ", <$options>::INFO.usage, "\n", <$options>::INFO.description,)*
            "\n\nExamples:",
            $(<$options>::INFO.examples,)*
        ];
    };
}

layouts! {
    /// MVTec AD folders (`<category>/test/<defect>/`, `<category>/ground_truth/<defect>/`).
    Mvtec(MvtecOptions),
    /// VisA with its `split_csv/1cls.csv` manifest.
    Visa(VisaOptions),
    /// A folder of normal images and/or a folder of anomalous images, masks matched by stem.
    Folder(FolderOptions),
    /// A CSV manifest of image paths (or ids) and labels.
    Csv(CsvOptions),
    /// Image-level `yes/` (anomalous) and `no/` (normal) folders.
    YesNo(YesNoOptions),
}

const HELP_INTRO: &str = "\
A data set is one string: KIND:ROOT[,key=value...]
Relative paths are taken from the current folder unless said otherwise. A value holding a comma
or a double quote is written in double quotes, with \"\" for a quote: key=\"a,b\". Every kind takes
name=NAME, the data set's display name (default: the root folder's name). Images are recognised
by their bytes, not their extension; files whose name starts with '.' are ignored.
Every kind also takes class=NAME, the object's name in the training-free prompts (default: the
category's name for mvtec and visa, \"object\" otherwise), and references=DIR, the normal images
`headclip test --shots K` draws from for layouts without a training split (DIR/<category>/ where
it exists, else DIR).
";

/// What `--help` prints about data set specs: the syntax of every kind, with examples.
pub const DATA_SPEC_HELP: &str = match std::str::from_utf8(&HELP_BYTES) {
    Ok(help) => help,
    Err(_) => panic!("the help parts are UTF-8 strings"),
};

// The help is assembled at compile time so that it stays a `&'static str` for clap.
const HELP_BYTES: [u8; total_len(HELP_PARTS)] = concat(HELP_PARTS);

const fn total_len(parts: &[&str]) -> usize {
    let mut len = 0;
    let mut i = 0;
    while i < parts.len() {
        len += parts[i].len();
        i += 1;
    }
    len
}

const fn concat<const N: usize>(parts: &[&str]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut at = 0;
    let mut i = 0;
    while i < parts.len() {
        let bytes = parts[i].as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            out[at] = bytes[j];
            at += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

impl DataKind {
    /// The word used before the colon of a spec.
    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// The one-line syntax of this kind, `name=` included.
    pub fn syntax(self) -> String {
        format!("{}[,name=NAME]", self.info().usage)
    }

    /// The option keys this kind accepts (besides its root): `name`, the kind's own, then the
    /// other common ones.
    pub fn keys(self) -> Vec<&'static str> {
        let (name, others) = super::spec::COMMON_KEYS.split_at(1);
        name.iter()
            .chain(self.info().keys)
            .chain(others)
            .copied()
            .collect()
    }
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        DataKind::ALL
            .into_iter()
            .find(|k| k.as_str() == t)
            .ok_or_else(|| {
                format!(
                    "unknown data set kind \"{}\"; expected one of {}",
                    s.trim(),
                    DataKind::ALL.map(|k| k.as_str()).join(", ")
                )
            })
    }
}
