//! `devheal classify-log` (being written).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ClassifyLogArgs {}

pub fn run(_args: ClassifyLogArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
