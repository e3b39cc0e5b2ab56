//! `waypost sync`: continuous, watch-driven mirroring of services from one registry to another.
//!
//! ```text
//! waypost sync SRC_URL DST_URL [--service NAME]… [--prefix-map FROM=TO]… [--ttl 15s]
//!              [--status-every 10s] [--metrics-addr ADDR] [--concurrency 64]
//! ```
//!
//! - **Start**: both registries are opened (within `--timeout`), the source's watch is started
//!   (`watch()`, or `watch_service()` per `--service`), the target is listed, and the target is
//!   reconciled with the source's first snapshot: missing mirrors are registered, changed ones
//!   rewritten, and mirrors of this source that the source no longer has are deregistered.
//!   Mirrors an earlier syncer left are registered again, so that they live on this syncer's
//!   lease or session; ids stay the same, so a restart makes no duplicates.
//! - **Then** every change of the watch is applied, and every later snapshot (the source
//!   reconnected, lost history, or the syncer fell behind) reconciles again, with its reason
//!   logged.
//! - **Desired state, not a queue** ([`state`]): the syncer keeps the mirror each id should have
//!   and what the target holds, and sends the one write that makes them equal, at most
//!   `--concurrency` at once. Failed writes are retried with capped backoff (100 ms doubling to
//!   5 s) with the newest state, so nothing is lost while the target is down, and the target
//!   registry puts back what it registered after its own outage.
//! - **Origin marks** ([`origin`]): mirrors carry `waypost.sync.origin`, `waypost.sync.source`
//!   and `waypost.sync.hash` in metadata. A syncer never mirrors an instance whose origin (or
//!   source) is its own target, so syncers in opposite directions do not loop; it only updates
//!   and removes target instances whose `source` is its source; instances nobody mirrored are
//!   never touched, and a source instance whose id a foreign target instance already uses is
//!   skipped with a warning.
//! - **Liveness**: mirrors are registered through the target's normal liveness with
//!   `ttl = --ttl`, so they expire on the target when the syncer dies. On Ctrl-C or SIGTERM the
//!   target registry is closed, which deregisters them, and the command exits 0.
//! - **Limits of targets**: an instance the target cannot store (invalid for it, or a second
//!   id at one address and port of a service on Nacos, which keeps one instance per endpoint)
//!   is logged and skipped until it changes.
//! - **Lag** ([`metrics`]): from the receipt of a source change to the end of its write on the
//!   target, in `waypost_sync_lag_seconds`; `waypost_sync_pending`,
//!   `waypost_sync_writes_total{op,outcome}` and `waypost_sync_resyncs_total{reason}` next to
//!   it; a status line every `--status-every`.

use std::sync::Arc;

use waypost::{RegistryConfig, ServiceRegistry};

use crate::commands::common::Shutdown;
use crate::error::{CliError, CliResult, Exit};
use crate::Context;

mod args;
mod engine;
pub mod exporter;
pub mod log;
pub mod metrics;
pub mod origin;
pub mod state;

pub use args::{Args, Options, PrefixMap, PrefixRule};

/// Runs `waypost sync` until Ctrl-C or SIGTERM.
///
/// # Errors
/// Usage (exit 2) for bad arguments or URLs; Unavailable (exit 4) when a registry cannot be
/// reached at start; Failure (exit 1) when a registry closes under the syncer.
pub async fn run(ctx: &Context, args: Args) -> CliResult {
    let Args {
        source: source_url,
        target: target_url,
        options,
    } = args;
    let args = *options;
    args.check()?;
    let source_config = parse("SRC_URL", &source_url)?;
    let target_config = parse("DST_URL", &target_url)?;
    let marks = origin::Marks {
        source_id: args
            .source_id
            .clone()
            .unwrap_or_else(|| origin::identity(&source_config)),
        target_id: args
            .target_id
            .clone()
            .unwrap_or_else(|| origin::identity(&target_config)),
        prefix_map: PrefixMap::new(args.prefix_map.clone()),
        ttl: args.ttl,
    };
    if marks.source_id == marks.target_id {
        return Err(CliError::usage(format!(
            "the source and the target are the same registry ({})",
            marks.source_id
        )));
    }
    let metrics_server = match args.metrics_addr {
        Some(addr) => Some(exporter::install(addr).await?),
        None => None,
    };
    let log = log::Log::new(ctx.printer.json());
    let source = open(ctx, "source", &source_config).await?;
    let target = match open(ctx, "target", &target_config).await {
        Ok(t) => t,
        Err(e) => {
            let _ = tokio::time::timeout(ctx.timeout, source.close()).await;
            return Err(e);
        }
    };
    let server = metrics_server.map(|(handle, listener)| {
        log.info(
            "metrics",
            &[(
                "url",
                serde_json::Value::String(format!(
                    "http://{}/metrics",
                    listener
                        .local_addr()
                        .map_or_else(|_| "?".to_owned(), |a| a.to_string())
                )),
            )],
        );
        tokio::spawn(exporter::serve(listener, handle))
    });
    let engine = engine::Engine::new(engine::Settings {
        source: source.clone(),
        target: target.clone(),
        one_per_endpoint: target_config.kind() == waypost::RegistryType::Nacos,
        marks,
        services: args.services,
        timeout: ctx.timeout,
        concurrency: usize::from(args.concurrency),
        status_every: args.status_every,
        log,
    });
    let result = match Shutdown::install() {
        Ok(mut shutdown) => engine.run(async move { shutdown.recv().await }).await,
        Err(e) => Err(e),
    };
    if let Some(server) = server {
        server.abort();
    }
    // Closing the target deregisters the mirrors it registered.
    let closed = tokio::time::timeout(ctx.timeout * 3, target.close()).await;
    let _ = tokio::time::timeout(ctx.timeout, source.close()).await;
    match closed {
        Ok(Ok(())) => log.info("stopped", &[]),
        Ok(Err(e)) => log.warn(
            "stopped",
            &[("error", log::message(&format!("closing the target: {e}")))],
        ),
        Err(_) => log.warn(
            "stopped",
            &[(
                "error",
                log::message("closing the target took too long; mirrors expire after --ttl"),
            )],
        ),
    }
    result
}

fn parse(what: &str, url: &str) -> CliResult<RegistryConfig> {
    RegistryConfig::from_url(url).map_err(|e| CliError::from(e).context(what))
}

async fn open(
    ctx: &Context,
    side: &str,
    config: &RegistryConfig,
) -> CliResult<Arc<dyn ServiceRegistry>> {
    let kind = config.kind();
    match tokio::time::timeout(ctx.timeout, waypost::new_service_registry(config)).await {
        Ok(Ok(registry)) => Ok(registry),
        Ok(Err(err)) => Err(CliError::from(err).context(format!("{side}: connecting to {kind}"))),
        Err(_) => Err(CliError::new(
            Exit::Unavailable,
            format!(
                "{side}: connecting to {kind}: no answer within {:?}",
                ctx.timeout
            ),
        )),
    }
}
