//! `promptmill completions SHELL`: shell completions for the whole command line.

use clap::Args;
use clap_complete::Shell;

use super::exit;

/// `promptmill completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Prints the completion script of `cli` (the whole command line) for the shell on stdout.
pub fn run(args: CompletionsArgs, cli: &mut clap::Command) -> u8 {
    let name = cli.get_name().to_string();
    clap_complete::generate(args.shell, cli, name, &mut std::io::stdout());
    exit::OK
}
