//! `waypost man`.

use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost man`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `waypost man`.
///
/// # Errors
/// See [`Exit`].
pub fn run(_ctx: &Context, _args: Args) -> CliResult {
    Err(CliError::new(Exit::Failure, "`man` is being built"))
}
