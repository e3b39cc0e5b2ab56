//! Watch streams: a snapshot read at revision R, then an etcd watch of the same range from
//! R + 1.
//!
//! A broken watch (dead member, restarting server) is reopened from the last revision seen, so
//! nothing is lost or repeated. If that revision was compacted (or the cluster's revision went
//! backwards: a reset cluster), the range is read again and a `Snapshot { reason: Reconnected }`
//! replaces everything the watcher knew. The task always drains etcd promptly; if the consumer
//! falls more than [`EtcdConfig::watch_buffer`](crate::EtcdConfig::watch_buffer) events behind,
//! the backlog is dropped and a
//! `Snapshot { reason: Lagged }` is sent instead. The task ends when the stream is dropped or the
//! registry closes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use waypost_core_types::{
    Result, ServiceEvent, ServiceInfo, SnapshotReason, WatchEvent, WatchStream,
};

use crate::keys::prefix_end;
use crate::registry::Inner;
use waypost_core_types::backoff::Backoff;

/// Capacity of the channel between the task and the stream.
const CHANNEL: usize = 256;

/// Reads the range and starts the watch task.
pub(crate) async fn start(inner: Arc<Inner>, range: String) -> Result<WatchStream> {
    let (services, revision) = inner.list_range(&range).await?;
    let (tx, rx) = mpsc::channel(CHANNEL);
    let mut pending = VecDeque::new();
    pending.push_back(WatchEvent::Snapshot {
        services,
        reason: SnapshotReason::Initial,
    });
    tokio::spawn(run(inner, range, tx, pending, revision));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

enum Next {
    /// Reopen the etcd watch from `next_rev`.
    Reopen,
    /// The consumer is gone or the registry closed.
    Stop,
}

async fn run(
    inner: Arc<Inner>,
    range: String,
    tx: mpsc::Sender<WatchEvent>,
    mut pending: VecDeque<WatchEvent>,
    revision: i64,
) {
    let mut next_rev = revision + 1;
    let mut backoff = Backoff::new(Duration::from_millis(20), inner.config.max_backoff);
    let mut closed = inner.closed_rx();
    loop {
        match session(
            &inner,
            &range,
            &tx,
            &mut pending,
            &mut next_rev,
            &mut backoff,
        )
        .await
        {
            Next::Stop => return,
            Next::Reopen => {
                let pause = backoff.next_delay();
                // Keep delivering what is buffered while waiting.
                let deadline = tokio::time::Instant::now() + pause;
                loop {
                    tokio::select! {
                        biased;
                        _ = crate::closed(&mut closed) => return,
                        _ = tokio::time::sleep_until(deadline) => break,
                        permit = tx.reserve(), if !pending.is_empty() => match permit {
                            Ok(p) => {
                                if let Some(ev) = pending.pop_front() {
                                    p.send(ev);
                                }
                            }
                            Err(_) => return,
                        },
                        _ = tx.closed(), if pending.is_empty() => return,
                    }
                }
            }
        }
    }
}

/// Re-reads the range into a snapshot that replaces the backlog.
async fn resync(
    inner: &Inner,
    range: &str,
    pending: &mut VecDeque<WatchEvent>,
    next_rev: &mut i64,
    reason: SnapshotReason,
) -> bool {
    match inner.list_range(range).await {
        Ok((services, revision)) => {
            pending.clear();
            pending.push_back(WatchEvent::Snapshot { services, reason });
            *next_rev = revision + 1;
            true
        }
        Err(e) => {
            tracing::warn!(target: "waypost::etcd", error = %e, range, "watch resync failed; retrying");
            false
        }
    }
}

async fn session(
    inner: &Inner,
    range: &str,
    tx: &mpsc::Sender<WatchEvent>,
    pending: &mut VecDeque<WatchEvent>,
    next_rev: &mut i64,
    backoff: &mut Backoff,
) -> Next {
    let mut closed = inner.closed_rx();
    if *closed.borrow() {
        return Next::Stop;
    }
    let opts = WatchOptions::new()
        .with_range(prefix_end(range.as_bytes()))
        .with_start_revision(*next_rev)
        .with_prev_key()
        .with_progress_notify();
    let mut watch_client = inner.client.watch_client();
    let timeout = inner.policy.attempt_timeout;
    let opened = tokio::select! {
        _ = crate::closed(&mut closed) => return Next::Stop,
        r = tokio::time::timeout(timeout, watch_client.watch(range, Some(opts))) => r,
    };
    let mut stream = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(target: "waypost::etcd", error = %e, "watch not opened");
            return Next::Reopen;
        }
        Err(_) => return Next::Reopen,
    };
    let mut created = false;
    loop {
        tokio::select! {
            biased;
            _ = crate::closed(&mut closed) => return Next::Stop,
            permit = tx.reserve(), if !pending.is_empty() => match permit {
                Ok(p) => {
                    if let Some(ev) = pending.pop_front() {
                        p.send(ev);
                    }
                }
                Err(_) => return Next::Stop,
            },
            _ = tx.closed(), if pending.is_empty() => return Next::Stop,
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(resp)) => resp,
                    Ok(None) => {
                        tracing::debug!(target: "waypost::etcd", "watch stream ended; resuming");
                        return Next::Reopen;
                    }
                    Err(e) => {
                        tracing::debug!(target: "waypost::etcd", error = %e, "watch broke; resuming");
                        return Next::Reopen;
                    }
                };
                if resp.compact_revision() > 0 || resp.canceled() {
                    tracing::warn!(
                        target: "waypost::etcd",
                        compacted = resp.compact_revision(),
                        reason = resp.cancel_reason(),
                        "watch history lost; sending a fresh snapshot"
                    );
                    resync(inner, range, pending, next_rev, SnapshotReason::Reconnected).await;
                    return Next::Reopen;
                }
                if !created && resp.created() {
                    created = true;
                    backoff.reset();
                    // A cluster whose revision went backwards was reset: our position means
                    // nothing there.
                    let current = resp.header().map(|h| h.revision()).unwrap_or(i64::MAX);
                    if current + 1 < *next_rev {
                        tracing::warn!(target: "waypost::etcd", current, expected = *next_rev - 1,
                            "cluster revision went backwards; sending a fresh snapshot");
                        resync(inner, range, pending, next_rev, SnapshotReason::Reconnected).await;
                        return Next::Reopen;
                    }
                }
                // One revision can hold many events (a transaction, a lease expiry): compare
                // against the position before this response, advance after it.
                let floor = *next_rev;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let rev = kv.mod_revision();
                    if rev < floor {
                        continue; // already covered by a snapshot
                    }
                    if let Some(change) = convert(inner, ev.event_type(), kv, ev.prev_kv()) {
                        pending.push_back(WatchEvent::Change(change));
                    }
                    *next_rev = (*next_rev).max(rev + 1);
                }
                if pending.len() > inner.config.watch_buffer.max(1) {
                    tracing::warn!(target: "waypost::etcd", backlog = pending.len(),
                        "watcher fell behind; replacing its backlog with a snapshot");
                    if !resync(inner, range, pending, next_rev, SnapshotReason::Lagged).await {
                        return Next::Reopen;
                    }
                }
            }
        }
    }
}

/// The change an etcd event means, if any.
fn convert(
    inner: &Inner,
    kind: EventType,
    kv: &etcd_client::KeyValue,
    prev: Option<&etcd_client::KeyValue>,
) -> Option<ServiceEvent> {
    let (name, id) = inner.keys.parse(kv.key())?;
    let previous = prev.and_then(|p| inner.decode(p.key(), p.value()));
    match kind {
        EventType::Put => match inner.decode(kv.key(), kv.value()) {
            // `version` counts puts since creation: 1 is a new key. A key whose previous value
            // was garbage is new to the watcher too.
            Some(info) if kv.version() == 1 || (prev.is_some() && previous.is_none()) => {
                Some(ServiceEvent::created(info))
            }
            Some(info) => Some(ServiceEvent::updated(info)),
            // A valid record overwritten with garbage is gone for our purposes.
            None => previous.map(ServiceEvent::deleted),
        },
        EventType::Delete => match (previous, prev) {
            (Some(info), _) => Some(ServiceEvent::deleted(info)),
            // The deleted value was garbage: the watcher never saw it.
            (None, Some(_)) => None,
            // No previous value (compacted): id and name from the key.
            (None, None) => Some(ServiceEvent::deleted(ServiceInfo::new(id, name, "", 0))),
        },
    }
}
