//! `waypost get ID`: one instance.

use super::common::{self, bounded, cell};
use crate::output::Table;
use crate::{CliResult, Context, Exit};

/// The arguments of `waypost get`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The table has KEY/VALUE rows: every ServiceInfo field, then `tags` and \
                        one `meta.<key>` row per metadata entry. With -o json: the instance in \
                        waypost's Go-compatible ServiceInfo JSON, on one line. An unknown ID \
                        exits with 3."
)]
pub struct Args {
    /// The instance id.
    #[arg(value_name = "ID")]
    pub id: String,
}

/// Runs `waypost get`.
///
/// # Errors
/// NotFound (3) for an unknown id; see [`Exit`] for the others.
pub async fn run(ctx: &Context, args: Args) -> CliResult {
    let registry = ctx.open_registry().await?;
    let found = bounded(
        &format!("getting `{}`", cell(&args.id)),
        ctx.timeout,
        registry.get_service(&args.id),
    )
    .await;
    common::close(&registry, ctx.timeout).await;
    let info = found?;
    let p = &ctx.printer;
    if p.json() {
        p.line(&common::instance_json(&info));
        return Ok(Exit::Ok);
    }
    let time = |t: &waypost::Timestamp| {
        if t.is_zero() {
            "-".to_owned()
        } else {
            t.to_go_string()
        }
    };
    let mut table = Table::new(["KEY", "VALUE"]);
    table.row(["id".to_owned(), cell(&info.id)]);
    table.row(["name".to_owned(), cell(&info.name)]);
    table.row(["version".to_owned(), cell(&info.version)]);
    table.row(["address".to_owned(), cell(&info.address)]);
    table.row(["port".to_owned(), info.port.to_string()]);
    table.row(["protocol".to_owned(), info.protocol.as_str().to_owned()]);
    table.row(["health".to_owned(), common::health(p, info.health)]);
    table.row(["weight".to_owned(), info.weight.to_string()]);
    table.row(["ttl".to_owned(), common::ttl(info.ttl)]);
    table.row(["age".to_owned(), common::age(&info)]);
    table.row(["created_at".to_owned(), time(&info.created_at)]);
    table.row(["updated_at".to_owned(), time(&info.updated_at)]);
    table.row(["last_check".to_owned(), time(&info.last_check)]);
    table.row(["tags".to_owned(), cell(&info.tags.join(","))]);
    for (key, value) in info.metadata.iter() {
        table.row([format!("meta.{}", cell(key)), cell(value)]);
    }
    p.text(&table.render());
    Ok(Exit::Ok)
}
