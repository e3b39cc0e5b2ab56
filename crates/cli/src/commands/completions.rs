//! `waypost completions SHELL`: a shell completion script, generated from the command line's
//! definition.

use clap_complete::Shell;

use crate::{CliResult, Context, Exit};

/// The arguments of `waypost completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Install, for example:\n  \
                        bash: waypost completions bash > ~/.local/share/bash-completion/completions/waypost\n  \
                        zsh:  waypost completions zsh > \"${fpath[1]}/_waypost\"\n  \
                        fish: waypost completions fish > ~/.config/fish/completions/waypost.fish")]
pub struct Args {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_name = "SHELL", value_enum)]
    pub shell: Shell,
}

/// Runs `waypost completions`: prints the script on stdout.
///
/// # Errors
/// None in practice (a closed stdout is ignored).
pub fn run(_ctx: &Context, args: Args) -> CliResult {
    let mut cmd = crate::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "waypost", &mut out);
    crate::output::write_stdout(&out);
    Ok(Exit::Ok)
}
