//! `waypost sync`: continuous, watch-driven mirroring of services from one registry to another.

use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost sync`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `waypost sync` until Ctrl-C or SIGTERM.
///
/// # Errors
/// See [`Exit`].
pub async fn run(_ctx: &Context, _args: Args) -> CliResult {
    Err(CliError::new(Exit::Failure, "`sync` is being built"))
}
