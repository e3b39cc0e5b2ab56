//! Filling a service's cache and keeping it current: the watch loop, and the polling fallback
//! while the watch is down.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use waypost_core_types::quote::quoted;
use waypost_core_types::{
    Error, Result, ServiceRegistry, SharedWatchEvent, SharedWatchStream, SnapshotReason,
};

use crate::cache::Entry;
use crate::options::Options;

/// Fills `entry` for the first time: from the registry watch's initial snapshot, or, when the
/// watch cannot start, from `list_instances`. Returns the live watch, if there is one.
///
/// Both are the shared variants ([`ServiceRegistry::watch_service_shared`],
/// [`ServiceRegistry::list_instances_shared`]): a registry that keeps its instances in process
/// hands out its own `Arc`s, and the cache holds those, not copies.
pub(crate) async fn first_fill(
    entry: &Entry,
    registry: &dyn ServiceRegistry,
    opts: &Options,
) -> Result<Option<SharedWatchStream>> {
    let name = &*entry.name;
    let limit = opts.initial_timeout;
    let watch_err = match timeout(limit, registry.watch_service_shared(name)).await {
        Ok(Ok(mut stream)) => match timeout(limit, stream.next()).await {
            Ok(Some(SharedWatchEvent::Snapshot { services, .. })) => {
                entry.apply_full(services, opts, true, false);
                return Ok(Some(stream));
            }
            Ok(Some(_)) => {
                Error::backend_msg("discovery", "the watch did not start with a snapshot")
            }
            Ok(None) => {
                Error::Unavailable(format!("the watch of `{}` ended at once", quoted(name)))
            }
            Err(_) => Error::timeout(format!("the first snapshot of `{}`", quoted(name)), limit),
        },
        Ok(Err(e)) => e,
        Err(_) => Error::timeout(format!("starting the watch of `{}`", quoted(name)), limit),
    };
    if matches!(watch_err, Error::InvalidInstance(_) | Error::Closed) {
        return Err(watch_err);
    }
    tracing::warn!(service = %quoted(name), error = %watch_err, "discovery: watch failed; polling instead");
    entry.failed(&watch_err);
    match timeout(limit, registry.list_instances_shared(name)).await {
        Ok(Ok(list)) => {
            entry.apply_full(list, opts, false, false);
            Ok(None)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::timeout(format!("listing `{}`", quoted(name)), limit)),
    }
}

/// Resolves when the discovery shuts down (or is dropped).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|closed| *closed).await;
}

/// Resolves when the instances `entry` holds after a watch gap are due to be dropped (never if
/// it holds none).
async fn grace_ends(entry: &Entry) {
    match entry.grace_deadline() {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The background task of one service: applies the watch; when it ends or fails, polls
/// `list_instances` every `refresh_interval` and tries to watch again, until it is back.
pub(crate) async fn run(
    entry: Arc<Entry>,
    registry: Arc<dyn ServiceRegistry>,
    opts: Arc<Options>,
    mut stream: Option<SharedWatchStream>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = entry.name.clone();
    let interval = opts.refresh_interval;
    // Without a watch at the start, the first fill has just listed: wait before polling.
    let mut poll_now = false;
    // The first snapshot of a watch started again follows a gap, as a reconnect snapshot does.
    let mut fresh_watch = false;
    loop {
        if let Some(mut s) = stream.take() {
            loop {
                tokio::select! {
                    _ = stopped(&mut shutdown) => return,
                    _ = grace_ends(&entry) => entry.expire_grace(Instant::now()),
                    ev = s.next() => match ev {
                        Some(SharedWatchEvent::Snapshot { services, reason }) => {
                            let received = std::time::Instant::now();
                            entry.metrics.snapshot(reason, fresh_watch);
                            let after_gap = reason == SnapshotReason::Reconnected || fresh_watch;
                            fresh_watch = false;
                            entry.apply_full(services, &opts, true, after_gap);
                            entry.metrics.applied(received);
                        }
                        Some(SharedWatchEvent::Change { kind, service }) => {
                            let received = std::time::Instant::now();
                            entry.apply_change(kind, service, &opts);
                            entry.metrics.applied(received);
                        }
                        Some(_) => {}
                        None => break,
                    },
                }
            }
            tracing::warn!(service = %quoted(&name), "discovery: registry watch ended; polling until it is back");
            entry.watch_lost("the registry watch ended");
            poll_now = true;
        }
        loop {
            if poll_now && !poll(&entry, &*registry, &opts).await {
                return;
            }
            poll_now = true;
            let wake = Instant::now().checked_add(interval);
            loop {
                tokio::select! {
                    _ = stopped(&mut shutdown) => return,
                    _ = grace_ends(&entry) => {
                        entry.expire_grace(Instant::now());
                        continue;
                    }
                    _ = sleep_until_or_never(wake) => {}
                }
                break;
            }
            match timeout(interval, registry.watch_service_shared(&name)).await {
                Ok(Ok(s)) => {
                    stream = Some(s);
                    fresh_watch = true;
                    break;
                }
                Ok(Err(Error::Closed)) => {
                    entry.failed(&Error::Closed);
                    return;
                }
                Ok(Err(e)) => entry.failed(&e),
                Err(_) => entry.failed(&Error::timeout(
                    format!("watching `{}`", quoted(&name)),
                    interval,
                )),
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is none (an interval of `Duration::MAX`).
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One `list_instances` refresh. Returns `false` when the registry is closed for good (the cache
/// then keeps serving what it has, and the task ends).
async fn poll(entry: &Entry, registry: &dyn ServiceRegistry, opts: &Options) -> bool {
    let name = &*entry.name;
    let interval = opts.refresh_interval;
    match timeout(interval, registry.list_instances_shared(name)).await {
        // A poll runs while the watch is down: what it leaves out may be coming back.
        Ok(Ok(list)) => entry.apply_full(list, opts, false, true),
        Ok(Err(e)) => {
            entry.failed(&e);
            return !e.is_closed();
        }
        Err(_) => entry.failed(&Error::timeout(
            format!("listing `{}`", quoted(name)),
            interval,
        )),
    }
    true
}
