//! `headclip bench` (in progress).

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> Result<i32> {
    anyhow::bail!("not implemented yet")
}
