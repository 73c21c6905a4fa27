//! `devheal config`: the controller's settings file. `--print-defaults` prints the whole file,
//! every key with its default and meaning; `--check FILE` reads a file as the controller would
//! (with `--set` overrides) and says whether it can be used.

use std::path::PathBuf;
use std::process::ExitCode;

use devheal_controller::Settings;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["print_defaults", "check"])))]
pub struct ConfigArgs {
    /// Print the whole settings file: every key, its default and what it means.
    #[arg(long)]
    print_defaults: bool,
    /// Check a settings file as `devheal controller --settings FILE` would read it.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// Overrides to check with the file (`safety.maxEvictionsPerMinute=10`), as the controller's
    /// `--set` takes them.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "check")]
    overrides: Vec<String>,
}

pub fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    if args.print_defaults {
        print!("{}", Settings::default().to_commented_yaml());
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &args.check {
        let settings = Settings::load(Some(path), &args.overrides)?;
        let changed = devheal_controller::settings::FIELDS
            .iter()
            .filter(|f| f.value(&settings) != f.value(&Settings::default()))
            .map(|f| f.key)
            .collect::<Vec<_>>();
        if changed.is_empty() {
            println!("{}: valid; every setting is its default", path.display());
        } else {
            println!("{}: valid; differs from the defaults in {}", path.display(), changed.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
