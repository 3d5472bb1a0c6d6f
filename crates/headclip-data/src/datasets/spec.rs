//! The generic `KIND:ROOT[,key=value...]` syntax of a data set on the command line: splitting at
//! commas outside quotes, checking keys against the kind's, and the value types several layouts
//! share (`+` lists, splits, file-name templates). What each key means is the layout's business
//! (`layouts/`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::layouts::{DataKind, Layout};

/// A parsed `--data` value: one data set. Parse with [`str::parse`]; see
/// [`DATA_SPEC_HELP`](super::DATA_SPEC_HELP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSpec {
    /// Where the files are and the options of the kind.
    pub layout: Layout,
    /// The display name given with `name=`.
    pub name: Option<String>,
    /// Few-shot references given with `references=DIR` (for layouts without a training split):
    /// `DIR/<category>/` where that folder exists, else `DIR`.
    pub references: Option<PathBuf>,
    /// The class name given with `class=NAME`, for every category of the set (default: the
    /// category's name for MVTec AD and VisA, "object" otherwise).
    pub class_name: Option<String>,
    text: String,
}

impl DataSpec {
    /// The kind of the layout.
    pub fn kind(&self) -> DataKind {
        self.layout.kind()
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

/// The keys every kind takes: its display name, few-shot references, the class name.
pub(crate) const COMMON_KEYS: [&str; 3] = ["name", "references", "class"];

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
                s.push_str(&k.syntax());
            }
            s
        }
    }
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
            let kinds = DataKind::ALL.map(|k| k.as_str()).join(", ");
            let message = format!("expected KIND:ROOT[,key=value...], with KIND one of {kinds}");
            return Err(fail(None, message));
        };
        let kind: DataKind = kind_text.parse().map_err(|m| fail(None, m))?;
        let fail = |m: String| fail(Some(kind), m);
        let mut options = Options::tokenise(kind, rest).map_err(fail)?;
        let name = options.text("name");
        let references = options.path("references");
        let class_name = options.text("class");
        let layout = Layout::parse(kind, &mut options).map_err(fail)?;
        debug_assert!(options.items.is_empty(), "every accepted key is consumed");
        Ok(DataSpec {
            layout,
            name,
            references,
            class_name,
            text,
        })
    }
}

/// The root and the `key=value` items of a spec, keys checked against the kind's. Layouts take
/// the values out by key, each in the type it needs.
#[derive(Debug)]
pub(crate) struct Options {
    kind: DataKind,
    root: Option<String>,
    items: Vec<(String, String)>,
}

impl Options {
    /// Splits the text after `KIND:` into the root and options, refusing unknown, repeated or
    /// empty keys.
    fn tokenise(kind: DataKind, rest: &str) -> Result<Options, String> {
        let mut options = Options {
            kind,
            root: None,
            items: Vec::new(),
        };
        for (i, item) in split_items(rest)?.into_iter().enumerate() {
            match item.split_once('=') {
                // Only a kind whose root is optional may start with an option; elsewhere a first
                // item holding '=' is a path.
                Some((key, value)) if i > 0 || options.starts_with_option(key) => {
                    options.push(key, value)?
                }
                _ if i > 0 => {
                    return Err(format!(
                        "expected key=value after the first comma, got \"{item}\" (write a value \
                         holding a comma in double quotes)"
                    ))
                }
                _ if item.trim().is_empty() => return Err(options.missing_root()),
                _ => options.root = Some(item),
            }
        }
        Ok(options)
    }

    /// Every kind takes the [`COMMON_KEYS`]; the others are the kind's own.
    fn accepts(&self, key: &str) -> bool {
        COMMON_KEYS.contains(&key) || self.kind.info().keys.contains(&key)
    }

    fn starts_with_option(&self, key: &str) -> bool {
        self.kind.info().root_optional && self.accepts(&key.trim().to_ascii_lowercase())
    }

    fn push(&mut self, key: &str, value: &str) -> Result<(), String> {
        let info = self.kind.info();
        let key = key.trim().to_ascii_lowercase();
        if !self.accepts(&key) {
            return Err(format!(
                "unknown option \"{key}\" for {}; accepted options: {}",
                self.kind,
                self.kind.keys().join(", ")
            ));
        }
        if self.items.iter().any(|(k, _)| *k == key) {
            return Err(format!("option \"{key}\" is given twice"));
        }
        if value.trim().is_empty() && !info.may_be_empty.contains(&key.as_str()) {
            return Err(format!("option \"{key}\" has an empty value"));
        }
        self.items.push((key, value.to_string()));
        Ok(())
    }

    fn missing_root(&self) -> String {
        format!(
            "the {} is missing after \"{}:\"",
            self.kind.info().root_what,
            self.kind
        )
    }

    /// The root, which this kind requires.
    pub fn root(&mut self) -> Result<PathBuf, String> {
        self.optional_root().ok_or_else(|| self.missing_root())
    }

    /// The root, for a kind where it may be left out.
    pub fn optional_root(&mut self) -> Option<PathBuf> {
        self.root.take().map(PathBuf::from)
    }

    /// The value of `key` as written (not trimmed).
    pub fn raw(&mut self, key: &str) -> Option<String> {
        let i = self.items.iter().position(|(k, _)| k == key)?;
        Some(self.items.remove(i).1)
    }

    /// The value of `key`, trimmed.
    pub fn text(&mut self, key: &str) -> Option<String> {
        self.raw(key).map(|v| v.trim().to_string())
    }

    /// The value of `key` as a path.
    pub fn path(&mut self, key: &str) -> Option<PathBuf> {
        self.text(key).map(PathBuf::from)
    }

    /// A `+`-joined list of names, e.g. `category=bottle+cable`.
    pub fn list(&mut self, key: &str) -> Result<Option<Vec<String>>, String> {
        let Some(value) = self.raw(key) else {
            return Ok(None);
        };
        let list: Vec<String> = value.split('+').map(|v| v.trim().to_string()).collect();
        if list.iter().any(|v| v.is_empty()) {
            return Err(format!(
                "{key}={value} has an empty entry; expected names joined by '+', e.g. {key}=a+b"
            ));
        }
        Ok(Some(list))
    }

    /// `split=test|train`, test when absent.
    pub fn split(&mut self) -> Result<Split, String> {
        match self
            .text("split")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("test") => Ok(Split::Test),
            Some("train") => Ok(Split::Train),
            Some(other) => Err(format!(
                "split={other} is not a split; expected split=test or split=train"
            )),
        }
    }

    /// A file-name [`Template`].
    pub fn template(&mut self, key: &str) -> Result<Option<Template>, String> {
        self.text(key).map(|t| Template::parse(&t)).transpose()
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

/// Reads up to the closing '}', which it consumes; `None` when there is none.
fn read_placeholder(chars: &mut impl Iterator<Item = char>) -> Option<String> {
    let mut inner = String::new();
    for c in chars {
        if c == '}' {
            return Some(inner);
        }
        inner.push(c);
    }
    None
}

/// The padding width of the placeholder `{inner}`: `None` for `{}`, N for `{:0N}`.
fn placeholder_width(text: &str, inner: &str) -> Result<Option<usize>, String> {
    if inner.is_empty() {
        return Ok(None);
    }
    inner
        .strip_prefix(":0")
        .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.parse::<usize>().ok())
        .filter(|&w| w <= 64)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "template \"{text}\" has the placeholder {{{inner}}}; expected {{}} or {{:0N}} \
                 (N digits, zero-padded)"
            )
        })
}

impl Template {
    /// Parses a template; it must hold at least one placeholder.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' | '}' if chars.peek() == Some(&c) => {
                    chars.next();
                    lit.push(c);
                }
                '{' => {
                    let Some(inner) = read_placeholder(&mut chars) else {
                        return Err(format!("template \"{text}\" has a '{{' without its '}}'"));
                    };
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Value(placeholder_width(text, &inner)?));
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
