//! The `KIND:ROOT[,key=value...]` syntax of a data set on the command line.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// What `--help` prints about data set specs: the syntax of every kind, with examples.
pub const DATA_SPEC_HELP: &str = "\
A data set is one string: KIND:ROOT[,key=value...]
Relative paths are taken from the current folder unless said otherwise. A value holding a comma
or a double quote is written in double quotes, with \"\" for a quote: key=\"a,b\". Every kind takes
name=NAME, the data set's display name (default: the root folder's name). Images are recognised
by their bytes, not their extension; files whose name starts with '.' are ignored.

  mvtec:ROOT[,category=A+B][,split=test|train]
      MVTec AD layout: ROOT/<category>/test/<defect>/<image> with masks at
      ROOT/<category>/ground_truth/<defect>/<stem>_mask.<ext> (or <stem>.<ext>). ROOT may also be
      a single category folder. test/good holds the normal images; every other defect folder is
      anomalous and needs masks. category= keeps only the named categories. split=train reads
      <category>/train/ (train/good: normal images only) instead of test/.
  visa:ROOT[,category=A+B][,split=test|train][,manifest=split_csv/1cls.csv]
      VisA: the manifest (default ROOT/split_csv/1cls.csv) has the columns
      object,split,label,image,mask; label is normal or anomaly; paths are relative to ROOT; masks
      are label maps (every value above 0 is anomalous). One category per object.
  folder:[ROOT,]normal=DIR,anomalous=DIR[,masks=DIR][,mask_suffix=SUFFIX][,category=NAME]
      Folders of normal and of anomalous images (either may be left out). With masks=, every
      anomalous image X.<ext> needs a mask X<SUFFIX>.<any ext> there (matched by file stem;
      mask_suffix defaults to nothing). With ROOT, relative folders are inside ROOT.
  csv:MANIFEST,image=COL,label=COL[,anomalous=V1+V2][,normal=V1+V2][,mask=COL][,template=FMT][,category=NAME]
      A CSV file with a header row (column names are trimmed). Paths are relative to the
      manifest's folder. template= turns the image cell into a file name: {} is the value, {:0N}
      the value zero-padded to N digits. Label values are trimmed and compared without case;
      defaults: anomalous=1+true+yes+anomaly+anomalous+abnormal, normal=0+false+no+normal+good.
      Without mask= the set is image-level (no pixel metrics).
  yesno:ROOT[,yes=yes][,no=no][,category=NAME]
      Image-level set: ROOT/yes holds anomalous images, ROOT/no normal ones.

Examples:
  mvtec:data/mvtec_anomaly_detection,category=bottle+cable
  mvtec:data/CVC-ColonDB,name=ColonDB
  visa:data/VisA_20220922,split=test
  folder:anomalous=data/kvasir/images,masks=data/kvasir/masks
  folder:data/kvasir,anomalous=images,masks=masks,name=Kvasir
  csv:data/headct/labels.csv,image=id,label=hemorrhage,template=head_ct/{:03}.png
  yesno:data/brainmri,name=BrainMRI";

const SYNTAX_MVTEC: &str = "mvtec:ROOT[,category=A+B][,split=test|train][,name=NAME]";
const SYNTAX_VISA: &str =
    "visa:ROOT[,category=A+B][,split=test|train][,manifest=split_csv/1cls.csv][,name=NAME]";
const SYNTAX_FOLDER: &str = "folder:[ROOT,]normal=DIR,anomalous=DIR[,masks=DIR]\
                             [,mask_suffix=SUFFIX][,category=NAME][,name=NAME]";
const SYNTAX_CSV: &str = "csv:MANIFEST,image=COL,label=COL[,anomalous=V1+V2][,normal=V1+V2]\
                          [,mask=COL][,template=FMT][,category=NAME][,name=NAME]";
const SYNTAX_YESNO: &str = "yesno:ROOT[,yes=yes][,no=no][,category=NAME][,name=NAME]";

/// The layout family of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// MVTec AD folders (`<category>/test/<defect>/`, `<category>/ground_truth/<defect>/`).
    Mvtec,
    /// VisA with its `split_csv/1cls.csv` manifest.
    Visa,
    /// A folder of normal images and/or a folder of anomalous images, masks matched by stem.
    Folder,
    /// A CSV manifest of image paths (or ids) and labels.
    Csv,
    /// Image-level `yes/` (anomalous) and `no/` (normal) folders.
    YesNo,
}

impl DataKind {
    /// Every kind, in the order the help lists them.
    pub const ALL: [DataKind; 5] = [
        DataKind::Mvtec,
        DataKind::Visa,
        DataKind::Folder,
        DataKind::Csv,
        DataKind::YesNo,
    ];

    /// The word used before the colon of a spec.
    pub fn as_str(self) -> &'static str {
        match self {
            DataKind::Mvtec => "mvtec",
            DataKind::Visa => "visa",
            DataKind::Folder => "folder",
            DataKind::Csv => "csv",
            DataKind::YesNo => "yesno",
        }
    }

    /// The one-line syntax of this kind.
    pub fn syntax(self) -> &'static str {
        match self {
            DataKind::Mvtec => SYNTAX_MVTEC,
            DataKind::Visa => SYNTAX_VISA,
            DataKind::Folder => SYNTAX_FOLDER,
            DataKind::Csv => SYNTAX_CSV,
            DataKind::YesNo => SYNTAX_YESNO,
        }
    }

    /// The option keys this kind accepts (besides its root).
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            DataKind::Mvtec => &["name", "category", "split"],
            DataKind::Visa => &["name", "category", "split", "manifest"],
            DataKind::Folder => &[
                "name",
                "normal",
                "anomalous",
                "masks",
                "mask_suffix",
                "category",
            ],
            DataKind::Csv => &[
                "name",
                "image",
                "label",
                "anomalous",
                "normal",
                "mask",
                "template",
                "category",
            ],
            DataKind::YesNo => &["name", "yes", "no", "category"],
        }
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

/// Which part of an MVTec AD or VisA data set to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Split {
    /// The test split (the zero-shot protocol trains and evaluates on it).
    #[default]
    Test,
    /// The training split (MVTec AD: normal images only).
    Train,
}

impl Split {
    /// `"test"` or `"train"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Test => "test",
            Split::Train => "train",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One piece of a [`Template`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// The cell's value; `Some(n)` pads it with zeros to `n` digits.
    Value(Option<usize>),
}

/// A file-name template of the `csv` kind: `{}` is the cell's value, `{:0N}` the value
/// zero-padded to N digits (the value must then be a non-negative integer). `{{` and `}}` are
/// literal braces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    text: String,
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses a template; it must hold at least one placeholder.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut inner = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        inner.push(c);
                    }
                    if !closed {
                        return Err(format!("template \"{text}\" has a '{{' without its '}}'"));
                    }
                    let pad = if inner.is_empty() {
                        None
                    } else {
                        let width = inner
                            .strip_prefix(":0")
                            .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
                            .and_then(|w| w.parse::<usize>().ok())
                            .filter(|&w| w <= 64);
                        match width {
                            Some(w) => Some(w),
                            None => {
                                return Err(format!(
                                    "template \"{text}\" has the placeholder {{{inner}}}; \
                                     expected {{}} or {{:0N}} (N digits, zero-padded)"
                                ))
                            }
                        }
                    };
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Value(pad));
                }
                '}' => {
                    return Err(format!(
                        "template \"{text}\" has a '}}' without its '{{' (write }}}} for a brace)"
                    ))
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        if !pieces.iter().any(|p| matches!(p, Piece::Value(_))) {
            return Err(format!(
                "template \"{text}\" has no placeholder; expected {{}} or {{:0N}} where the \
                 value goes, e.g. head_ct/{{:03}}.png"
            ));
        }
        Ok(Template {
            text: text.to_string(),
            pieces,
        })
    }

    /// Fills the template with `value`; a padded placeholder needs an integer value.
    pub fn apply(&self, value: &str) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Value(None) => out.push_str(value),
                Piece::Value(Some(width)) => {
                    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(format!(
                            "template \"{}\" pads its value with zeros, which needs a \
                             non-negative integer, not \"{value}\"",
                            self.text
                        ));
                    }
                    out.push_str(&format!("{value:0>width$}"));
                }
            }
        }
        Ok(out)
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// How a data set is laid out on disk, with the options of its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `mvtec:ROOT[,category=A+B][,split=test|train]`.
    Mvtec {
        /// The folder of categories, or one category folder.
        root: PathBuf,
        /// Categories to keep (`None`: all).
        categories: Option<Vec<String>>,
        /// The split to read.
        split: Split,
    },
    /// `visa:ROOT[,category=A+B][,split=test|train][,manifest=PATH]`.
    Visa {
        /// The folder holding `split_csv/` and one folder per object.
        root: PathBuf,
        /// Objects to keep (`None`: all).
        categories: Option<Vec<String>>,
        /// The split to read.
        split: Split,
        /// The manifest, relative to `root` unless absolute (default `split_csv/1cls.csv`).
        manifest: PathBuf,
    },
    /// `folder:[ROOT,]normal=DIR,anomalous=DIR[,masks=DIR][,mask_suffix=S][,category=NAME]`.
    Folder {
        /// The folder the others are relative to, if given.
        root: Option<PathBuf>,
        /// Normal images.
        normal: Option<PathBuf>,
        /// Anomalous images.
        anomalous: Option<PathBuf>,
        /// Masks of the anomalous images.
        masks: Option<PathBuf>,
        /// Appended to an image's stem to give its mask's stem.
        mask_suffix: String,
        /// The category's name (default: the data set's name).
        category: Option<String>,
    },
    /// `csv:MANIFEST,image=COL,label=COL[,...]`.
    Csv {
        /// The CSV file.
        manifest: PathBuf,
        /// Column of image paths (or ids, with `template`).
        image_column: String,
        /// Column of labels.
        label_column: String,
        /// Label values meaning anomalous (lower case).
        anomalous_values: Vec<String>,
        /// Label values meaning normal (lower case).
        normal_values: Vec<String>,
        /// Column of mask paths, if any (empty cells: no mask).
        mask_column: Option<String>,
        /// Turns the image cell into a path.
        template: Option<Template>,
        /// The category's name (default: the data set's name).
        category: Option<String>,
    },
    /// `yesno:ROOT[,yes=DIR][,no=DIR][,category=NAME]`.
    YesNo {
        /// The folder holding the two folders.
        root: PathBuf,
        /// Folder of anomalous images, inside `root`.
        yes: String,
        /// Folder of normal images, inside `root`.
        no: String,
        /// The category's name (default: the data set's name).
        category: Option<String>,
    },
}

/// A parsed `--data` value: one data set. Parse with [`str::parse`]; see [`DATA_SPEC_HELP`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSpec {
    /// Where the files are and the options of the kind.
    pub layout: Layout,
    /// The display name given with `name=`.
    pub name: Option<String>,
    text: String,
}

impl DataSpec {
    /// The kind of the layout.
    pub fn kind(&self) -> DataKind {
        match self.layout {
            Layout::Mvtec { .. } => DataKind::Mvtec,
            Layout::Visa { .. } => DataKind::Visa,
            Layout::Folder { .. } => DataKind::Folder,
            Layout::Csv { .. } => DataKind::Csv,
            Layout::YesNo { .. } => DataKind::YesNo,
        }
    }

    /// The spec as it was written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A spec string that does not follow the syntax. Its message says what was expected and shows
/// the syntax of the kind (or of every kind).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid data set spec \"{spec}\": {message}\n{}", syntax_block(*.kind))]
pub struct SpecError {
    /// The text that was parsed.
    pub spec: String,
    /// What is wrong.
    pub message: String,
    /// The kind, when it was recognised.
    pub kind: Option<DataKind>,
}

fn syntax_block(kind: Option<DataKind>) -> String {
    match kind {
        Some(k) => format!("expected: {}\n(see --help for every kind)", k.syntax()),
        None => {
            let mut s = String::from("expected one of:");
            for k in DataKind::ALL {
                s.push_str("\n  ");
                s.push_str(k.syntax());
            }
            s
        }
    }
}

/// Splits at commas outside double quotes; quotes are removed and `""` inside them is a quote.
fn split_items(s: &str) -> Result<Vec<String>, String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => items.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if in_quotes {
        return Err("a double quote is not closed".into());
    }
    items.push(cur);
    Ok(items)
}

fn plus_list(key: &str, value: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = value.split('+').map(|v| v.trim().to_string()).collect();
    if list.iter().any(|v| v.is_empty()) {
        return Err(format!(
            "{key}={value} has an empty entry; expected names joined by '+', e.g. {key}=a+b"
        ));
    }
    Ok(list)
}

impl FromStr for DataSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim().to_string();
        let fail = |kind: Option<DataKind>, message: String| SpecError {
            spec: text.clone(),
            message,
            kind,
        };
        let Some((kind_text, rest)) = text.split_once(':') else {
            return Err(fail(
                None,
                "expected KIND:ROOT[,key=value...], with KIND one of mvtec, visa, folder, csv, \
                 yesno"
                    .into(),
            ));
        };
        let kind: DataKind = kind_text.parse().map_err(|m| fail(None, m))?;
        let fail = |m: String| fail(Some(kind), m);
        let items = split_items(rest).map_err(fail)?;

        let mut root: Option<String> = None;
        let mut opts: Vec<(String, String)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key_value = item.split_once('=').map(|(k, v)| (k.trim(), v));
            let is_option = match key_value {
                Some((k, _)) if i > 0 || kind == DataKind::Folder => {
                    i > 0 || kind.keys().contains(&k.to_ascii_lowercase().as_str())
                }
                _ => false,
            };
            if !is_option {
                if i > 0 {
                    return Err(fail(format!(
                        "expected key=value after the first comma, got \"{item}\" (write a value \
                         holding a comma in double quotes)"
                    )));
                }
                if item.trim().is_empty() {
                    return Err(fail(format!(
                        "the {} is missing after \"{kind}:\"",
                        if kind == DataKind::Csv {
                            "manifest file"
                        } else {
                            "root folder"
                        }
                    )));
                }
                root = Some(item.clone());
                continue;
            }
            let (k, v) = key_value.expect("is_option implies key=value");
            let k = k.to_ascii_lowercase();
            if !kind.keys().contains(&k.as_str()) {
                return Err(fail(format!(
                    "unknown option \"{k}\" for {kind}; accepted options: {}",
                    kind.keys().join(", ")
                )));
            }
            if opts.iter().any(|(o, _)| *o == k) {
                return Err(fail(format!("option \"{k}\" is given twice")));
            }
            if v.trim().is_empty() && k != "mask_suffix" {
                return Err(fail(format!("option \"{k}\" has an empty value")));
            }
            opts.push((k, v.to_string()));
        }

        let mut take = |key: &str| -> Option<String> {
            let i = opts.iter().position(|(k, _)| k == key)?;
            Some(opts.remove(i).1)
        };
        let name = take("name").map(|n| n.trim().to_string());
        let trimmed = |v: Option<String>| v.map(|v| v.trim().to_string());
        let need_root = |root: Option<String>| -> Result<PathBuf, SpecError> {
            root.map(PathBuf::from).ok_or_else(|| {
                fail(format!(
                    "the {} is missing after \"{kind}:\"",
                    if kind == DataKind::Csv {
                        "manifest file"
                    } else {
                        "root folder"
                    }
                ))
            })
        };
        let split = |v: Option<String>| -> Result<Split, SpecError> {
            match v
                .as_deref()
                .map(|v| v.trim().to_ascii_lowercase())
                .as_deref()
            {
                None | Some("test") => Ok(Split::Test),
                Some("train") => Ok(Split::Train),
                Some(_) => Err(fail(format!(
                    "split={} is not a split; expected split=test or split=train",
                    v.unwrap_or_default()
                ))),
            }
        };
        let categories = |v: Option<String>| -> Result<Option<Vec<String>>, SpecError> {
            v.map(|v| plus_list("category", &v))
                .transpose()
                .map_err(fail)
        };

        let layout = match kind {
            DataKind::Mvtec => Layout::Mvtec {
                root: need_root(root)?,
                categories: categories(take("category"))?,
                split: split(take("split"))?,
            },
            DataKind::Visa => Layout::Visa {
                root: need_root(root)?,
                categories: categories(take("category"))?,
                split: split(take("split"))?,
                manifest: trimmed(take("manifest"))
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("split_csv/1cls.csv")),
            },
            DataKind::Folder => {
                let normal = trimmed(take("normal")).map(PathBuf::from);
                let anomalous = trimmed(take("anomalous")).map(PathBuf::from);
                let masks = trimmed(take("masks")).map(PathBuf::from);
                let mask_suffix = take("mask_suffix");
                if normal.is_none() && anomalous.is_none() {
                    return Err(fail(
                        "expected normal=DIR and/or anomalous=DIR (folders of images)".into(),
                    ));
                }
                if masks.is_none() && mask_suffix.is_some() {
                    return Err(fail("mask_suffix= needs masks=DIR".into()));
                }
                if masks.is_some() && anomalous.is_none() {
                    return Err(fail(
                        "masks= belongs to anomalous images, but anomalous=DIR is missing".into(),
                    ));
                }
                Layout::Folder {
                    root: root.map(PathBuf::from),
                    normal,
                    anomalous,
                    masks,
                    mask_suffix: mask_suffix.unwrap_or_default(),
                    category: trimmed(take("category")),
                }
            }
            DataKind::Csv => {
                let manifest = need_root(root)?;
                let image_column = trimmed(take("image"));
                let label_column = trimmed(take("label"));
                let (Some(image_column), Some(label_column)) = (image_column, label_column) else {
                    return Err(fail(
                        "expected image=COL and label=COL (the manifest's column names)".into(),
                    ));
                };
                let lower = |v: Vec<String>| -> Vec<String> {
                    v.into_iter().map(|s| s.to_lowercase()).collect()
                };
                let anomalous_values = match take("anomalous") {
                    Some(v) => lower(plus_list("anomalous", &v).map_err(fail)?),
                    None => lower(
                        ["1", "true", "yes", "anomaly", "anomalous", "abnormal"]
                            .map(String::from)
                            .to_vec(),
                    ),
                };
                let normal_values = match take("normal") {
                    Some(v) => lower(plus_list("normal", &v).map_err(fail)?),
                    None => {
                        let defaults = ["0", "false", "no", "normal", "good"];
                        defaults
                            .iter()
                            .map(|s| s.to_string())
                            .filter(|s| !anomalous_values.contains(s))
                            .collect()
                    }
                };
                if let Some(both) = anomalous_values.iter().find(|v| normal_values.contains(v)) {
                    return Err(fail(format!(
                        "label value \"{both}\" is both anomalous and normal"
                    )));
                }
                let template = take("template")
                    .map(|t| Template::parse(t.trim()))
                    .transpose()
                    .map_err(fail)?;
                Layout::Csv {
                    manifest,
                    image_column,
                    label_column,
                    anomalous_values,
                    normal_values,
                    mask_column: trimmed(take("mask")),
                    template,
                    category: trimmed(take("category")),
                }
            }
            DataKind::YesNo => Layout::YesNo {
                root: need_root(root)?,
                yes: trimmed(take("yes")).unwrap_or_else(|| "yes".into()),
                no: trimmed(take("no")).unwrap_or_else(|| "no".into()),
                category: trimmed(take("category")),
            },
        };
        debug_assert!(opts.is_empty(), "every accepted key is consumed");
        Ok(DataSpec { layout, name, text })
    }
}
