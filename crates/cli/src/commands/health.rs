//! `waypost health`.

use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost health`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `waypost health`.
///
/// # Errors
/// See [`Exit`].
pub async fn run(_ctx: &Context, _args: Args) -> CliResult {
    Err(CliError::new(Exit::Failure, "`health` is being built"))
}
