//! `waypost register`.

use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost register`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `waypost register`.
///
/// # Errors
/// See [`Exit`].
pub async fn run(_ctx: &Context, _args: Args) -> CliResult {
    Err(CliError::new(Exit::Failure, "`register` is being built"))
}
