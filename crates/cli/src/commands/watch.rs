//! `waypost watch`.

use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost watch`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `waypost watch`.
///
/// # Errors
/// See [`Exit`].
pub async fn run(_ctx: &Context, _args: Args) -> CliResult {
    Err(CliError::new(Exit::Failure, "`watch` is being built"))
}
