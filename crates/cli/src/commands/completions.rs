//! `waypost completions`.

use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost completions`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `waypost completions`.
///
/// # Errors
/// See [`Exit`].
pub fn run(_ctx: &Context, _args: Args) -> CliResult {
    Err(CliError::new(Exit::Failure, "`completions` is being built"))
}
