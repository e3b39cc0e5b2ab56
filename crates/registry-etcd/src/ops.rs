//! The state a registry shares with its tasks, and every operation it runs against etcd: calls
//! with retries, decoding, paged listing at one revision, compare-and-swap writes, and the lease
//! (grant again after a loss, revoke).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};
use parking_lot::Mutex;
use tokio::sync::RwLock;
use tokio::time::Instant;
use waypost_core_types::quote::quoted_up_to;
use waypost_core_types::tasks::StopSignal;
use waypost_core_types::{Error, Result, ScopedHubs, ServiceInfo, StateCell};

use crate::config::EtcdConfig;
use crate::error::{self};
use crate::history::{Anchor, Digest, ServerHeader};
use crate::keys::{prefix_end, range_start, KeyLayout};
use crate::lease::{Lease, Leases, Ours};
use crate::retry::{retry, AttemptError, RetryPolicy};
use waypost_core_types::backoff::Backoff;

/// Characters of a key shown in a log line.
const KEY_IN_LOG: usize = 256;
/// Keys per page when listing.
const PAGE: i64 = 1_000;
/// Puts per transaction when registering our instances again.
const REPUT_BATCH: usize = 64;

/// A range read at one revision.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// The valid instances.
    pub(crate) services: Vec<ServiceInfo>,
    /// The revision of the read.
    pub(crate) revision: i64,
    /// How many keys the range holds, valid records or not.
    pub(crate) raw_count: i64,
    /// The most recently modified key of the range.
    pub(crate) anchor: Option<Anchor>,
    /// The keys of the range and their modification revisions.
    pub(crate) digest: Digest,
    /// Who answered.
    pub(crate) server: Option<ServerHeader>,
}

/// One key as read before a compare-and-swap.
pub(crate) struct Stored {
    /// The decoded value, if it is a valid record.
    pub(crate) info: Option<ServiceInfo>,
    /// 0 when the key does not exist.
    pub(crate) mod_revision: i64,
    pub(crate) exists: bool,
    /// The lease the key is attached to (0: none).
    pub(crate) lease: i64,
}

/// State shared by the registry, its lease task and its watch tasks.
pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) config: EtcdConfig,
    pub(crate) keys: KeyLayout,
    pub(crate) policy: RetryPolicy,
    /// Resolves once the registry is closed (or dropped); every task and call watches it.
    pub(crate) stop: StopSignal,
    /// One hub (and one etcd watch) per watched scope.
    pub(crate) hubs: ScopedHubs,
    /// What this registry registered: put again after a lease loss or a deletion.
    pub(crate) ours: Mutex<Ours>,
    /// Mutations hold it shared; re-registering after a lease loss, putting back deleted keys
    /// and releasing a lease hold it exclusively, so a deregister can never be undone by a
    /// concurrent re-put.
    pub(crate) gate: RwLock<()>,
    /// One lease per distinct TTL; the default one lives as long as the registry.
    pub(crate) leases: Leases,
    /// What keeps the registry from being `Connected` right now.
    pub(crate) troubles: Troubles,
    /// Whether the watch of deletions of our keys runs (started with the first registration).
    pub(crate) guarding: std::sync::atomic::AtomicBool,
    /// One check of our keys at a time ([`guard::verify`](crate::guard::verify)).
    pub(crate) verifying: tokio::sync::Mutex<()>,
    /// Asks the deletion watch for another check of our keys.
    pub(crate) recheck: tokio::sync::Notify,
    pub(crate) state: StateCell,
}

/// The reasons the registry is not `Connected` right now: the state cell says `Connected` only
/// when the last one is resolved.
#[derive(Debug, Default)]
pub(crate) struct Troubles(Mutex<BTreeSet<Trouble>>);

impl Troubles {
    /// One attempt failed because of `trouble`: `state` is `Recovering`.
    pub(crate) fn add(&self, state: &StateCell, trouble: Trouble, why: &str) {
        let mut troubles = self.0.lock();
        troubles.insert(trouble);
        state.failed(&why);
    }

    /// `trouble` is resolved; `state` is `Connected` if nothing else is wrong.
    pub(crate) fn resolve(&self, state: &StateCell, trouble: Trouble) {
        let mut troubles = self.0.lock();
        troubles.remove(&trouble);
        // Under the lock, so a concurrent `add` cannot be overwritten by `connected`.
        if troubles.is_empty() {
            state.connected();
        }
    }
}

/// One reason the registry is not `Connected`; it is `Connected` when there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Trouble {
    /// The keep-alive of the lease of this TTL is broken, or the lease is being replaced.
    Lease(i64),
    /// Instances on the lease of this TTL are missing from etcd and being put back.
    MissingKeys(i64),
}

impl Inner {
    pub(crate) fn stop_signal(&self) -> StopSignal {
        self.stop.clone()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.is_closed() || self.stop.is_stopped()
    }

    /// The id of the default lease.
    pub(crate) fn lease_id(&self) -> i64 {
        self.leases.default_lease().id()
    }

    /// `trouble` is resolved; the registry is `Connected` when nothing else is wrong.
    pub(crate) fn resolved(&self, trouble: Trouble) {
        self.troubles.resolve(&self.state, trouble);
    }

    /// One attempt failed because of `trouble`: the registry is `Recovering`.
    pub(crate) fn trouble(&self, trouble: Trouble, why: &str) {
        self.troubles.add(&self.state, trouble, why);
    }

    /// Forgets the troubles of a retired lease.
    pub(crate) fn forget_troubles(&self, ttl_secs: i64) {
        self.resolved(Trouble::Lease(ttl_secs));
        self.resolved(Trouble::MissingKeys(ttl_secs));
    }

    /// Runs `op` with retries under the call deadline.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, AttemptError>>,
    {
        retry(
            what,
            &self.policy,
            &self.stop,
            &|| self.leases.suspect_all(),
            op,
        )
        .await
    }

    /// Decodes one stored value; `None` (with a warning) for foreign or corrupt data.
    /// Keys and names are peer bytes: logged bounded and escaped.
    pub(crate) fn decode(&self, key: &[u8], value: &[u8]) -> Option<ServiceInfo> {
        let text = String::from_utf8_lossy(key);
        let key = quoted_up_to(&text, KEY_IN_LOG);
        let Some((name, id)) = self.keys.parse(text.as_bytes()) else {
            tracing::warn!(
                target: "waypost::etcd",
                key = %key,
                format = %self.config.format,
                "skipping a key that is not <prefix>/<name>/<id>"
            );
            return None;
        };
        match self
            .config
            .format
            .decode_among(crate::config::FORMATS, name, id, value)
        {
            Ok(decoded) => Some(decoded.info),
            Err(reason) => {
                tracing::warn!(
                    target: "waypost::etcd",
                    key = %key,
                    format = %self.config.format,
                    error = %reason,
                    "skipping a value that is not an instance in the registry's record format"
                );
                None
            }
        }
    }

    /// The bytes stored for `info`, in the registry's record format.
    pub(crate) fn encode(&self, info: &ServiceInfo) -> Result<Vec<u8>> {
        self.config.format.encode(info)
    }

    /// Every valid instance under `range` (a key prefix) and the revision of that view, read in
    /// pages at one revision.
    pub(crate) async fn list_range(&self, range: &str) -> Result<(Vec<ServiceInfo>, i64)> {
        let listing = self.list_range_full(range).await?;
        Ok((listing.services, listing.revision))
    }

    /// [`list_range`](Self::list_range) with what a watch needs to recognise its history later.
    pub(crate) async fn list_range_full(&self, range: &str) -> Result<Listing> {
        let end = prefix_end(range.as_bytes());
        'restart: loop {
            let mut listing = Listing::default();
            let mut from = range_start(range);
            loop {
                let revision = listing.revision;
                let resp = self
                    .call("list", || {
                        let mut kv = self.client.kv_client();
                        let from = from.clone();
                        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
                        if revision > 0 {
                            opts = opts.with_revision(revision);
                        }
                        async move {
                            match kv.get(from, Some(opts)).await {
                                Err(e) if error::is_compacted(&e) => Ok(Err(e)),
                                other => Ok(Ok(other?)),
                            }
                        }
                    })
                    .await?;
                let resp = match resp {
                    Ok(r) => r,
                    // The revision of the first page was compacted meanwhile: start over.
                    Err(e) if error::is_compacted(&e) => continue 'restart,
                    Err(e) => return Err(error::convert(e)),
                };
                if listing.revision == 0 {
                    listing.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                    listing.server = resp.header().map(ServerHeader::from);
                }
                let kvs = resp.kvs();
                for kv in kvs {
                    listing.raw_count += 1;
                    listing.digest.toggle(kv.key(), kv.mod_revision());
                    if listing
                        .anchor
                        .as_ref()
                        .is_none_or(|a| a.mod_revision < kv.mod_revision())
                    {
                        listing.anchor = Some(Anchor::of(kv));
                    }
                    if let Some(info) = self.decode(kv.key(), kv.value()) {
                        listing.services.push(info);
                    }
                }
                match (resp.more(), kvs.last()) {
                    (true, Some(last)) => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => return Ok(listing),
                }
            }
        }
    }

    /// The key of instance `id`: from our own index, else by scanning the key names.
    pub(crate) async fn find_key(&self, id: &str) -> Result<Option<String>> {
        let known = self.ours.lock().get(id).map(|s| s.info.name.clone());
        if let Some(name) = known {
            let key = self.keys.instance(&name, id);
            let exists = self
                .call("get", || {
                    let mut kv = self.client.kv_client();
                    let key = key.clone();
                    async move {
                        let r = kv
                            .get(key, Some(GetOptions::new().with_count_only()))
                            .await?;
                        Ok(r.count() > 0)
                    }
                })
                .await?;
            if exists {
                return Ok(Some(key));
            }
        }
        let all = self.keys.all();
        let end = prefix_end(all.as_bytes());
        let keys: Vec<Vec<u8>> = self
            .call("scan", || {
                let mut kv = self.client.kv_client();
                let opts = GetOptions::new().with_range(end.clone()).with_keys_only();
                let all = range_start(&all);
                async move {
                    let r = kv.get(all, Some(opts)).await?;
                    Ok(r.kvs().iter().map(|kv| kv.key().to_vec()).collect())
                }
            })
            .await?;
        Ok(keys.into_iter().find_map(|k| match self.keys.parse(&k) {
            Some((name, kid)) if kid == id => Some(self.keys.instance(name, id)),
            _ => None,
        }))
    }

    /// Reads one key.
    pub(crate) async fn read(&self, key: &str) -> std::result::Result<Stored, AttemptError> {
        let mut kv = self.client.kv_client();
        let resp = kv.get(key, None).await?;
        Ok(match resp.kvs().first() {
            Some(found) => Stored {
                info: self.decode(found.key(), found.value()),
                mod_revision: found.mod_revision(),
                exists: true,
                lease: found.lease(),
            },
            None => Stored {
                info: None,
                mod_revision: 0,
                exists: false,
                lease: 0,
            },
        })
    }

    /// Grants `lease` again and puts every instance of ours on it again with the new id.
    pub(crate) async fn regrant(&self, lease: &Lease) -> Result<()> {
        let timeout = self.policy.attempt_timeout;
        let mut lease_client = self.client.lease_client();
        let granted = tokio::time::timeout(timeout, lease_client.grant(lease.ttl_secs, None))
            .await
            .map_err(|_| Error::timeout("etcd lease grant", timeout))?
            .map_err(error::convert)?;
        let new_id = granted.id();
        let _exclusive = self.gate.write().await;
        let ours = self.ours.lock().on_lease(lease.ttl_secs);
        if let Err(e) = self.put_all(&ours, new_id).await {
            // Do not leave the new lease behind; it expires anyway after its TTL.
            let _ = tokio::time::timeout(timeout, lease_client.revoke(new_id)).await;
            return Err(e);
        }
        lease.replace(new_id);
        self.state.metrics().reregistered(ours.len());
        tracing::info!(
            target: "waypost::etcd",
            lease = new_id,
            ttl_secs = lease.ttl_secs,
            instances = ours.len(),
            "new lease granted; instances registered again"
        );
        Ok(())
    }

    /// Puts `services` with lease `lease_id`, in batches (the caller holds the gate).
    pub(crate) async fn put_all(&self, services: &[ServiceInfo], lease_id: i64) -> Result<()> {
        let timeout = self.policy.attempt_timeout;
        for chunk in services.chunks(REPUT_BATCH) {
            let mut ops = Vec::with_capacity(chunk.len());
            for s in chunk {
                let value = self.encode(s)?;
                ops.push(TxnOp::put(
                    self.keys.instance(&s.name, &s.id),
                    value,
                    Some(PutOptions::new().with_lease(lease_id)),
                ));
            }
            let mut kv = self.client.kv_client();
            tokio::time::timeout(timeout, kv.txn(Txn::new().and_then(ops)))
                .await
                .map_err(|_| Error::timeout("etcd re-register", timeout))?
                .map_err(error::convert)?;
        }
        Ok(())
    }

    /// Revokes lease `id`, retrying transient errors until the call deadline.
    pub(crate) async fn revoke_id(&self, id: i64) -> Result<()> {
        let deadline = Instant::now() + self.policy.deadline;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            let mut lease_client = self.client.lease_client();
            let r =
                tokio::time::timeout(self.policy.attempt_timeout, lease_client.revoke(id)).await;
            match r {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if error::is_lease_not_found(&e) => return Ok(()),
                Ok(Err(e)) if !error::is_transient(&e) => return Err(error::convert(e)),
                Ok(Err(e)) if Instant::now() >= deadline => return Err(error::convert(e)),
                Err(_) if Instant::now() >= deadline => {
                    return Err(Error::timeout("etcd lease revoke", self.policy.deadline))
                }
                _ => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
    }
}

impl Inner {
    /// Revokes every lease once the mutations in flight have finished (so none lands after
    /// it), and forgets our instances.
    pub(crate) async fn release(&self) -> Result<()> {
        let revoked = {
            let _exclusive = self.gate.write().await;
            let mut result = Ok(());
            for lease in self.leases.all() {
                if let Err(e) = self.revoke_id(lease.id()).await {
                    result = Err(e);
                }
            }
            result
        };
        self.ours.lock().clear();
        if let Err(e) = &revoked {
            tracing::warn!(target: "waypost::etcd", error = %e, "lease revoke failed; instances expire after their TTL");
        }
        revoked
    }

    /// Revokes the leases (other than the default one) that no instance of ours uses any more.
    pub(crate) async fn release_idle_leases(&self) {
        let counts = self.ours.lock().counts().clone();
        if self.leases.idle(&counts).is_empty() {
            return;
        }
        let idle: Vec<Arc<Lease>> = {
            // Exclusive: no register is between choosing a lease and recording its instance.
            let _exclusive = self.gate.write().await;
            let counts = self.ours.lock().counts().clone();
            let idle = self.leases.idle(&counts);
            idle.into_iter()
                .filter_map(|secs| self.leases.remove(secs))
                .collect()
        };
        for lease in idle {
            self.forget_troubles(lease.ttl_secs);
            let id = lease.id();
            match self.revoke_id(id).await {
                Ok(()) => {
                    tracing::debug!(target: "waypost::etcd", lease = id, ttl_secs = lease.ttl_secs, "lease released: its last instance left")
                }
                Err(e) => {
                    tracing::warn!(target: "waypost::etcd", lease = id, error = %e, "releasing an unused lease failed; it expires after its TTL")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypost_core_types::RegistryState;

    #[test]
    fn connected_only_when_every_trouble_is_resolved() {
        let state = StateCell::new("etcd");
        let troubles = Troubles::default();
        troubles.add(&state, Trouble::Lease(30), "keep-alive broken");
        troubles.add(
            &state,
            Trouble::MissingKeys(5),
            "2 instance(s) of ours missing",
        );
        // The default lease's keep-alive answers again: the 5 s lease's keys are still missing.
        troubles.resolve(&state, Trouble::Lease(30));
        match state.get() {
            RegistryState::Recovering { last_error, .. } => {
                assert!(last_error.contains("missing"), "{last_error}")
            }
            other => panic!("{other:?}"),
        }
        troubles.resolve(&state, Trouble::MissingKeys(5));
        assert_eq!(state.get(), RegistryState::Connected);
        // Resolving what is not there changes nothing.
        troubles.resolve(&state, Trouble::MissingKeys(5));
        assert_eq!(state.get(), RegistryState::Connected);
    }
}
