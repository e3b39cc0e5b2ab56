//! `waypost ls`.

use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost ls`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `waypost ls`.
///
/// # Errors
/// See [`Exit`].
pub async fn run(_ctx: &Context, _args: Args) -> CliResult {
    Err(CliError::new(Exit::Failure, "`ls` is being built"))
}
