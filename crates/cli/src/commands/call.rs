//! `waypost call`.

use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost call`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `waypost call`.
///
/// # Errors
/// See [`Exit`].
pub async fn run(_ctx: &Context, _args: Args) -> CliResult {
    Err(CliError::new(Exit::Failure, "`call` is being built"))
}
