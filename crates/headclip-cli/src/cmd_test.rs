//! `headclip test` (in progress).

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct TestArgs {}

pub fn run(_args: TestArgs) -> Result<i32> {
    anyhow::bail!("not implemented yet")
}
