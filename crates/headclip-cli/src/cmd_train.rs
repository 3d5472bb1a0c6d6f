//! `headclip train` (in progress).

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct TrainArgs {}

pub fn run(_args: TrainArgs) -> Result<i32> {
    anyhow::bail!("not implemented yet")
}
