//! `headclip serve` (in progress).

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct ServeArgs {}

pub fn run(_args: ServeArgs) -> Result<i32> {
    anyhow::bail!("not implemented yet")
}
