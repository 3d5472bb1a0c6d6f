//! Files headclip reads through a path: learned parameters with their `headclip.config`,
//! training states, CLIP checkpoints as safetensors, and the OpenCLIP and Hugging Face configs
//! beside them. Seeds are the fixture models' files (and a training state written from the tiny
//! one); each input is read by the public loader.

use std::path::Path;

use anyhow::Context as _;
use fastrand::Rng;
use headclip::clip::{load_state_dict, read_rules, Clip, ClipConfig, StateDict};
use headclip::model::{HeadClipConfig, HeadClipParams};
use headclip::train::{TrainOptions, Trainer};
use tch::Device;

use super::{error_kind, Context, Input, Outcome, Seed, Target};
use crate::mutate;

type Mutation = fn(&mut Rng, &mut Vec<u8>, &[u8]);
type Loader = Box<dyn FnMut(&Path) -> Result<(), String>>;

/// A file read by path: seeds, a mutation and the loader under test.
pub struct FileTarget {
    name: &'static str,
    seeds: Vec<Seed>,
    mutation: Mutation,
    load: Loader,
}

impl FileTarget {
    pub fn new(name: &'static str, seeds: Vec<Seed>, mutation: Mutation, load: Loader) -> Self {
        Self {
            name,
            seeds,
            mutation,
            load,
        }
    }
}

impl Target for FileTarget {
    fn name(&self) -> &'static str {
        self.name
    }

    fn seeds(&self) -> &[Seed] {
        &self.seeds
    }

    fn mutate(&self, rng: &mut Rng, input: &mut Vec<u8>, partner: &[u8]) {
        (self.mutation)(rng, input, partner);
    }

    fn run(&mut self, input: &Input) -> Outcome {
        match (self.load)(input.path) {
            Ok(()) => Outcome::Accepted,
            Err(message) => Outcome::Refused(error_kind(&message)),
        }
    }

    fn allocates_natively(&self) -> bool {
        true
    }
}

/// Mostly structure-aware edits of a safetensors file; a fifth format-blind.
fn safetensors_mutation(rng: &mut Rng, input: &mut Vec<u8>, partner: &[u8]) {
    if rng.u32(0..5) == 0 {
        mutate::bytes(rng, input, partner);
    } else {
        mutate::safetensors::mutate(rng, input, partner);
    }
}

/// `HeadClipParams::load` against the tiny CLIP, seeded with the fixture's four variants.
pub fn params_target(ctx: &Context) -> anyhow::Result<Box<dyn Target>> {
    let clip = tiny_clip_config(ctx)?;
    let seeds = fixture_seeds(
        ctx,
        &[
            "params_learned",
            "params_dynamic",
            "params_both",
            "params_identity",
        ],
    )?;
    let load = move |path: &Path| {
        HeadClipParams::load(path, &clip)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    Ok(Box::new(FileTarget::new(
        "params",
        seeds,
        safetensors_mutation,
        Box::new(load),
    )))
}

/// `Trainer::resume` with the tiny CLIP, seeded with fresh states (static and dynamic head
/// weights) written by `Trainer::save_state`.
pub fn state_target(ctx: &Context) -> anyhow::Result<Box<dyn Target>> {
    let clip = tiny_clip(ctx)?;
    let mut seeds = Vec::new();
    for dynamic in [false, true] {
        let config = HeadClipConfig {
            lhw_dynamic: dynamic,
            ..HeadClipConfig::default()
        };
        let options = TrainOptions {
            epochs: 2,
            batch_size: 2,
            ..TrainOptions::default()
        };
        let trainer = Trainer::new(&clip, config, options, 2)?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.safetensors");
        trainer.save_state(&path)?;
        seeds.push(Seed {
            name: format!("state_dynamic_{dynamic}"),
            bytes: std::fs::read(&path)?,
        });
    }
    let load = move |path: &Path| {
        Trainer::resume(&clip, path)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    Ok(Box::new(FileTarget::new(
        "state",
        seeds,
        safetensors_mutation,
        Box::new(load),
    )))
}

/// `load_state_dict` then `Clip::from_state_dict`: OpenAI and Hugging Face key layouts.
pub fn checkpoint_target(ctx: &Context) -> anyhow::Result<Box<dyn Target>> {
    let seeds = fixture_seeds(ctx, &["clip_openai", "clip_hf"])?;
    let load = |path: &Path| {
        let state = load_state_dict(path).map_err(|e| e.to_string())?;
        Clip::from_state_dict(&state, Device::Cpu)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    Ok(Box::new(FileTarget::new(
        "checkpoint",
        seeds,
        safetensors_mutation,
        Box::new(load),
    )))
}

/// The config-carrying fixtures: their folder, and the config file's name in it.
const CONFIG_FIXTURES: [(&str, &str); 3] = [
    ("openclip_gelu_hw80", "open_clip_config.json"),
    ("openclip_quickgelu", "open_clip_config.json"),
    ("hf_gelu", "config.json"),
];

/// `read_rules`, then the rules checked against each config fixture's tensors
/// (`ClipConfig::infer_with`): accepted when some checkpoint fits them.
pub fn clip_config_target(ctx: &Context) -> anyhow::Result<Box<dyn Target>> {
    let fixtures = ctx.tiny.parent().context("the fixtures folder")?;
    let mut seeds = Vec::new();
    let mut states: Vec<StateDict> = Vec::new();
    for (folder, config) in CONFIG_FIXTURES {
        let dir = fixtures.join(folder);
        let path = dir.join(config);
        let bytes = std::fs::read(&path).with_context(|| format!("seed {}", path.display()))?;
        seeds.push(Seed {
            name: format!("{folder}/{config}"),
            bytes,
        });
        let weights = headclip::clip::find_checkpoint(&dir)?;
        states.push(load_state_dict(&weights)?);
    }
    let load = move |path: &Path| {
        let rules = read_rules(path).map_err(|e| e.to_string())?;
        let mut last_refusal = None;
        for state in &states {
            match ClipConfig::infer_with(state, &rules) {
                Ok(_) => return Ok(()),
                Err(e) => last_refusal = Some(e.to_string()),
            }
        }
        Err(last_refusal.unwrap_or_default())
    };
    Ok(Box::new(FileTarget::new(
        "clip_config",
        seeds,
        json_mutation,
        Box::new(load),
    )))
}

/// Mostly value-level edits of a JSON document that stays valid; a fifth format-blind (and
/// every input that no longer parses).
fn json_mutation(rng: &mut Rng, input: &mut Vec<u8>, partner: &[u8]) {
    let parsed = serde_json::from_slice::<serde_json::Value>(input);
    match parsed {
        Ok(mut doc) if rng.u32(0..5) != 0 => {
            mutate::json::mutate(rng, &mut doc);
            *input = serde_json::to_vec(&doc).unwrap_or_default();
        }
        _ => mutate::bytes(rng, input, partner),
    }
}

fn fixture_seeds(ctx: &Context, stems: &[&str]) -> anyhow::Result<Vec<Seed>> {
    stems
        .iter()
        .map(|stem| {
            let path = ctx.tiny.join(format!("{stem}.safetensors"));
            let bytes = std::fs::read(&path).with_context(|| format!("seed {}", path.display()))?;
            Ok(Seed {
                name: format!("{stem}.safetensors"),
                bytes,
            })
        })
        .collect()
}

fn tiny_clip(ctx: &Context) -> anyhow::Result<Clip> {
    let state = load_state_dict(&ctx.tiny.join("clip_openai.safetensors"))?;
    Ok(Clip::from_state_dict(&state, Device::Cpu)?)
}

fn tiny_clip_config(ctx: &Context) -> anyhow::Result<ClipConfig> {
    let state = load_state_dict(&ctx.tiny.join("clip_openai.safetensors"))?;
    Ok(ClipConfig::infer(&state)?)
}
