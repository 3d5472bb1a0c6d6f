//! The config a checkpoint comes with: what its shapes do not tell (spec: "Backbones and
//! weights"). OpenCLIP ships `open_clip_config.json` beside `open_clip_model.safetensors`,
//! Hugging Face `config.json` (and `preprocessor_config.json`) beside `model.safetensors`; a
//! config is paired with weights by these names only, or named explicitly. A key a config leaves
//! out takes that format's own default, as its library would; OpenAI's rules apply only where
//! there is no config at all.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use headclip_data::images::{Normalization, CLIP_MEAN, CLIP_STD};
use serde_json::{Map, Value};

use super::config::{Activation, BackboneRules, Dim, Heads, RulesSource, TowerRules};

pub const OPENCLIP_WEIGHTS: &str = "open_clip_model.safetensors";
pub const OPENCLIP_CONFIG: &str = "open_clip_config.json";
pub const HF_WEIGHTS: &str = "model.safetensors";
pub const HF_CONFIG: &str = "config.json";
pub const HF_PREPROCESSOR: &str = "preprocessor_config.json";

/// Widths, layer counts and vocabularies larger than this are not a CLIP config's.
const MAX_SIZE: i64 = 1 << 20;

/// A config file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigFileError {
    pub path: PathBuf,
    pub message: String,
}

impl ConfigFileError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// The weights file `path` names: the file itself, or in a folder OpenCLIP's weights file (the
/// one OpenCLIP itself prefers) or else Hugging Face's.
pub fn find_checkpoint(path: &Path) -> Result<PathBuf, ConfigFileError> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    [OPENCLIP_WEIGHTS, HF_WEIGHTS]
        .iter()
        .map(|name| path.join(name))
        .find(|file| file.is_file())
        .ok_or_else(|| {
            ConfigFileError::new(
                path,
                format!("a folder with neither {OPENCLIP_WEIGHTS} nor {HF_WEIGHTS} in it"),
            )
        })
}

/// The config paired with a weights file by name, if it is there.
pub fn paired_config(weights: &Path) -> Option<PathBuf> {
    let config = match weights.file_name()?.to_str()? {
        OPENCLIP_WEIGHTS => OPENCLIP_CONFIG,
        HF_WEIGHTS => HF_CONFIG,
        _ => return None,
    };
    Some(weights.with_file_name(config)).filter(|path| path.is_file())
}

/// The rules for a weights file: from `explicit` when given, else from its paired config, else
/// OpenAI's.
pub fn rules_for_checkpoint(
    weights: &Path,
    explicit: Option<&Path>,
) -> Result<BackboneRules, ConfigFileError> {
    match explicit
        .map(Path::to_path_buf)
        .or_else(|| paired_config(weights))
    {
        Some(config) => read_rules(&config),
        None => Ok(BackboneRules::openai()),
    }
}

/// Reads an OpenCLIP or Hugging Face CLIP config, told apart by its keys.
pub fn read_rules(path: &Path) -> Result<BackboneRules, ConfigFileError> {
    let (root, sha) = read_json(path)?;
    let top = Section::root(path, &root);
    if ["model_cfg", "vision_cfg", "text_cfg"]
        .iter()
        .any(|k| root.contains_key(*k))
    {
        openclip_rules(&top, sha)
    } else if ["vision_config", "text_config", "model_type"]
        .iter()
        .any(|k| root.contains_key(*k))
    {
        hugging_face_rules(&top, sha)
    } else {
        Err(ConfigFileError::new(
            path,
            "neither an OpenCLIP config (model_cfg, vision_cfg, text_cfg) nor a Hugging Face \
             CLIP config (vision_config, text_config)",
        ))
    }
}

fn read_json(path: &Path) -> Result<(Map<String, Value>, String), ConfigFileError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigFileError::new(path, format!("cannot read it: {e}")))?;
    let sha = crate::weights::sha256_reader(&bytes[..])
        .map_err(|e| ConfigFileError::new(path, e.to_string()))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok((map, sha)),
        Ok(_) => Err(ConfigFileError::new(path, "not a JSON object")),
        Err(e) => Err(ConfigFileError::new(path, format!("not valid JSON: {e}"))),
    }
}

/// OpenCLIP: a hub file (`model_cfg`, `preprocess_cfg`) or a bare model config such as its own
/// `ViT-H-14.json`. Defaults are those of OpenCLIP's `CLIPVisionCfg` and `CLIPTextCfg`.
fn openclip_rules(top: &Section, sha: String) -> Result<BackboneRules, ConfigFileError> {
    let model = if top.has("model_cfg") {
        top.section("model_cfg")?
    } else {
        top.clone()
    };
    model.refuse_unless("custom_text", is_false)?;
    model.refuse_unless("multimodal_cfg", is_null)?;
    // OpenCLIP builds both towers' MLPs with one activation.
    let activation = if model.boolean("quick_gelu", false)? {
        Activation::QuickGelu
    } else {
        Activation::Gelu
    };
    let vision = model.section("vision_cfg")?;
    let text = model.section("text_cfg")?;
    refuse_openclip_options(&vision, VISION_OPTIONS)?;
    refuse_openclip_options(&text, TEXT_OPTIONS)?;
    if matches!(vision.value("layers"), Some(Value::Array(_))) {
        return Err(vision.error(
            "layers",
            "a list of stages is a ResNet tower, not supported",
        ));
    }
    let mut declared = vec![
        (
            model.key("embed_dim"),
            Dim::EmbedDim,
            model.required_int("embed_dim", 1..=MAX_SIZE)?,
        ),
        (
            vision.key("image_size"),
            Dim::PretrainedSide,
            vision.square_side("image_size", 224)?,
        ),
    ];
    declared.extend(sizes(
        &vision,
        &[
            ("width", Dim::VisionWidth, 768),
            ("layers", Dim::VisionLayers, 12),
            ("patch_size", Dim::Patch, 16),
        ],
    )?);
    declared.extend(sizes(
        &text,
        &[
            ("width", Dim::TextWidth, 512),
            ("layers", Dim::TextLayers, 12),
            ("context_length", Dim::ContextLength, 77),
            ("vocab_size", Dim::VocabSize, 49408),
        ],
    )?);
    for section in [&vision, &text] {
        section.refuse_unless("mlp_ratio", |v| v.as_f64() == Some(4.0))?;
    }
    let preprocess = top.section("preprocess_cfg")?;
    Ok(BackboneRules {
        vision: TowerRules {
            heads: Heads::Width(vision.int("head_width", 64, 1..=MAX_SIZE)?),
            heads_key: vision.key("head_width"),
            activation,
        },
        text: TowerRules {
            heads: Heads::Count(text.int("heads", 8, 1..=MAX_SIZE)?),
            heads_key: text.key("heads"),
            activation,
        },
        normalization: Normalization {
            mean: preprocess.triple("mean", CLIP_MEAN, 0.0..=1.0)?,
            std: preprocess.triple("std", CLIP_STD, 1e-3..=10.0)?,
        },
        declared,
        source: RulesSource::Config {
            files: vec![(top.file.to_path_buf(), sha)],
        },
    })
}

/// The sizes `keys` name (key, dimension, default), as declared checks against the tensors.
fn sizes(
    section: &Section,
    keys: &[(&str, Dim, i64)],
) -> Result<Vec<(String, Dim, i64)>, ConfigFileError> {
    keys.iter()
        .map(|&(key, dim, default)| {
            Ok((
                section.key(key),
                dim,
                section.int(key, default, 1..=MAX_SIZE)?,
            ))
        })
        .collect()
}

type OptionCheck = (&'static str, fn(&Value) -> bool);

/// Architecture options of OpenCLIP's towers the spec does not cover, each with the test for
/// its default (the only value accepted).
const COMMON_OPTIONS: &[OptionCheck] = &[
    ("ls_init_value", is_null),
    ("final_ln_after_pool", is_false),
    ("act_kwargs", is_null),
    ("norm_kwargs", is_null),
    ("block_type", |v| v == "default"),
    ("qk_norm", is_false),
    ("scaled_cosine_attn", is_false),
    ("scale_heads", is_false),
    ("scale_attn_inner", is_false),
    ("scale_attn", is_false),
    ("scale_fc", is_false),
];
const VISION_OPTIONS: &[OptionCheck] = &[
    ("attentional_pool", is_false),
    ("no_ln_pre", is_false),
    ("pos_embed_type", |v| v == "learnable"),
    ("pool_type", |v| v == "tok"),
    ("timm_model_name", is_null),
];
const TEXT_OPTIONS: &[OptionCheck] = &[
    ("embed_cls", is_false),
    ("no_causal_mask", is_false),
    ("pool_type", |v| v == "argmax"),
    ("proj_bias", is_false),
    ("proj_type", |v| v == "linear"),
    ("hf_model_name", is_null),
];

fn refuse_openclip_options(
    section: &Section,
    tower: &[OptionCheck],
) -> Result<(), ConfigFileError> {
    for (key, is_default) in COMMON_OPTIONS.iter().chain(tower) {
        section.refuse_unless(key, *is_default)?;
    }
    Ok(())
}

fn is_null(v: &Value) -> bool {
    v.is_null()
}

fn is_false(v: &Value) -> bool {
    v == &Value::Bool(false)
}

/// Hugging Face: `config.json` of a `CLIPModel`, and `preprocessor_config.json` beside it where
/// present. Defaults are those of transformers' `CLIPVisionConfig` and `CLIPTextConfig`.
fn hugging_face_rules(top: &Section, sha: String) -> Result<BackboneRules, ConfigFileError> {
    let model_type = top.text("model_type", "clip")?;
    if model_type != "clip" {
        return Err(top.error(
            "model_type",
            format!("{model_type:?} is not CLIP; only \"clip\" is supported"),
        ));
    }
    let vision = top.section("vision_config")?;
    let text = top.section("text_config")?;
    let mut declared = vec![
        (
            top.key("projection_dim"),
            Dim::EmbedDim,
            top.int("projection_dim", 512, 1..=MAX_SIZE)?,
        ),
        (
            vision.key("image_size"),
            Dim::PretrainedSide,
            vision.square_side("image_size", 224)?,
        ),
    ];
    declared.extend(sizes(
        &vision,
        &[
            ("hidden_size", Dim::VisionWidth, 768),
            ("intermediate_size", Dim::VisionMlpWidth, 3072),
            ("num_hidden_layers", Dim::VisionLayers, 12),
            ("patch_size", Dim::Patch, 32),
        ],
    )?);
    declared.extend(sizes(
        &text,
        &[
            ("hidden_size", Dim::TextWidth, 512),
            ("intermediate_size", Dim::TextMlpWidth, 2048),
            ("num_hidden_layers", Dim::TextLayers, 12),
            ("max_position_embeddings", Dim::ContextLength, 77),
            ("vocab_size", Dim::VocabSize, 49408),
        ],
    )?);
    vision.int("num_channels", 3, 3..=3)?;
    let tower = |section: &Section, heads: i64| -> Result<TowerRules, ConfigFileError> {
        // The engine's layer norms use PyTorch's default epsilon, as CLIP's do.
        section.refuse_unless("layer_norm_eps", |v| v.as_f64() == Some(1e-5))?;
        Ok(TowerRules {
            heads: Heads::Count(section.int("num_attention_heads", heads, 1..=MAX_SIZE)?),
            heads_key: section.key("num_attention_heads"),
            activation: match section.text("hidden_act", "quick_gelu")?.as_str() {
                "quick_gelu" => Activation::QuickGelu,
                "gelu" => Activation::Gelu,
                other => {
                    return Err(section.error(
                        "hidden_act",
                        format!("{other:?} is not supported (quick_gelu or gelu)"),
                    ))
                }
            },
        })
    };
    let mut files = vec![(top.file.to_path_buf(), sha)];
    let preprocessor_path = top.file.with_file_name(HF_PREPROCESSOR);
    let preprocessor = if preprocessor_path.is_file() {
        let (map, sha) = read_json(&preprocessor_path)?;
        files.push((preprocessor_path.clone(), sha));
        Some(map)
    } else {
        None
    };
    let pre = Section {
        file: &preprocessor_path,
        name: String::new(),
        map: preprocessor.as_ref(),
    };
    Ok(BackboneRules {
        vision: tower(&vision, 12)?,
        text: tower(&text, 8)?,
        normalization: Normalization {
            mean: pre.triple("image_mean", CLIP_MEAN, 0.0..=1.0)?,
            std: pre.triple("image_std", CLIP_STD, 1e-3..=10.0)?,
        },
        declared,
        source: RulesSource::Config { files },
    })
}

/// One JSON object of a config file, named by its dotted path for error messages; a missing
/// object reads as empty, so every key takes its default.
#[derive(Clone)]
struct Section<'a> {
    file: &'a Path,
    name: String,
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Section<'a> {
    fn root(file: &'a Path, map: &'a Map<String, Value>) -> Self {
        Self {
            file,
            name: String::new(),
            map: Some(map),
        }
    }

    fn key(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.name)
        }
    }

    fn error(&self, key: &str, message: impl std::fmt::Display) -> ConfigFileError {
        ConfigFileError::new(self.file, format!("{}: {message}", self.key(key)))
    }

    fn has(&self, key: &str) -> bool {
        self.value(key).is_some()
    }

    /// The value under `key`; JSON `null` counts as missing, as Python's `None` default.
    fn value(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    fn section(&self, key: &str) -> Result<Section<'a>, ConfigFileError> {
        let map = match self.value(key) {
            None => None,
            Some(Value::Object(map)) => Some(map),
            Some(_) => return Err(self.error(key, "must be an object")),
        };
        Ok(Section {
            file: self.file,
            name: self.key(key),
            map,
        })
    }

    fn int(
        &self,
        key: &str,
        default: i64,
        range: RangeInclusive<i64>,
    ) -> Result<i64, ConfigFileError> {
        let Some(value) = self.value(key) else {
            return Ok(default);
        };
        let n = value
            .as_i64()
            .ok_or_else(|| self.error(key, format!("{value} is not an integer")))?;
        if !range.contains(&n) {
            return Err(self.error(
                key,
                format!("{n} is out of range {}..={}", range.start(), range.end()),
            ));
        }
        Ok(n)
    }

    fn required_int(&self, key: &str, range: RangeInclusive<i64>) -> Result<i64, ConfigFileError> {
        if !self.has(key) {
            return Err(self.error(key, "missing"));
        }
        self.int(key, 0, range)
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, ConfigFileError> {
        match self.value(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.error(key, format!("{other} is not true or false"))),
        }
    }

    fn text(&self, key: &str, default: &str) -> Result<String, ConfigFileError> {
        match self.value(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.error(key, format!("{other} is not a string"))),
        }
    }

    /// An image side given as `n` or `[n, n]`; non-square inputs are refused.
    fn square_side(&self, key: &str, default: i64) -> Result<i64, ConfigFileError> {
        if let Some(Value::Array(pair)) = self.value(key) {
            let sides: Vec<_> = pair.iter().filter_map(Value::as_i64).collect();
            return match sides[..] {
                [h, w] if h == w && pair.len() == 2 && (1..=MAX_SIZE).contains(&h) => Ok(h),
                _ => Err(self.error(key, "must be a side or a square [side, side]")),
            };
        }
        self.int(key, default, 1..=MAX_SIZE)
    }

    /// Three per-channel numbers, or one for all three (as Hugging Face allows).
    fn triple(
        &self,
        key: &str,
        default: [f32; 3],
        range: RangeInclusive<f64>,
    ) -> Result<[f32; 3], ConfigFileError> {
        let values: Vec<Option<f64>> = match self.value(key) {
            None => return Ok(default),
            Some(Value::Array(items)) => items.iter().map(Value::as_f64).collect(),
            Some(v) => vec![v.as_f64(); 3],
        };
        match values[..] {
            [Some(r), Some(g), Some(b)] => {
                if let Some(bad) = [r, g, b].into_iter().find(|x| !range.contains(x)) {
                    return Err(self.error(
                        key,
                        format!("{bad} is out of range {}..={}", range.start(), range.end()),
                    ));
                }
                Ok([r as f32, g as f32, b as f32])
            }
            _ => Err(self.error(key, "must be three numbers (R, G, B) or one")),
        }
    }

    /// Refuses an option the spec does not cover unless it has its default value.
    fn refuse_unless(
        &self,
        key: &str,
        is_default: fn(&Value) -> bool,
    ) -> Result<(), ConfigFileError> {
        match self.value(key) {
            Some(value) if !is_default(value) => Err(self.error(
                key,
                format!("{value} asks for an architecture option this engine does not support"),
            )),
            _ => Ok(()),
        }
    }
}
