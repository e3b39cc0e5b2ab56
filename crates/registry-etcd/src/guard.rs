//! Our own keys: noticed when they go missing while their lease lives, and put back.
//!
//! A key can vanish while its lease is alive: an operator's `etcdctl del`, or a cluster restored
//! from a backup taken before we registered (the lease was in the backup, the key was not). The
//! lease keep-alive cannot see that, so the registry checks the keys attached to each of its
//! leases (`LeaseTimeToLive` with keys): when a keep-alive session starts (after every
//! reconnect), after every keep-alive answer, and at once when a watch of deletions under the
//! prefix (started with the first registration) reports one of our keys deleted. A missing key
//! is written again on its lease; meanwhile the registry's state is `Recovering`. A key that
//! another client has written again (registered the same id on its own lease) is theirs now: it
//! is not put back, and this registry stops maintaining it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchFilterType,
    WatchOptions,
};
use waypost_core_types::backoff::Backoff;
use waypost_core_types::quote::quoted;
use waypost_core_types::ServiceInfo;

use crate::keys::prefix_end;
use crate::lease::Lease;
use crate::ops::{Inner, Trouble};

/// The outcome of [`verify`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Checked {
    /// Every key of ours on the lease is in place (again).
    Fine,
    /// etcd no longer knows the lease: it must be granted again.
    LeaseGone,
}

/// The keys etcd has attached to `lease`, or `None` when it does not know the lease.
async fn attached(inner: &Inner, lease: &Lease) -> Result<Option<Vec<Vec<u8>>>, String> {
    let timeout = inner.policy.attempt_timeout;
    let mut client = inner.client.lease_client();
    let opts = etcd_client::LeaseTimeToLiveOptions::new().with_keys();
    match tokio::time::timeout(timeout, client.time_to_live(lease.id(), Some(opts))).await {
        Err(_) => Err(format!("lease check: no answer within {timeout:?}")),
        Ok(Err(e)) if crate::error::is_lease_not_found(&e) => Ok(None),
        Ok(Err(e)) => Err(format!("lease check: {e}")),
        // etcd answers TTL -1 for a lease it does not know.
        Ok(Ok(r)) if r.ttl() < 0 => Ok(None),
        Ok(Ok(r)) => Ok(Some(r.keys().to_vec())),
    }
}

/// Our instances on `lease` whose keys etcd does not have attached to it.
async fn missing(inner: &Inner, lease: &Lease) -> Result<Option<Vec<ServiceInfo>>, String> {
    // Ours first, then etcd: whatever was registered before the read is in etcd's answer.
    let ours = inner.ours.lock().on_lease(lease.ttl_secs);
    if ours.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let Some(keys) = attached(inner, lease).await? else {
        return Ok(None);
    };
    let keys: std::collections::HashSet<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    Ok(Some(
        ours.into_iter()
            .filter(|s| !keys.contains(inner.keys.instance(&s.name, &s.id).as_bytes()))
            .collect(),
    ))
}

/// Checks that every instance of ours on `lease` is stored on it, and puts back the missing
/// ones.
///
/// # Errors
/// The text of the failure when etcd did not answer; the caller tries again later.
pub(crate) async fn verify(inner: &Inner, lease: &Lease) -> Result<Checked, String> {
    match missing(inner, lease).await? {
        None => return Ok(Checked::LeaseGone),
        Some(m) if m.is_empty() => {
            inner.resolved(Trouble::MissingKeys(lease.ttl_secs));
            return Ok(Checked::Fine);
        }
        Some(_) => {}
    }
    // Something looked missing: look again with every mutation held off, so a deregister in
    // flight is not mistaken for a deletion and cannot be undone by the repair.
    let _exclusive = inner.gate.write().await;
    let missing = match missing(inner, lease).await? {
        None => return Ok(Checked::LeaseGone),
        Some(m) if m.is_empty() => {
            inner.resolved(Trouble::MissingKeys(lease.ttl_secs));
            return Ok(Checked::Fine);
        }
        Some(m) => m,
    };
    let why = format!(
        "{} instance(s) of ours missing from etcd though their lease lives (deleted, or etcd \
         restored from an older backup), e.g. {}; putting them back",
        missing.len(),
        quoted(&missing[0].id)
    );
    if !lease.keys_missing.swap(true, Ordering::Relaxed) {
        tracing::warn!(target: "waypost::etcd", lease = lease.id(), missing = missing.len(), "{why}");
    }
    inner.trouble(Trouble::MissingKeys(lease.ttl_secs), &why);
    let mut restored = 0usize;
    for s in &missing {
        if restore(inner, lease, s).await? {
            restored += 1;
        }
    }
    lease.keys_missing.store(false, Ordering::Relaxed);
    inner.resolved(Trouble::MissingKeys(lease.ttl_secs));
    tracing::info!(target: "waypost::etcd", lease = lease.id(), restored, "missing instances put back");
    Ok(Checked::Fine)
}

/// Writes `s` again on `lease` if its key is absent; forgets it if another client wrote the key
/// meanwhile. `true` when it was put back.
async fn restore(inner: &Inner, lease: &Lease, s: &ServiceInfo) -> Result<bool, String> {
    let key = inner.keys.instance(&s.name, &s.id);
    let value = s.to_json_vec().map_err(|e| e.to_string())?;
    let txn = Txn::new()
        .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.as_str(),
            value,
            Some(PutOptions::new().with_lease(lease.id())),
        )])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let timeout = inner.policy.attempt_timeout;
    let mut kv = inner.client.kv_client();
    let resp = match tokio::time::timeout(timeout, kv.txn(txn)).await {
        Err(_) => return Err(format!("put back: no answer within {timeout:?}")),
        Ok(Err(e)) => return Err(format!("put back: {e}")),
        Ok(Ok(r)) => r,
    };
    if resp.succeeded() {
        return Ok(true);
    }
    // The key exists: on one of our leases it is still ours (it moved), otherwise another
    // client registered this id and owns it now.
    let holder = resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
        _ => None,
    });
    match holder {
        Some(l) if inner.leases.owns(l) => Ok(false),
        Some(l) => {
            inner.ours.lock().remove(&s.id);
            tracing::warn!(
                target: "waypost::etcd",
                id = %quoted(&s.id),
                lease = l,
                "another client wrote this instance again; it is theirs now and no longer kept \
                 alive by this registry"
            );
            Ok(false)
        }
        None => Err("put back: the key changed meanwhile".into()),
    }
}

/// Watches deletions under the prefix and has the owning lease's task verify our keys when one
/// of ours is deleted. Runs until the registry closes.
pub(crate) async fn watch_deletions(inner: Arc<Inner>) {
    let all = inner.keys.all();
    let mut backoff = Backoff::new(Duration::from_millis(50), inner.config.max_backoff);
    loop {
        deletions_session(&inner, &all, &mut backoff).await;
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn deletions_session(inner: &Inner, all: &str, backoff: &mut Backoff) {
    let opts = WatchOptions::new()
        .with_range(prefix_end(all.as_bytes()))
        .with_filters([WatchFilterType::NoPut]);
    let timeout = inner.policy.attempt_timeout;
    let mut client = inner.client.watch_client();
    let mut stream = match tokio::time::timeout(timeout, client.watch(all, Some(opts))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(target: "waypost::etcd", error = %e, "deletion watch not opened");
            return;
        }
        Err(_) => return,
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        if resp.created() {
            backoff.reset();
            // Deletions while this watch was down went unseen: check everything.
            for lease in inner.leases.all() {
                lease.check_keys.notify_one();
            }
        }
        if resp.canceled() {
            return;
        }
        for ev in resp.events() {
            if ev.event_type() != EventType::Delete {
                continue;
            }
            let Some((name, id)) = ev.kv().and_then(|kv| inner.keys.parse(kv.key())) else {
                continue;
            };
            let secs = inner
                .ours
                .lock()
                .get(id)
                .filter(|o| o.info.name == name)
                .map(|o| o.lease_secs);
            if let Some(lease) = secs.and_then(|s| inner.leases.get(s)) {
                lease.check_keys.notify_one();
            }
        }
    }
}
