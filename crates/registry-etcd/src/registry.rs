//! [`EtcdRegistry`]: the [`ServiceRegistry`] on etcd v3.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp,
};
use parking_lot::Mutex;
use tokio::sync::RwLock;
use waypost_core_types::observe::RegistryOp;
use waypost_core_types::validate::{validate_key_part, MAX_ID_LEN, MAX_NAME_LEN};
use waypost_core_types::{
    Error, RegistryState, Result, Scope, ScopedHubs, ServiceInfo, ServiceRegistry,
    SharedWatchStream, StateCell, StateStream, Tasks, Timestamp, WatchStream,
};

use crate::config::EtcdConfig;
use crate::error::{self, BACKEND};
use crate::keys::KeyLayout;
use crate::lease::{self, Lease, Leases, Ours, Owned};
use crate::ops::Inner;
use crate::retry::{AttemptError, RetryPolicy};
use waypost_core_types::backoff::Backoff;

/// A service registry on etcd v3.
///
/// Instances live at `<prefix>/<name>/<id>` as the Go module's JSON, attached to a lease that a
/// task owned by the registry keeps alive: the registry's default lease (TTL
/// [`EtcdConfig::ttl`]) for instances without a TTL of their own, and one lease per other
/// distinct [`ServiceInfo::ttl`], revoked when its last instance is deregistered. If a lease is
/// lost (it expired during an outage, was revoked, or the cluster was reset) the registry grants
/// a new one and writes its instances again, with capped jittered backoff, for as long as it
/// lives; instances of ours deleted while their lease lives (an operator's `etcdctl del`, a
/// restored backup) are put back. [`state`](ServiceRegistry::state) is `Recovering` while any
/// of that is under way, and `Connected` only when every lease is alive and every instance of
/// ours is in place. Calls retry transient errors (a dead member, an election) until
/// [`EtcdConfig::request_timeout`]. [`close`](ServiceRegistry::close) revokes the leases, so
/// its instances vanish at once; dropping the registry without `close` stops its tasks and
/// revokes the leases in the background (when dropped on a tokio runtime; otherwise they expire
/// after their TTL).
pub struct EtcdRegistry {
    inner: Arc<Inner>,
    /// The keep-alive and the watch feeds; dropped (aborted) with the registry.
    tasks: Tasks,
}

impl fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("config", &self.inner.config)
            .field("lease", &self.inner.lease_id())
            .field("state", &self.inner.state.get())
            .finish()
    }
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::InvalidConfig(format!("etcd: cannot read {what} {}: {e}", path.display()))
    })
}

fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_require_leader(true)
        .with_auto_token_refresh(true);
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        opts = opts.with_user(user.clone(), password.expose());
    }
    if let Some(tls) = &config.tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca_file {
            t = t.ca_certificate(Certificate::from_pem(read_pem(ca, "CA certificate")?));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            t = t.identity(Identity::from_pem(
                read_pem(cert, "client certificate")?,
                read_pem(key, "client key")?,
            ));
        }
        if let Some(domain) = &tls.domain_name {
            t = t.domain_name(domain.clone());
        }
        opts = opts.with_tls(t);
    }
    Ok(opts)
}

impl EtcdRegistry {
    /// Runs one call, timed and counted (see [`waypost_core_types::observe`]).
    async fn observe<T>(
        &self,
        op: RegistryOp,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.inner.state.metrics().observe(op, call).await
    }

    /// Connects to the cluster, proves the connection by granting the registry's lease, and
    /// starts the keep-alive task.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad configuration (nothing is contacted),
    /// [`Error::Auth`] when etcd rejects the credentials, and [`Error::Unavailable`] naming the
    /// endpoints when no member answered within [`EtcdConfig::connect_timeout`].
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        config.validate()?;
        let opts = connect_options(&config)?;
        let limit = config.connect_timeout;
        let endpoints = config.endpoints.clone();
        let ttl = config.ttl_secs();
        let last_error = Mutex::new(String::from("no answer"));
        let attempt = async {
            let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
            loop {
                let result = async {
                    let client = Client::connect(&endpoints, Some(opts.clone())).await?;
                    let lease = client.lease_client().grant(ttl, None).await?;
                    Ok::<_, etcd_client::Error>((client, lease.id()))
                }
                .await;
                match result {
                    Ok(ok) => return Ok(ok),
                    Err(e) if error::is_transient(&e) => {
                        *last_error.lock() = e.to_string();
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(e) => return Err(error::convert(e)),
                }
            }
        };
        let (client, lease_id) = match tokio::time::timeout(limit, attempt).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "{BACKEND}: no member of {endpoints:?} answered within {limit:?} \
                     (last error: {})",
                    last_error.lock()
                )))
            }
        };
        let tasks = Tasks::new();
        let inner = Arc::new(Inner {
            client,
            keys: KeyLayout::new(&config.prefix, config.format),
            policy: RetryPolicy::new(config.request_timeout),
            hubs: ScopedHubs::new(BACKEND, config.watch_buffer),
            config,
            stop: tasks.signal(),
            ours: Mutex::new(Ours::default()),
            gate: RwLock::new(()),
            leases: Leases::new(Lease::new(ttl, lease_id)),
            troubles: crate::ops::Troubles::default(),
            guarding: AtomicBool::new(false),
            verifying: tokio::sync::Mutex::new(()),
            recheck: tokio::sync::Notify::new(),
            state: StateCell::new(BACKEND),
        });
        let default_lease = inner.leases.default_lease().clone();
        tasks.spawn(crate::liveness::run(inner.clone(), default_lease));
        tracing::debug!(target: "waypost::etcd", lease = lease_id, "registry connected");
        Ok(EtcdRegistry { inner, tasks })
    }

    /// The configuration this registry was built from.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    /// The id of the registry's default lease, the one instances without a TTL of their own
    /// are attached to right now (it changes when a lost lease is replaced).
    pub fn lease_id(&self) -> i64 {
        self.inner.lease_id()
    }

    /// The lease of `ttl_secs` (rounded up to whole seconds), granting it and starting its
    /// keep-alive if there is none. The caller holds the gate shared, so the lease cannot be
    /// released before the instance using it is recorded.
    async fn lease_for(&self, ttl_secs: i64) -> std::result::Result<Arc<Lease>, AttemptError> {
        let inner = &self.inner;
        if let Some(lease) = inner.leases.get(ttl_secs) {
            return Ok(lease);
        }
        let granted = inner.client.lease_client().grant(ttl_secs, None).await?;
        let (lease, fresh) = inner.leases.insert(Lease::new(ttl_secs, granted.id()));
        if fresh {
            tracing::debug!(target: "waypost::etcd", lease = granted.id(), ttl_secs, "lease granted for a TTL of its own");
            self.tasks
                .spawn(crate::liveness::run(inner.clone(), lease.clone()));
        } else {
            // A concurrent registration granted one first.
            let _ = inner.revoke_id(granted.id()).await;
        }
        Ok(lease)
    }

    /// Starts watching deletions of our keys (once, with the first registration).
    fn guard(&self) {
        if !self.inner.guarding.swap(true, Ordering::AcqRel) {
            self.tasks
                .spawn(crate::guard::watch_deletions(self.inner.clone()));
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Shared by `register` (upsert) and `update` (must exist).
    async fn put(&self, service: &ServiceInfo, must_exist: bool) -> Result<()> {
        self.check_open()?;
        service.validate()?;
        let inner = &*self.inner;
        let lease_secs = lease::instance_lease_secs(service, inner.leases.default_secs())?;
        let mut wanted = service.clone();
        if wanted.ttl.is_zero() {
            wanted.ttl = inner.config.ttl;
        }
        let key = inner.keys.instance(&wanted.name, &wanted.id);
        // The same id registered before under another name: move it.
        let old_key = inner
            .ours
            .lock()
            .get(&wanted.id)
            .filter(|s| s.info.name != wanted.name)
            .map(|s| inner.keys.instance(&s.info.name, &s.info.id));
        let what = if must_exist { "update" } else { "register" };
        let result = inner
            .call(what, || {
                let wanted = wanted.clone();
                let key = key.clone();
                let old_key = old_key.clone();
                async move {
                    let _shared = inner.gate.read().await;
                    let current = inner.read(&key).await?;
                    if must_exist && !current.exists {
                        return Err(AttemptError::Final(Error::NotFound(wanted.id.clone())));
                    }
                    let mut stored = wanted;
                    stored.stamp(Timestamp::now(), current.info.as_ref());
                    let value = inner.encode(&stored)?;
                    // `update` of an instance another process registered keeps it on that
                    // process's lease: its liveness stays tied to its owner, and this registry
                    // does not re-register it after a lease loss. `register` takes ownership.
                    let foreign = must_exist
                        && !inner.leases.owns(current.lease)
                        && !inner.ours.lock().contains(&stored.id);
                    let put_opts = if foreign {
                        PutOptions::new().with_ignore_lease()
                    } else {
                        PutOptions::new().with_lease(self.lease_for(lease_secs).await?.id())
                    };
                    let mod_rev = current.mod_revision;
                    let mut ops = vec![TxnOp::put(key.as_str(), value, Some(put_opts))];
                    if let Some(old) = &old_key {
                        ops.push(TxnOp::delete(old.as_str(), None));
                    }
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            key.as_str(),
                            CompareOp::Equal,
                            mod_rev,
                        )])
                        .and_then(ops);
                    let mut kv = inner.client.kv_client();
                    let resp = kv.txn(txn).await?;
                    if !resp.succeeded() {
                        return Err(AttemptError::Conflict);
                    }
                    if !foreign {
                        inner.ours.lock().insert(Owned {
                            info: stored,
                            lease_secs,
                        });
                    }
                    Ok(!foreign)
                }
            })
            .await;
        // A TTL that changed, or a lease granted for a call that then failed, may leave a lease
        // without instances.
        inner.release_idle_leases().await;
        if result? {
            self.guard();
        }
        Ok(())
    }
}

#[async_trait]
impl ServiceRegistry for EtcdRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn register(&self, service: &ServiceInfo) -> Result<()> {
        self.observe(RegistryOp::Register, async {
            self.put(service, false).await
        })
        .await
    }

    async fn deregister(&self, id: &str) -> Result<()> {
        self.observe(RegistryOp::Deregister, async {
            self.check_open()?;
            validate_key_part("id", id, MAX_ID_LEN)?;
            let inner = &*self.inner;
            let Some(key) = inner.find_key(id).await? else {
                inner.ours.lock().remove(id);
                inner.release_idle_leases().await;
                return Err(Error::NotFound(id.to_owned()));
            };
            // Forgotten before the delete, so the watch of deletions does not take our own
            // deregistration for a loss; remembered again if the delete fails.
            let owned = inner.ours.lock().remove(id);
            let was_ours = owned.is_some();
            let deleted = inner
                .call("deregister", || {
                    let key = key.clone();
                    async move {
                        let _shared = inner.gate.read().await;
                        let mut kv = inner.client.kv_client();
                        let r = kv.delete(key, None::<DeleteOptions>).await?;
                        Ok(r.deleted())
                    }
                })
                .await;
            if let (Err(_), Some(owned)) = (&deleted, owned) {
                if !inner.is_closed() {
                    inner.ours.lock().insert(owned);
                }
            }
            inner.release_idle_leases().await;
            // Ours, and gone meanwhile (its lease released by a concurrent call): deregistered.
            if deleted? == 0 && !was_ours {
                return Err(Error::NotFound(id.to_owned()));
            }
            Ok(())
        })
        .await
    }

    async fn update(&self, service: &ServiceInfo) -> Result<()> {
        self.observe(RegistryOp::Update, async { self.put(service, true).await })
            .await
    }

    async fn renew(&self, id: &str) -> Result<()> {
        self.observe(RegistryOp::Renew, async {
            self.check_open()?;
            validate_key_part("id", id, MAX_ID_LEN)?;
            match self.inner.find_key(id).await? {
                Some(_) => {
                    let secs = self.inner.ours.lock().get(id).map(|o| o.lease_secs);
                    if let Some(lease) = secs.and_then(|s| self.inner.leases.get(s)) {
                        lease.renew_now.notify_one();
                    }
                    Ok(())
                }
                None => Err(Error::NotFound(id.to_owned())),
            }
        })
        .await
    }

    async fn get_service(&self, id: &str) -> Result<ServiceInfo> {
        self.observe(RegistryOp::Get, async {
            self.check_open()?;
            validate_key_part("id", id, MAX_ID_LEN)?;
            let inner = &*self.inner;
            let Some(key) = inner.find_key(id).await? else {
                return Err(Error::NotFound(id.to_owned()));
            };
            let found = inner
                .call("get", || {
                    let key = key.clone();
                    async move { inner.read(&key).await }
                })
                .await?;
            found.info.ok_or_else(|| Error::NotFound(id.to_owned()))
        })
        .await
    }

    async fn list_services(&self) -> Result<Vec<ServiceInfo>> {
        self.observe(RegistryOp::List, async {
            self.check_open()?;
            Ok(self.inner.list_range(&self.inner.keys.all()).await?.0)
        })
        .await
    }

    async fn list_instances(&self, name: &str) -> Result<Vec<ServiceInfo>> {
        self.observe(RegistryOp::List, async {
            self.check_open()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            Ok(self
                .inner
                .list_range(&self.inner.keys.service(name))
                .await?
                .0)
        })
        .await
    }

    async fn watch(&self) -> Result<WatchStream> {
        self.observe(RegistryOp::Watch, async {
            self.check_open()?;
            crate::watch::subscribe(&self.inner, &self.tasks, Scope::All).await
        })
        .await
    }

    async fn watch_service(&self, name: &str) -> Result<WatchStream> {
        self.observe(RegistryOp::Watch, async {
            self.check_open()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            crate::watch::subscribe(&self.inner, &self.tasks, Scope::Service(name.to_owned())).await
        })
        .await
    }

    async fn watch_service_shared(&self, name: &str) -> Result<SharedWatchStream> {
        self.observe(RegistryOp::Watch, async {
            self.check_open()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            let scope = Scope::Service(name.to_owned());
            crate::watch::subscribe_shared(&self.inner, &self.tasks, scope).await
        })
        .await
    }

    fn state(&self) -> RegistryState {
        self.inner.state.get()
    }

    fn state_changes(&self) -> StateStream {
        self.inner.state.changes()
    }

    fn default_ttl(&self) -> Option<Duration> {
        Some(self.inner.config.ttl)
    }

    async fn close(&self) -> Result<()> {
        if !self.stop() {
            return Ok(());
        }
        // The keep-alives stop before the revokes, so they cannot race them with new grants.
        self.tasks.shutdown().await;
        self.inner.release().await
    }
}

impl EtcdRegistry {
    /// Marks the registry closed and ends every watch stream; every later call fails with
    /// `Closed`. `false` if it was stopped already.
    fn stop(&self) -> bool {
        // The state cell says which of two concurrent stops closed it.
        if !self.inner.state.close() {
            return false;
        }
        self.inner.hubs.close();
        true
    }
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        if !self.stop() || self.inner.ours.lock().is_empty() {
            return;
        }
        // Dropped without `close`: the tasks abort with `self.tasks`, and the leases are revoked
        // in a bounded clean-up task, so our instances go now rather than after the TTL.
        let inner = self.inner.clone();
        let bound = inner.config.request_timeout;
        self.tasks.cleanup_on_drop(bound, async move {
            let _ = inner.release().await;
        });
    }
}
