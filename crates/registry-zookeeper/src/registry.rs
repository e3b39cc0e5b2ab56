//! [`ZookeeperRegistry`]: the [`ServiceRegistry`] over ZooKeeper, and the state its tasks share.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use parking_lot::Mutex;
use tokio::sync::watch as channel;
use tracing::warn;
use waypost_core_types::observe::RegistryOp;
use waypost_core_types::quote::quoted;
use waypost_core_types::validate::{validate_key_part, MAX_ID_LEN, MAX_NAME_LEN};
use waypost_core_types::{
    Error, RegistryState, Result, Scope, ScopedHubs, ServiceInfo, ServiceRegistry,
    SharedWatchStream, StateCell, StateStream, Tasks, WatchStream,
};
use zookeeper_client::Client;

use crate::acl::AclPolicy;
use crate::codec::ForeignLog;
use crate::config::ZookeeperConfig;
use crate::error::BACKEND;
use crate::keys::Paths;
use crate::liveness::{self, Slot};
use crate::ops::{self, WriteMode};
use crate::watch;

/// A service registry on ZooKeeper.
///
/// Each instance is an ephemeral znode `<prefix>/<name>/<id>` holding its record in the
/// configured [`format`](ZookeeperConfig::format) (the Go-compatible [`ServiceInfo`] JSON by
/// default, or Curator's JSON as Spring Cloud Zookeeper writes it), so it lives exactly as long
/// as this registry's session. The parents are
/// persistent nodes. When the session expires, a supervisor gets a new one (capped, jittered
/// backoff, forever), creates our nodes again, replacing a stale node of the old session that
/// may still exist, and every watch stream receives a `Snapshot { reason: Reconnected }`. A
/// connection loss without expiry waits for the session to resume. [`state`](Self::state) tells
/// which of these is happening, and [`state_changes`](Self::state_changes) follows it.
///
/// With digest credentials, every node created is readable by anyone and writable only by the
/// same credentials; construction fails with [`Error::Auth`] when the prefix belongs to other
/// credentials.
pub struct ZookeeperRegistry {
    inner: Arc<Inner>,
    /// The session supervisor and the watch feeds. Owned here, not in `Inner` (which they hold),
    /// so that dropping the registry aborts them.
    tasks: Tasks,
}

impl fmt::Debug for ZookeeperRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZookeeperRegistry")
            .field("config", &self.inner.config)
            .field("state", &self.inner.state.get())
            .finish_non_exhaustive()
    }
}

/// State shared by the registry, its session supervisor and its watch feeds.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: ZookeeperConfig,
    pub(crate) paths: Paths,
    pub(crate) acl: AclPolicy,
    /// The current session.
    slot: channel::Sender<Slot>,
    /// What this registry registered, by id: restored after a session loss, removed by `close`.
    owned: Mutex<HashMap<String, ServiceInfo>>,
    /// Writes take it shared; restoring registrations in a new session takes it exclusively.
    pub(crate) gate: tokio::sync::RwLock<()>,
    pub(crate) state: StateCell,
    /// One hub per watched scope, each fed by one persistent recursive watch.
    pub(crate) hubs: ScopedHubs,
    foreign: ForeignLog,
    /// Whether the "per-instance TTLs are not enforced" notice was logged.
    warned_ttl: AtomicBool,
}

impl Inner {
    fn new(config: ZookeeperConfig, paths: Paths, acl: AclPolicy, client: Client) -> Self {
        let hubs = ScopedHubs::new(BACKEND, config.watch_buffer);
        Inner {
            config,
            paths,
            acl,
            slot: channel::Sender::new(Slot {
                client: Some(client),
                generation: 1,
            }),
            owned: Mutex::new(HashMap::new()),
            gate: tokio::sync::RwLock::new(()),
            state: StateCell::new(BACKEND),
            hubs,
            foreign: ForeignLog::default(),
            warned_ttl: AtomicBool::new(false),
        }
    }

    /// Logs once per registry that per-instance TTLs are not enforced here.
    fn note_ttl(&self, service: &ServiceInfo) {
        if !service.ttl.is_zero() && !self.warned_ttl.swap(true, Ordering::AcqRel) {
            warn!(
                id = %quoted(&service.id),
                session_timeout = ?self.config.session_timeout,
                "zookeeper: per-instance TTLs are not enforced; an instance lives as long as \
                 this registry's session (logged once)"
            );
        }
    }

    /// The client of the current session.
    ///
    /// # Errors
    /// `Closed` after `close`.
    pub(crate) fn client(&self) -> Result<Client> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        self.slot.borrow().client.clone().ok_or(Error::Closed)
    }

    /// The current session.
    pub(crate) fn slot(&self) -> Slot {
        self.slot.borrow().clone()
    }

    /// Follows the session as it is replaced.
    pub(crate) fn subscribe_slot(&self) -> channel::Receiver<Slot> {
        self.slot.subscribe()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.is_closed()
    }

    /// Publishes a new session.
    pub(crate) fn publish(&self, client: Client) {
        self.slot.send_modify(|s| {
            s.client = Some(client);
            s.generation += 1;
        });
    }

    /// Takes the session out (it closes once the last clone of its client is gone).
    fn take_session(&self) -> Option<Client> {
        let mut taken = None;
        self.slot.send_modify(|s| taken = s.client.take());
        taken
    }

    // --- what we registered ---

    pub(crate) fn owned(&self, id: &str) -> Option<ServiceInfo> {
        self.owned.lock().get(id).cloned()
    }

    fn own(&self, info: ServiceInfo) {
        self.owned.lock().insert(info.id.clone(), info);
    }

    fn disown(&self, id: &str) -> Option<ServiceInfo> {
        self.owned.lock().remove(id)
    }

    pub(crate) fn all_owned(&self) -> Vec<ServiceInfo> {
        self.owned.lock().values().cloned().collect()
    }

    /// Forgets what we registered and returns the paths of its nodes.
    fn take_owned_paths(&self) -> Vec<String> {
        self.owned
            .lock()
            .drain()
            .map(|(_, i)| self.paths.instance(&i.name, &i.id))
            .collect()
    }

    /// Decodes an instance node, or logs why it is skipped (one warning per path).
    pub(crate) fn decode(
        &self,
        path: &str,
        name: &str,
        id: &str,
        data: &[u8],
    ) -> Option<ServiceInfo> {
        match self
            .config
            .format
            .decode_among(crate::codec::FORMATS, name, id, data)
        {
            Ok(decoded) => Some(decoded.info),
            Err(problem) => {
                self.foreign.skip(path, &problem);
                None
            }
        }
    }
}

/// Deletes the nodes at `paths` that still belong to `client`'s session, within `limit`.
async fn remove_owned(client: &Client, paths: &[String], limit: Duration) -> Result<()> {
    let deletes = join_all(paths.iter().map(|p| ops::delete_own(client, p)));
    match tokio::time::timeout(limit, deletes).await {
        Ok(results) => results
            .into_iter()
            .find(Result::is_err)
            .unwrap_or(Ok(true))
            .map(|_| ()),
        Err(_) => Err(Error::timeout(
            format!("{BACKEND}: removing our instances"),
            limit,
        )),
    }
}

impl ZookeeperRegistry {
    /// Runs one call, timed and counted (see [`waypost_core_types::observe`]).
    async fn observe<T>(
        &self,
        op: RegistryOp,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.inner.state.metrics().observe(op, call).await
    }

    /// Validates `config`, establishes a session (bounded by
    /// [`connect_timeout`](ZookeeperConfig::connect_timeout)), creates the chroot and the prefix
    /// if missing, and starts the session supervisor. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// - [`Error::InvalidConfig`] for a bad config;
    /// - [`Error::Timeout`] when no session is established in time (no server reachable);
    /// - [`Error::Unavailable`] when the client gives up earlier;
    /// - [`Error::Auth`] when the server rejects the credentials or the prefix's ACL does not
    ///   let them register instances (wrong digest password).
    pub async fn connect(config: ZookeeperConfig) -> Result<Self> {
        config.validate()?;
        let paths = Paths::new(&config.prefix);
        let acl = AclPolicy::new(config.digest().is_some());
        let limit = config.connect_timeout;
        let client =
            match tokio::time::timeout(limit, liveness::establish(&config, &paths, acl)).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(Error::timeout(
                        format!(
                            "{BACKEND}: establishing a session with {}",
                            config.connect_string()
                        ),
                        limit,
                    ))
                }
            };
        tracing::debug!(
            backend = BACKEND,
            session = %client.session_id(),
            timeout = ?client.session_timeout(),
            "ZooKeeper session established"
        );
        let inner = Arc::new(Inner::new(config, paths, acl, client));
        let tasks = Tasks::new();
        tasks.spawn(liveness::supervise(Arc::clone(&inner)));
        Ok(ZookeeperRegistry { inner, tasks })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ZookeeperConfig {
        &self.inner.config
    }

    /// The id of the current ZooKeeper session (it changes after an expiry); `None` once closed.
    pub fn session_id(&self) -> Option<i64> {
        self.inner.slot().client.map(|c| c.session_id().0)
    }

    /// The session timeout the server granted (it may differ from the requested one); `None` once
    /// closed.
    pub fn negotiated_session_timeout(&self) -> Option<std::time::Duration> {
        self.inner.slot().client.map(|c| c.session_timeout())
    }

    fn client(&self) -> Result<zookeeper_client::Client> {
        self.inner.client()
    }
}

impl Drop for ZookeeperRegistry {
    /// Without `close`: the tasks are aborted (when `tasks` is dropped right after this), every
    /// watch stream ends, and one bounded clean-up task deletes our nodes and ends the session.
    fn drop(&mut self) {
        // Idempotent: also ends the streams when a `close` was cancelled half-way.
        self.inner.hubs.close();
        if self.inner.is_closed() {
            return;
        }
        self.inner.state.close();
        let paths = self.inner.take_owned_paths();
        let Some(client) = self.inner.take_session() else {
            return;
        };
        let bound = self.inner.config.session_timeout;
        self.tasks.cleanup_on_drop(bound, async move {
            if let Err(e) = remove_owned(&client, &paths, bound).await {
                tracing::debug!(backend = BACKEND, "clean-up of a dropped registry: {e}");
            }
            // The session ends with its last client.
            drop(client);
        });
    }
}

/// An id that fails validation can never have been registered.
fn known_id_shape(id: &str) -> Result<()> {
    validate_key_part("id", id, MAX_ID_LEN).map_err(|_| Error::NotFound(id.to_owned()))
}

#[async_trait]
impl ServiceRegistry for ZookeeperRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn register(&self, service: &ServiceInfo) -> Result<()> {
        self.observe(RegistryOp::Register, async {
            self.client()?;
            service.validate()?;
            self.inner.note_ttl(service);
            let _shared = self.inner.gate.read().await;
            let client = self.client()?;
            let previous = self.inner.owned(&service.id);
            let (stored, _) =
                ops::write_instance(&self.inner, &client, service, WriteMode::Upsert).await?;
            self.inner.own(stored);
            if let Some(prev) = previous.filter(|p| p.name != service.name) {
                // The id moved to another service name: remove the old node.
                ops::delete(&client, &self.inner.paths.instance(&prev.name, &prev.id)).await?;
            }
            Ok(())
        })
        .await
    }

    async fn deregister(&self, id: &str) -> Result<()> {
        self.observe(RegistryOp::Deregister, async {
            self.client()?;
            known_id_shape(id)?;
            let _shared = self.inner.gate.read().await;
            let client = self.client()?;
            let owned = self.inner.owned(id);
            let path = match &owned {
                Some(o) => Some(self.inner.paths.instance(&o.name, id)),
                None => ops::find(&self.inner, &client, id, None)
                    .await?
                    .map(|e| e.path),
            };
            let Some(path) = path else {
                return Err(Error::NotFound(id.to_owned()));
            };
            let existed = ops::delete(&client, &path).await?;
            self.inner.disown(id);
            if existed || owned.is_some() {
                Ok(())
            } else {
                Err(Error::NotFound(id.to_owned()))
            }
        })
        .await
    }

    async fn update(&self, service: &ServiceInfo) -> Result<()> {
        self.observe(RegistryOp::Update, async {
            self.client()?;
            service.validate()?;
            self.inner.note_ttl(service);
            let _shared = self.inner.gate.read().await;
            let client = self.client()?;
            let owned = self.inner.owned(&service.id);
            let hint = owned
                .as_ref()
                .map_or(service.name.as_str(), |o| o.name.as_str());
            let existing = ops::find(&self.inner, &client, &service.id, Some(hint)).await?;
            let stored = match existing {
                Some(e) if e.info.name == service.name => {
                    ops::write_instance(&self.inner, &client, service, WriteMode::MustExist)
                        .await
                        .map_err(|err| match err {
                            Error::NotFound(_) => Error::NotFound(service.id.clone()),
                            other => other,
                        })?
                        .0
                }
                Some(e) => {
                    // The instance moves to another service name; it keeps its creation time.
                    let mut moved = service.clone();
                    moved.created_at = e.info.created_at;
                    let (stored, _) =
                        ops::write_instance(&self.inner, &client, &moved, WriteMode::Upsert)
                            .await?;
                    ops::delete(&client, &e.path).await?;
                    stored
                }
                // Ours, but its node is missing while the session is being replaced.
                None if owned.is_some() => {
                    ops::write_instance(&self.inner, &client, service, WriteMode::Upsert)
                        .await?
                        .0
                }
                None => return Err(Error::NotFound(service.id.clone())),
            };
            self.inner.own(stored);
            Ok(())
        })
        .await
    }

    async fn renew(&self, id: &str) -> Result<()> {
        self.observe(RegistryOp::Renew, async {
            let client = self.client()?;
            known_id_shape(id)?;
            // Our instances live as long as our session: nothing to refresh, but a node that was
            // deleted behind our back (an operator, another tool) is put back.
            if let Some(info) = self.inner.owned(id) {
                let path = self.inner.paths.instance(&info.name, id);
                if ops::exists(&client, &path).await? {
                    return Ok(());
                }
                let _shared = self.inner.gate.read().await;
                let client = self.client()?;
                if self.inner.owned(id).is_some() {
                    ops::restore_all(&self.inner, &client, &[info]).await?;
                }
                return Ok(());
            }
            match ops::find(&self.inner, &client, id, None).await? {
                Some(_) => Ok(()),
                None => Err(Error::NotFound(id.to_owned())),
            }
        })
        .await
    }

    async fn get_service(&self, id: &str) -> Result<ServiceInfo> {
        self.observe(RegistryOp::Get, async {
            let client = self.client()?;
            known_id_shape(id)?;
            let hint = self.inner.owned(id).map(|o| o.name);
            ops::find(&self.inner, &client, id, hint.as_deref())
                .await?
                .map(|e| e.info)
                .ok_or_else(|| Error::NotFound(id.to_owned()))
        })
        .await
    }

    async fn list_services(&self) -> Result<Vec<ServiceInfo>> {
        self.observe(RegistryOp::List, async {
            let client = self.client()?;
            let mut all: Vec<ServiceInfo> = ops::list_all(&self.inner, &client)
                .await?
                .into_iter()
                .map(|e| e.info)
                .collect();
            all.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
            Ok(all)
        })
        .await
    }

    async fn list_instances(&self, name: &str) -> Result<Vec<ServiceInfo>> {
        self.observe(RegistryOp::List, async {
            let client = self.client()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            let mut all: Vec<ServiceInfo> = ops::list_service(&self.inner, &client, name)
                .await?
                .into_iter()
                .map(|e| e.info)
                .collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(all)
        })
        .await
    }

    async fn watch(&self) -> Result<WatchStream> {
        self.observe(RegistryOp::Watch, async {
            self.client()?;
            watch::subscribe(&self.inner, &self.tasks, Scope::All).await
        })
        .await
    }

    async fn watch_service(&self, name: &str) -> Result<WatchStream> {
        self.observe(RegistryOp::Watch, async {
            self.client()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            watch::subscribe(&self.inner, &self.tasks, Scope::Service(name.to_owned())).await
        })
        .await
    }

    async fn watch_service_shared(&self, name: &str) -> Result<SharedWatchStream> {
        self.observe(RegistryOp::Watch, async {
            self.client()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            let scope = Scope::Service(name.to_owned());
            watch::subscribe_shared(&self.inner, &self.tasks, scope).await
        })
        .await
    }

    fn state(&self) -> RegistryState {
        self.inner.state.get()
    }

    fn state_changes(&self) -> StateStream {
        self.inner.state.changes()
    }

    async fn close(&self) -> Result<()> {
        if self.inner.is_closed() {
            return Ok(());
        }
        let client = self.inner.slot().client;
        self.inner.state.close();
        let paths = self.inner.take_owned_paths();
        let result = match &client {
            Some(client) => remove_owned(client, &paths, self.inner.config.session_timeout).await,
            None => Ok(()),
        };
        self.tasks.shutdown().await;
        self.inner.hubs.close();
        drop(client);
        drop(self.inner.take_session());
        result
    }
}
