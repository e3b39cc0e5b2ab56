//! `waypost get`.

use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost get`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `waypost get`.
///
/// # Errors
/// See [`Exit`].
pub async fn run(_ctx: &Context, _args: Args) -> CliResult {
    Err(CliError::new(Exit::Failure, "`get` is being built"))
}
