//! `waypost deregister`.

use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost deregister`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `waypost deregister`.
///
/// # Errors
/// See [`Exit`].
pub async fn run(_ctx: &Context, _args: Args) -> CliResult {
    Err(CliError::new(Exit::Failure, "`deregister` is being built"))
}
