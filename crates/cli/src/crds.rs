//! `devheal crds`: print devheal's CustomResourceDefinitions as YAML (what `deploy/crds/` holds).

use std::io::Write;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CrdsArgs {}

pub fn run(_args: CrdsArgs) -> anyhow::Result<ExitCode> {
    let yaml = devheal_k8s::crd::crds_yaml()?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
