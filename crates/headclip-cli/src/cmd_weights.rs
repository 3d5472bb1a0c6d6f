//! `headclip weights …`: list, download and check the official OpenAI CLIP checkpoints.
//!
//! - `headclip weights fetch <NAME> [--base-url URL] [--cache DIR]`: downloads into the cache
//!   (verified by sha256), a progress bar on stderr, the final path on stdout.
//! - `headclip weights list [--cache DIR] [--verify]`: names, files, sha256, cached or not; then
//!   the kinds of checkpoint supported and the config each needs.
//! - `headclip weights verify <PATH>`: prints the file's sha256 and whether it is an official
//!   checkpoint; fails when the file has an official name but not the official content.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use headclip::weights::{self, FetchOptions, Official};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args, Debug)]
#[command(about = "Download and check the official OpenAI CLIP checkpoints")]
pub struct WeightsArgs {
    #[command(subcommand)]
    pub command: WeightsCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum WeightsCommand {
    /// Download an official checkpoint into the cache, check its sha256, print its path.
    ///
    /// A file already in the cache with the right checksum is used without network access.
    Fetch {
        /// ViT-L-14-336, ViT-L-14, ViT-B-16 or ViT-B-32 (a file name such as ViT-B-16.pt or
        /// OpenAI's ViT-B/16 also works).
        name: String,
        /// Download from this base URL instead of OpenAI's (laid out as BASE/SHA256/FILE).
        #[arg(long, value_name = "URL", env = weights::ENV_BASE_URL)]
        base_url: Option<String>,
        /// Cache folder [default: the user cache folder + headclip, ~/.cache/headclip on Linux].
        #[arg(long, value_name = "DIR", env = weights::ENV_CACHE)]
        cache: Option<PathBuf>,
    },
    /// List the official checkpoints and whether they are in the cache, and the kinds of
    /// checkpoint supported with the config each needs.
    List {
        /// Cache folder [default: the user cache folder + headclip, ~/.cache/headclip on Linux].
        #[arg(long, value_name = "DIR", env = weights::ENV_CACHE)]
        cache: Option<PathBuf>,
        /// Also check the sha256 of the cached files (reads them all).
        #[arg(long)]
        verify: bool,
    },
    /// Print a file's sha256 and whether it matches an official checkpoint.
    Verify {
        /// The checkpoint file.
        path: PathBuf,
    },
    /// Write a RANDOM-weight CLIP with a released model's shapes, for tests and benchmarks only.
    ///
    /// The file is marked as random in its metadata and every command that loads it says so.
    Random {
        /// Shapes: ViT-L-14-336, ViT-L-14, ViT-B-16, ViT-B-32 or tiny.
        shape: String,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the engine's own generator: a seed gives the same bits on every CPU.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

pub fn run(args: WeightsArgs) -> Result<()> {
    match args.command {
        WeightsCommand::Fetch {
            name,
            base_url,
            cache,
        } => fetch(&name, non_empty(base_url), cache),
        WeightsCommand::List { cache, verify } => list(cache.as_deref(), verify),
        WeightsCommand::Verify { path } => verify(&path),
        WeightsCommand::Random { shape, out, seed } => random(&shape, &out, seed),
    }
}

fn random(shape: &str, out: &Path, seed: u64) -> Result<()> {
    use headclip::clip::{random_clip_safetensors, RANDOM_SHAPES};
    let Some(shape) = RANDOM_SHAPES
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(shape))
    else {
        let names: Vec<_> = RANDOM_SHAPES.iter().map(|s| s.name).collect();
        anyhow::bail!("unknown shape {shape:?}; one of {}", names.join(", "));
    };
    let bytes = random_clip_safetensors(shape, seed)?;
    headclip::write_atomically(out, &bytes)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote RANDOM {} weights (seed {seed}) to {}: for tests and benchmarks only",
        shape.name,
        out.display()
    );
    println!("{}", out.display());
    Ok(())
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

fn fetch(name: &str, base_url: Option<String>, cache: Option<PathBuf>) -> Result<()> {
    let official = weights::lookup(name)?;
    let url = official.url_with_base(&weights::base_url(base_url.as_deref()));

    let bar = ProgressBar::no_length();
    let mut started = false;
    let path = {
        let bar = bar.clone();
        let mut options = FetchOptions::new().progress(|done, total| {
            if !started {
                started = true;
                eprintln!("downloading {url}");
                match total {
                    Some(total) => {
                        bar.set_length(total);
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                            )
                            .expect("valid template")
                            .progress_chars("=> "),
                        );
                    }
                    None => bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                            .expect("valid template"),
                    ),
                }
                bar.set_message(official.file_name);
            }
            bar.set_position(done);
        });
        if let Some(base) = &base_url {
            options = options.base_url(base.clone());
        }
        if let Some(dir) = &cache {
            options = options.cache_dir(dir.clone());
        }
        weights::fetch(official.name, options)
    };
    bar.finish_and_clear();
    let path = path?;
    if !started {
        eprintln!(
            "{} is already in the cache (sha256 verified)",
            official.file_name
        );
    } else {
        eprintln!("{}: sha256 verified", official.file_name);
    }
    println!("{}", path.display());
    Ok(())
}

fn list(cache: Option<&Path>, verify: bool) -> Result<()> {
    let dir = weights::cache_dir(cache);
    match &dir {
        Ok(d) => println!("cache: {}", d.display()),
        Err(e) => println!("cache: none ({e})"),
    }
    println!("{:<14} {:<19} {:<64} CACHED", "NAME", "FILE", "SHA256");
    for official in weights::OFFICIAL {
        let state = match &dir {
            Ok(d) => cached_state(official, &d.join(official.file_name), verify),
            Err(_) => "-".to_string(),
        };
        println!(
            "{:<14} {:<19} {:<64} {}",
            official.name, official.file_name, official.sha256, state
        );
    }
    println!();
    print_supported();
    Ok(())
}

/// A kind of checkpoint the engine computes correctly, with the files it comes as and the
/// config that says what its shapes do not.
struct Supported {
    kind: &'static str,
    files: &'static str,
    config: &'static str,
}

const SUPPORTED: &[Supported] = &[
    Supported {
        kind: "OpenAI ViT-L-14-336, ViT-L-14, ViT-B-16, ViT-B-32",
        files: "the .pt above, or its state dict as safetensors",
        config: "none: OpenAI's rules (64-wide heads, QuickGELU), said in the log",
    },
    Supported {
        kind: "OpenCLIP ViT-H-14 (LAION)",
        files: "folder with open_clip_model.safetensors",
        config: "open_clip_config.json beside it (vision head_width 80, exact GELU)",
    },
    Supported {
        kind: "OpenCLIP ViT-L-14 (LAION)",
        files: "folder with open_clip_model.safetensors",
        config: "open_clip_config.json beside it (exact GELU)",
    },
    Supported {
        kind: "Hugging Face CLIP (transformers CLIPModel)",
        files: "folder with model.safetensors",
        config: "config.json beside it (hidden_act, num_attention_heads); \
                 preprocessor_config.json for mean and std",
    },
];

fn print_supported() {
    println!(
        "SUPPORTED CHECKPOINTS (architecture from the tensor shapes, the rest from the config)"
    );
    for s in SUPPORTED {
        println!(
            "  {}\n    files:  {}\n    config: {}",
            s.kind, s.files, s.config
        );
    }
    println!(
        "  Any config can also be given with --clip-config PATH. Configs are supported as \
         tested on small random-weight replicas with the same configs (OpenCLIP head width 80 \
         with GELU, OpenCLIP quick_gelu, Hugging Face gelu) against open_clip and transformers; \
         the real LAION and Hugging Face weights are not downloaded in the tests."
    );
}

fn cached_state(official: &Official, path: &Path, verify: bool) -> String {
    if !path.is_file() {
        return "no".to_string();
    }
    if !verify {
        return "yes".to_string();
    }
    match weights::sha256_file(path) {
        Ok(sha) if sha == official.sha256 => "yes, sha256 verified".to_string(),
        Ok(_) => format!(
            "CORRUPT (wrong sha256; run `headclip weights fetch {}`)",
            official.name
        ),
        Err(e) => format!("unreadable ({e})"),
    }
}

fn verify(path: &Path) -> Result<()> {
    let sha = weights::sha256_file(path)?;
    println!("{sha}  {}", path.display());
    match weights::check_official_sha256(path, &sha)
        .with_context(|| format!("{} does not match its official checksum", path.display()))?
    {
        Some(official) => println!(
            "matches the official {} ({})",
            official.name, official.file_name
        ),
        None => match weights::official_by_sha256(&sha) {
            Some(official) => println!(
                "matches the official {} ({}) under another file name",
                official.name, official.file_name
            ),
            None => println!("not an official OpenAI CLIP checkpoint (other files are allowed)"),
        },
    }
    Ok(())
}
