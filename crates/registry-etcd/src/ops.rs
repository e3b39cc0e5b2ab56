//! The state a registry shares with its tasks, and every operation it runs against etcd: calls
//! with retries, decoding, paged listing at one revision, compare-and-swap writes, and the lease
//! (grant again after a loss, revoke).

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify, RwLock};
use tokio::time::Instant;
use waypost_core_types::tasks::StopSignal;
use waypost_core_types::{Error, Result, ScopedHubs, ServiceInfo, StateCell};

use crate::config::EtcdConfig;
use crate::error::{self};
use crate::keys::{prefix_end, KeyLayout};
use crate::retry::{retry, AttemptError, RetryPolicy};
use waypost_core_types::backoff::Backoff;

/// Keys per page when listing.
const PAGE: i64 = 1_000;
/// Puts per transaction when registering our instances again.
const REPUT_BATCH: usize = 64;

/// The lease our instances hang on; `generation` grows with every new grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseSlot {
    pub(crate) id: i64,
    pub(crate) generation: u64,
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
    /// What this registry registered: put again after a lease loss.
    pub(crate) ours: Mutex<HashMap<String, ServiceInfo>>,
    /// Mutations hold it shared; re-registering after a lease loss holds it exclusively, so a
    /// deregister can never be undone by a concurrent re-put.
    pub(crate) gate: RwLock<()>,
    pub(crate) lease: watch::Sender<LeaseSlot>,
    /// A mutation found our lease gone: the lease task checks at once.
    pub(crate) lease_suspect: Notify,
    /// `renew` asks for an immediate keep-alive.
    pub(crate) renew_now: Notify,
    pub(crate) state: StateCell,
}

impl Inner {
    pub(crate) fn stop_signal(&self) -> StopSignal {
        self.stop.clone()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.is_closed() || self.stop.is_stopped()
    }

    pub(crate) fn lease_id(&self) -> i64 {
        self.lease.borrow().id
    }

    pub(crate) fn set_connected(&self) {
        self.state.connected();
    }

    pub(crate) fn set_recovering(&self, why: &str) {
        self.state.failed(&why);
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
            &|| self.lease_suspect.notify_one(),
            op,
        )
        .await
    }

    /// Decodes one stored value; `None` (with a warning) for foreign or corrupt data.
    pub(crate) fn decode(&self, key: &[u8], value: &[u8]) -> Option<ServiceInfo> {
        let Some((name, id)) = self.keys.parse(key) else {
            tracing::warn!(
                target: "waypost::etcd",
                key = %String::from_utf8_lossy(key),
                "skipping a key that is not <prefix>/<name>/<id>"
            );
            return None;
        };
        match ServiceInfo::from_json(value) {
            Ok(info) if info.name == name && info.id == id => Some(info),
            Ok(info) => {
                tracing::warn!(
                    target: "waypost::etcd",
                    key = %String::from_utf8_lossy(key),
                    json_name = %info.name,
                    json_id = %info.id,
                    "skipping a record whose name/id disagree with its key"
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    target: "waypost::etcd",
                    key = %String::from_utf8_lossy(key),
                    error = %e,
                    "skipping a value that is not a ServiceInfo"
                );
                None
            }
        }
    }

    /// Every valid instance under `range` (a key prefix) and the revision of that view, read in
    /// pages at one revision.
    pub(crate) async fn list_range(&self, range: &str) -> Result<(Vec<ServiceInfo>, i64)> {
        let end = prefix_end(range.as_bytes());
        'restart: loop {
            let mut out = Vec::new();
            let mut from = range.as_bytes().to_vec();
            let mut revision = 0i64;
            loop {
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
                if revision == 0 {
                    revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                }
                let kvs = resp.kvs();
                for kv in kvs {
                    if let Some(info) = self.decode(kv.key(), kv.value()) {
                        out.push(info);
                    }
                }
                match (resp.more(), kvs.last()) {
                    (true, Some(last)) => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => return Ok((out, revision)),
                }
            }
        }
    }

    /// The key of instance `id`: from our own index, else by scanning the key names.
    pub(crate) async fn find_key(&self, id: &str) -> Result<Option<String>> {
        let known = self.ours.lock().get(id).map(|s| s.name.clone());
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
                let all = all.clone();
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

    /// Grants a new lease and puts every instance of ours again with it.
    pub(crate) async fn regrant(&self) -> Result<()> {
        let timeout = self.policy.attempt_timeout;
        let ttl = self.config.ttl_secs();
        let mut lease_client = self.client.lease_client();
        let granted = tokio::time::timeout(timeout, lease_client.grant(ttl, None))
            .await
            .map_err(|_| Error::timeout("etcd lease grant", timeout))?
            .map_err(error::convert)?;
        let new_id = granted.id();
        let _exclusive = self.gate.write().await;
        let ours: Vec<ServiceInfo> = self.ours.lock().values().cloned().collect();
        for chunk in ours.chunks(REPUT_BATCH) {
            let mut ops = Vec::with_capacity(chunk.len());
            for s in chunk {
                let value = s.to_json_vec()?;
                ops.push(TxnOp::put(
                    self.keys.instance(&s.name, &s.id),
                    value,
                    Some(PutOptions::new().with_lease(new_id)),
                ));
            }
            let mut kv = self.client.kv_client();
            tokio::time::timeout(timeout, kv.txn(Txn::new().and_then(ops)))
                .await
                .map_err(|_| Error::timeout("etcd re-register", timeout))?
                .map_err(error::convert)?;
        }
        let generation = self.lease.borrow().generation + 1;
        self.lease.send_replace(LeaseSlot {
            id: new_id,
            generation,
        });
        tracing::info!(
            target: "waypost::etcd",
            lease = new_id,
            instances = ours.len(),
            "new lease granted; instances registered again"
        );
        Ok(())
    }

    pub(crate) async fn revoke(&self) -> Result<()> {
        let id = self.lease_id();
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
    /// Revokes the lease once the mutations in flight have finished (so none lands after it),
    /// and forgets our instances.
    pub(crate) async fn release(&self) -> Result<()> {
        let revoked = {
            let _exclusive = self.gate.write().await;
            self.revoke().await
        };
        self.ours.lock().clear();
        if let Err(e) = &revoked {
            tracing::warn!(target: "waypost::etcd", error = %e, "lease revoke failed; instances expire after the TTL");
        }
        revoked
    }
}
