//! `waypost watch [SERVICE]`: the registry's events, one line each, until Ctrl-C or SIGTERM.

use futures_util::StreamExt;
use waypost::{ServiceEventType, ServiceInfo, SnapshotReason, Timestamp, WatchEvent};

use super::common::{self, bounded, cell, json_object, json_str, Shutdown};
use crate::output::Printer;
use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost watch`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Each line: TIME TYPE SERVICE ID ADDRESS:PORT HEALTH, TYPE one of \
                        CREATED, UPDATED, DELETED. The stream starts with a snapshot of what is \
                        registered, and a new snapshot replaces it whenever events may have \
                        been missed (the watcher fell behind, the registry reconnected): a line \
                        `TIME SNAPSHOT (reason: initial|lagged|reconnected) N instances`, then \
                        one `TIME INSTANCE …` line per instance.\n\
                        With -o json: one object per event, {\"time\",\"type\":\"created\"|\
                        \"updated\"|\"deleted\",\"service\",\"id\",\"address\",\"port\",\
                        \"health\",\"instance\"}, or {\"time\",\"type\":\"snapshot\",\"reason\",\
                        \"count\",\"instances\":[…]}. Each line is flushed as it is written.\n\
                        Ctrl-C or SIGTERM ends it with 0, and so does its reader going away \
                        (`waypost watch | head -5` ends at the first event it cannot write); \
                        the stream ending on the registry's side is an error (exit 4)."
)]
pub struct Args {
    /// Watch only this service.
    #[arg(value_name = "SERVICE")]
    pub service: Option<String>,
}

fn reason_str(reason: SnapshotReason) -> &'static str {
    match reason {
        SnapshotReason::Initial => "initial",
        SnapshotReason::Lagged => "lagged",
        SnapshotReason::Reconnected => "reconnected",
        _ => "resync",
    }
}

fn kind_str(kind: ServiceEventType) -> &'static str {
    match kind {
        ServiceEventType::Created => "CREATED",
        ServiceEventType::Updated => "UPDATED",
        ServiceEventType::Deleted => "DELETED",
    }
}

/// Runs `waypost watch`.
///
/// # Errors
/// Unavailable (4) when the watch cannot start or the registry ends it; see [`Exit`].
pub async fn run(ctx: &Context, args: Args) -> CliResult {
    let mut shutdown = Shutdown::install()?;
    let registry = tokio::select! {
        r = ctx.open_registry() => r?,
        _ = shutdown.recv() => return Ok(Exit::Ok),
    };
    let started = match &args.service {
        Some(name) => {
            bounded(
                &format!("watching `{}`", cell(name)),
                ctx.timeout,
                registry.watch_service(name),
            )
            .await
        }
        None => bounded("watching", ctx.timeout, registry.watch()).await,
    };
    let mut stream = match started {
        Ok(s) => s,
        Err(e) => {
            common::close(&registry, ctx.timeout).await;
            return Err(e);
        }
    };
    let p = ctx.printer;
    let outcome = loop {
        tokio::select! {
            _ = shutdown.recv() => break Ok(Exit::Ok),
            event = stream.next() => {
                let written = match event {
                    Some(WatchEvent::Snapshot { mut services, reason }) => {
                        services.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
                        snapshot(&p, reason, &services)
                    }
                    Some(WatchEvent::Change(change)) => {
                        change_line(&p, kind_str(change.kind), &change.service)
                    }
                    Some(_) => Ok(()),
                    None => break Err(CliError::new(
                        Exit::Unavailable,
                        "watching: the registry ended the stream (closed or lost)",
                    )),
                };
                match written {
                    Ok(()) => {}
                    // The reader has gone (`| head`): done, as it would be on Ctrl-C.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break Ok(Exit::Ok),
                    Err(e) => break Err(CliError::new(Exit::Failure, format!("writing: {e}"))),
                }
            }
        }
    };
    drop(stream);
    common::close(&registry, ctx.timeout).await;
    outcome
}

fn now() -> String {
    Timestamp::now().to_go_string()
}

fn snapshot(p: &Printer, reason: SnapshotReason, services: &[ServiceInfo]) -> std::io::Result<()> {
    let time = now();
    if p.json() {
        let instances: Vec<String> = services.iter().map(common::instance_json).collect();
        return p.try_line(&json_object(&[
            ("time", json_str(&time)),
            ("type", json_str("snapshot")),
            ("reason", json_str(reason_str(reason))),
            ("count", services.len().to_string()),
            ("instances", format!("[{}]", instances.join(","))),
        ]));
    }
    let mut text = format!(
        "{time}  SNAPSHOT (reason: {}) {} instance{}",
        reason_str(reason),
        services.len(),
        if services.len() == 1 { "" } else { "s" }
    );
    for info in services {
        text.push('\n');
        text.push_str(&row(p, &time, "INSTANCE", info));
    }
    p.try_line(&text)
}

fn row(p: &Printer, time: &str, kind: &str, info: &ServiceInfo) -> String {
    format!(
        "{time}  {kind:<8}  {}  {}  {}  {}",
        cell(&info.name),
        cell(&info.id),
        common::endpoint(info),
        common::health(p, info.health)
    )
}

fn change_line(p: &Printer, kind: &str, info: &ServiceInfo) -> std::io::Result<()> {
    let time = now();
    if p.json() {
        p.try_line(&json_object(&[
            ("time", json_str(&time)),
            ("type", json_str(&kind.to_ascii_lowercase())),
            ("service", json_str(&info.name)),
            ("id", json_str(&info.id)),
            ("address", json_str(&info.address)),
            ("port", info.port.to_string()),
            ("health", json_str(info.health.as_str())),
            ("instance", common::instance_json(info)),
        ]))
    } else {
        p.try_line(&row(p, &time, kind, info))
    }
}
