//! [`ZookeeperRegistry`]: the [`ServiceRegistry`] over ZooKeeper.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;
use waypost_core_types::validate::{validate_key_part, MAX_ID_LEN, MAX_NAME_LEN};
use waypost_core_types::{Error, RegistryState, Result, ServiceInfo, ServiceRegistry, WatchStream};

use crate::acl::AclPolicy;
use crate::config::ZookeeperConfig;
use crate::errors::BACKEND;
use crate::ops::{self, WriteMode};
use crate::paths::Paths;
use crate::session::{self, Inner};
use crate::watch::{self, Scope};

/// A service registry on ZooKeeper.
///
/// Each instance is an ephemeral znode `<prefix>/<name>/<id>` holding the Go-compatible
/// [`ServiceInfo`] JSON, so it lives exactly as long as this registry's session. The parents are
/// persistent nodes. When the session expires, a supervisor gets a new one (capped, jittered
/// backoff, forever), creates our nodes again, replacing a stale node of the old session that
/// may still exist, and every watch stream receives a `Snapshot { reason: Reconnected }`. A
/// connection loss without expiry waits for the session to resume. [`state`](Self::state) tells
/// which of these is happening.
///
/// With digest credentials, every node created is readable by anyone and writable only by the
/// same credentials; construction fails with [`Error::Auth`] when the prefix belongs to other
/// credentials.
pub struct ZookeeperRegistry {
    inner: Arc<Inner>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for ZookeeperRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZookeeperRegistry")
            .field("config", &self.inner.config)
            .field("state", &self.inner.state())
            .finish_non_exhaustive()
    }
}

impl ZookeeperRegistry {
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
            match tokio::time::timeout(limit, session::establish(&config, &paths, acl)).await {
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
        let supervisor = tokio::spawn(session::supervise(Arc::clone(&inner)));
        Ok(ZookeeperRegistry { inner, supervisor })
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
    fn drop(&mut self) {
        // Stop the background tasks; the session closes with its last client and ZooKeeper
        // removes our ephemeral nodes.
        self.inner.shut_down();
        self.supervisor.abort();
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
        self.client()?;
        service.validate()?;
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
    }

    async fn deregister(&self, id: &str) -> Result<()> {
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
    }

    async fn update(&self, service: &ServiceInfo) -> Result<()> {
        self.client()?;
        service.validate()?;
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
                    ops::write_instance(&self.inner, &client, &moved, WriteMode::Upsert).await?;
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
    }

    async fn renew(&self, id: &str) -> Result<()> {
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
    }

    async fn get_service(&self, id: &str) -> Result<ServiceInfo> {
        let client = self.client()?;
        known_id_shape(id)?;
        let hint = self.inner.owned(id).map(|o| o.name);
        ops::find(&self.inner, &client, id, hint.as_deref())
            .await?
            .map(|e| e.info)
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    async fn list_services(&self) -> Result<Vec<ServiceInfo>> {
        let client = self.client()?;
        let mut all: Vec<ServiceInfo> = ops::list_all(&self.inner, &client)
            .await?
            .into_iter()
            .map(|e| e.info)
            .collect();
        all.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(all)
    }

    async fn list_instances(&self, name: &str) -> Result<Vec<ServiceInfo>> {
        let client = self.client()?;
        validate_key_part("name", name, MAX_NAME_LEN)?;
        let mut all: Vec<ServiceInfo> = ops::list_service(&self.inner, &client, name)
            .await?
            .into_iter()
            .map(|e| e.info)
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    async fn watch(&self) -> Result<WatchStream> {
        self.client()?;
        watch::start(Arc::clone(&self.inner), Scope::All).await
    }

    async fn watch_service(&self, name: &str) -> Result<WatchStream> {
        self.client()?;
        validate_key_part("name", name, MAX_NAME_LEN)?;
        watch::start(Arc::clone(&self.inner), Scope::Service(name.to_owned())).await
    }

    fn state(&self) -> RegistryState {
        self.inner.state()
    }

    async fn close(&self) -> Result<()> {
        let client = self.inner.slot().client;
        if !self.inner.mark_closed() {
            return Ok(());
        }
        let owned = self.inner.take_owned();
        let mut result = Ok(());
        if let Some(client) = client {
            let paths: Vec<String> = owned
                .iter()
                .map(|i| self.inner.paths.instance(&i.name, &i.id))
                .collect();
            let limit = self.inner.config.session_timeout;
            let deletes = join_all(paths.iter().map(|p| ops::delete_own(&client, p)));
            match tokio::time::timeout(limit, deletes).await {
                Ok(results) => {
                    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                        result = Err(e);
                    }
                }
                Err(_) => {
                    result = Err(Error::timeout(
                        format!("{BACKEND}: removing our instances on close"),
                        limit,
                    ))
                }
            }
        }
        self.inner.shut_down();
        self.supervisor.abort();
        result
    }
}
