//! `waypost deregister ID`.

use super::common::{self, bounded, cell};
use crate::{CliResult, Context, Exit};

/// The arguments of `waypost deregister`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Removes the instance from the registry at once. An unknown ID exits \
                        with 3. Nacos lets only the connection that registered an ephemeral \
                        instance remove it: there, another client's instance is refused (exit \
                        1) and goes when its owner stops."
)]
pub struct Args {
    /// The instance id.
    #[arg(value_name = "ID")]
    pub id: String,
}

/// Runs `waypost deregister`.
///
/// # Errors
/// NotFound (3) for an unknown id; see [`Exit`] for the others.
pub async fn run(ctx: &Context, args: Args) -> CliResult {
    let registry = ctx.open_registry().await?;
    let done = bounded(
        &format!("deregistering `{}`", cell(&args.id)),
        ctx.timeout,
        registry.deregister(&args.id),
    )
    .await;
    common::close(&registry, ctx.timeout).await;
    done?;
    let p = &ctx.printer;
    if p.json() {
        p.json_line(&serde_json::json!({ "deregistered": args.id }));
    } else {
        p.line(&format!("deregistered {}", cell(&args.id)));
    }
    Ok(Exit::Ok)
}
