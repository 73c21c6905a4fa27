//! `devheal completion SHELL`: prints a completion script for bash, zsh, fish, PowerShell or
//! elvish, generated from the same argument definitions the binary parses with.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap_complete::Shell;

#[derive(clap::Args)]
#[command(after_help = "\
Install, for example:
  bash:  devheal completion bash > /etc/bash_completion.d/devheal
  zsh:   devheal completion zsh > \"${fpath[1]}/_devheal\"
  fish:  devheal completion fish > ~/.config/fish/completions/devheal.fish")]
pub struct CompletionArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Writes the script for `args.shell` describing `command` to standard output.
pub fn run(args: CompletionArgs, mut command: clap::Command) -> anyhow::Result<ExitCode> {
    // Generated into memory first: clap_complete panics when its writer fails, and a closed
    // pipe or a full disk is the caller's business, not a crash.
    let mut script = Vec::new();
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    let mut stdout = io::stdout().lock();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to standard output")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}
