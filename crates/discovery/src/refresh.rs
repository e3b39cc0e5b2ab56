//! Filling a service's cache and keeping it current: the watch loop, and the polling fallback
//! while the watch is down.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::timeout;
use waypost_core_types::{Error, Result, ServiceRegistry, WatchEvent, WatchStream};

use crate::cache::Entry;
use crate::options::Options;

/// Fills `entry` for the first time: from the registry watch's initial snapshot, or, when the
/// watch cannot start, from `list_instances`. Returns the live watch, if there is one.
pub(crate) async fn first_fill(
    entry: &Entry,
    registry: &dyn ServiceRegistry,
    opts: &Options,
) -> Result<Option<WatchStream>> {
    let name = &*entry.name;
    let limit = opts.initial_timeout;
    let watch_err = match timeout(limit, registry.watch_service(name)).await {
        Ok(Ok(mut stream)) => match timeout(limit, stream.next()).await {
            Ok(Some(WatchEvent::Snapshot { services, .. })) => {
                entry.apply_full(services, opts, true);
                return Ok(Some(stream));
            }
            Ok(Some(_)) => {
                Error::backend_msg("discovery", "the watch did not start with a snapshot")
            }
            Ok(None) => Error::Unavailable(format!("the watch of `{name}` ended at once")),
            Err(_) => Error::timeout(format!("the first snapshot of `{name}`"), limit),
        },
        Ok(Err(e)) => e,
        Err(_) => Error::timeout(format!("starting the watch of `{name}`"), limit),
    };
    if matches!(watch_err, Error::InvalidInstance(_) | Error::Closed) {
        return Err(watch_err);
    }
    tracing::warn!(service = %name, error = %watch_err, "discovery: watch failed; polling instead");
    entry.failed(&watch_err);
    match timeout(limit, registry.list_instances(name)).await {
        Ok(Ok(list)) => {
            entry.apply_full(list, opts, false);
            Ok(None)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::timeout(format!("listing `{name}`"), limit)),
    }
}

/// Resolves when the discovery shuts down (or is dropped).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|closed| *closed).await;
}

/// The background task of one service: applies the watch; when it ends or fails, polls
/// `list_instances` every `refresh_interval` and tries to watch again, until it is back.
pub(crate) async fn run(
    entry: Arc<Entry>,
    registry: Arc<dyn ServiceRegistry>,
    opts: Arc<Options>,
    mut stream: Option<WatchStream>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = entry.name.clone();
    let interval = opts.refresh_interval;
    // Without a watch at the start, the first fill has just listed: wait before polling.
    let mut poll_now = false;
    loop {
        if let Some(mut s) = stream.take() {
            loop {
                tokio::select! {
                    _ = stopped(&mut shutdown) => return,
                    ev = s.next() => match ev {
                        Some(WatchEvent::Snapshot { services, .. }) => {
                            entry.apply_full(services, &opts, true);
                        }
                        Some(WatchEvent::Change(change)) => entry.apply_change(change, &opts),
                        Some(_) => {}
                        None => break,
                    },
                }
            }
            tracing::warn!(service = %name, "discovery: registry watch ended; polling until it is back");
            entry.watch_lost("the registry watch ended");
            poll_now = true;
        }
        loop {
            if poll_now && !poll(&entry, &*registry, &opts).await {
                return;
            }
            poll_now = true;
            tokio::select! {
                _ = stopped(&mut shutdown) => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match timeout(interval, registry.watch_service(&name)).await {
                Ok(Ok(s)) => {
                    stream = Some(s);
                    break;
                }
                Ok(Err(Error::Closed)) => {
                    entry.failed(&Error::Closed);
                    return;
                }
                Ok(Err(e)) => entry.failed(&e),
                Err(_) => entry.failed(&Error::timeout(format!("watching `{name}`"), interval)),
            }
        }
    }
}

/// One `list_instances` refresh. Returns `false` when the registry is closed for good (the cache
/// then keeps serving what it has, and the task ends).
async fn poll(entry: &Entry, registry: &dyn ServiceRegistry, opts: &Options) -> bool {
    let name = &*entry.name;
    let interval = opts.refresh_interval;
    match timeout(interval, registry.list_instances(name)).await {
        Ok(Ok(list)) => entry.apply_full(list, opts, false),
        Ok(Err(e)) => {
            entry.failed(&e);
            return !e.is_closed();
        }
        Err(_) => entry.failed(&Error::timeout(format!("listing `{name}`"), interval)),
    }
    true
}
