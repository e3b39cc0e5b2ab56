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

use crate::keys::{prefix_end, range_start};
use crate::lease::Lease;
use crate::ops::{Inner, Trouble};

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

/// Checks that every instance of ours is stored on its lease, for every lease at once, and puts
/// back the missing ones. One check runs at a time; all leases are checked together, so the
/// registry's state goes `Recovering` and back once per episode, not once per lease.
///
/// Returns the TTLs (in seconds) of the leases etcd does not know any more; their keep-alive
/// tasks are told to check them.
///
/// # Errors
/// The text of the failure when etcd did not answer; the caller tries again later.
pub(crate) async fn verify(inner: &Inner) -> Result<Vec<i64>, String> {
    let _one_at_a_time = inner.verifying.lock().await;
    let leases = inner.leases.all();
    let mut gone = Vec::new();
    let mut suspicious = Vec::new();
    for lease in &leases {
        match missing(inner, lease).await? {
            None => gone.push(lease.clone()),
            Some(m) if m.is_empty() => inner.resolved(Trouble::MissingKeys(lease.ttl_secs)),
            Some(_) => suspicious.push(lease.clone()),
        }
    }
    if !suspicious.is_empty() {
        repair(inner, &suspicious, &mut gone).await?;
    }
    for lease in &gone {
        lease.suspect.notify_one();
    }
    Ok(gone.iter().map(|l| l.ttl_secs).collect())
}

/// Looks at `leases` again with every mutation held off (so a deregister in flight is not
/// mistaken for a deletion and cannot be undone by the repair), and puts back what is missing.
async fn repair(
    inner: &Inner,
    leases: &[Arc<Lease>],
    gone: &mut Vec<Arc<Lease>>,
) -> Result<(), String> {
    let _exclusive = inner.gate.write().await;
    let mut suspects = Vec::new();
    for lease in leases {
        match missing(inner, lease).await? {
            None => gone.push(lease.clone()),
            Some(m) if m.is_empty() => inner.resolved(Trouble::MissingKeys(lease.ttl_secs)),
            Some(m) => suspects.push((lease.clone(), m)),
        }
    }
    // Every affected lease is marked before any is looked at further: from here until they are
    // back, the registry does not say `Connected`.
    for (lease, m) in &suspects {
        let why = format!(
            "{} instance(s) of ours not on their lease in etcd, e.g. {}; checking",
            m.len(),
            quoted(&m[0].id)
        );
        inner.trouble(Trouble::MissingKeys(lease.ttl_secs), &why);
    }
    for (lease, m) in suspects {
        // Not on our lease is not always gone: another client may hold it now.
        let absent = absent(inner, m).await?;
        if !absent.is_empty() {
            let why = format!(
                "{} instance(s) of ours missing from etcd though their lease lives (deleted, or \
                 etcd restored from an older backup), e.g. {}; putting them back",
                absent.len(),
                quoted(&absent[0].id)
            );
            if !lease.keys_missing.swap(true, Ordering::Relaxed) {
                tracing::warn!(target: "waypost::etcd", lease = lease.id(), missing = absent.len(), "{why}");
            }
            inner.trouble(Trouble::MissingKeys(lease.ttl_secs), &why);
            let mut restored = 0usize;
            for chunk in absent.chunks(RESTORE_BATCH) {
                restored += restore(inner, &lease, chunk).await?;
            }
            lease.keys_missing.store(false, Ordering::Relaxed);
            inner.state.metrics().reregistered(restored);
            tracing::info!(target: "waypost::etcd", lease = lease.id(), restored, "missing instances put back");
        }
    }
    for lease in leases {
        if !gone.iter().any(|g| Arc::ptr_eq(g, lease)) {
            inner.resolved(Trouble::MissingKeys(lease.ttl_secs));
        }
    }
    Ok(())
}

/// Of `services` (not on their lease), those whose key is absent. One that another client has
/// written again (on a lease that is not ours) is theirs now: forgotten, with a warning.
async fn absent(inner: &Inner, services: Vec<ServiceInfo>) -> Result<Vec<ServiceInfo>, String> {
    let timeout = inner.policy.attempt_timeout;
    let mut out = Vec::new();
    for chunk in services.chunks(RESTORE_BATCH) {
        let ops = chunk
            .iter()
            .map(|s| TxnOp::get(inner.keys.instance(&s.name, &s.id), None))
            .collect::<Vec<_>>();
        let mut kv = inner.client.kv_client();
        let resp = match tokio::time::timeout(timeout, kv.txn(Txn::new().and_then(ops))).await {
            Err(_) => return Err(format!("reading our keys: no answer within {timeout:?}")),
            Ok(Err(e)) => return Err(format!("reading our keys: {e}")),
            Ok(Ok(r)) => r,
        };
        for (s, r) in chunk.iter().zip(resp.op_responses()) {
            let TxnOpResponse::Get(g) = r else {
                return Err("reading our keys: unexpected answer".into());
            };
            match g.kvs().first().map(|kv| kv.lease()) {
                None => out.push(s.clone()),
                // On another lease of ours (it moved meanwhile): in place.
                Some(l) if inner.leases.owns(l) => {}
                Some(l) => taken_over(inner, s, l),
            }
        }
    }
    Ok(out)
}

/// Another client registered `s` again, on lease `holder`: it is theirs now.
fn taken_over(inner: &Inner, s: &ServiceInfo, holder: i64) {
    inner.ours.lock().remove(&s.id);
    tracing::warn!(
        target: "waypost::etcd",
        id = %quoted(&s.id),
        lease = holder,
        "another client registered this instance again; it is theirs now and no longer kept \
         alive by this registry"
    );
}

/// Instances put back per request (each a nested transaction of its own).
const RESTORE_BATCH: usize = 64;

/// Writes each of `services` again on `lease` if its key is absent, in one request; forgets
/// those whose key another client wrote meanwhile. Returns how many were put back.
async fn restore(inner: &Inner, lease: &Lease, services: &[ServiceInfo]) -> Result<usize, String> {
    let mut ops = Vec::with_capacity(services.len());
    for s in services {
        let key = inner.keys.instance(&s.name, &s.id);
        let value = inner.encode(s).map_err(|e| e.to_string())?;
        // Put only if absent; otherwise tell us who holds it.
        ops.push(TxnOp::txn(
            Txn::new()
                .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    value,
                    Some(PutOptions::new().with_lease(lease.id())),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]),
        ));
    }
    let timeout = inner.policy.attempt_timeout;
    let mut kv = inner.client.kv_client();
    let resp = match tokio::time::timeout(timeout, kv.txn(Txn::new().and_then(ops))).await {
        Err(_) => return Err(format!("put back: no answer within {timeout:?}")),
        Ok(Err(e)) => return Err(format!("put back: {e}")),
        Ok(Ok(r)) => r,
    };
    let mut restored = 0;
    for (s, r) in services.iter().zip(resp.op_responses()) {
        let TxnOpResponse::Txn(one) = r else {
            return Err("put back: unexpected answer".into());
        };
        if one.succeeded() {
            restored += 1;
            continue;
        }
        // The key exists: on one of our leases it is still ours, otherwise another client
        // registered this id and owns it now.
        let holder = one.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
            _ => None,
        });
        match holder {
            Some(l) if inner.leases.owns(l) => {}
            Some(l) => taken_over(inner, s, l),
            // Deleted again between the two: the next check puts it back.
            None => inner.recheck.notify_one(),
        }
    }
    Ok(restored)
}

/// Watches deletions under the prefix and checks our keys when one of ours is deleted (and
/// whenever a check is asked for). Runs until the registry closes.
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
    let mut stream =
        match tokio::time::timeout(timeout, client.watch(range_start(all), Some(opts))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(target: "waypost::etcd", error = %e, "deletion watch not opened");
                return;
            }
            Err(_) => return,
        };
    loop {
        let check = tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => return,
                };
                if resp.canceled() {
                    return;
                }
                // Deletions while this watch was down went unseen: check everything.
                resp.created() || resp.events().iter().any(|ev| ours_deleted(inner, ev))
            }
            _ = inner.recheck.notified() => true,
        };
        if check {
            backoff.reset();
            if let Err(why) = verify(inner).await {
                tracing::debug!(target: "waypost::etcd", error = %why, "checking our keys failed");
                return;
            }
        }
    }
}

/// Whether `ev` deleted a key of ours.
fn ours_deleted(inner: &Inner, ev: &etcd_client::Event) -> bool {
    if ev.event_type() != EventType::Delete {
        return false;
    }
    let Some((name, id)) = ev.kv().and_then(|kv| inner.keys.parse(kv.key())) else {
        return false;
    };
    inner
        .ours
        .lock()
        .get(id)
        .is_some_and(|o| o.info.name == name)
}
