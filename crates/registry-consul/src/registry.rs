//! [`ConsulRegistry`]: the [`ServiceRegistry`] on a Consul agent.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use http::{Method, StatusCode};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::Notify;
use tracing::{debug, info, warn};
use waypost_core_types::observe::RegistryOp;
use waypost_core_types::validate::{validate_key_part, MAX_NAME_LEN};
use waypost_core_types::{
    Error, Health, RegistryState, Result, Scope, ServiceInfo, ServiceRegistry, SharedWatchStream,
    StateCell, StateStream, Tasks, Timestamp, WatchStream,
};

use crate::client::{enc, ConsulClient, BACKEND};
use crate::codec::{self, check_id, META_CREATED, META_HEALTH, META_PREFIX};
use crate::config::ConsulConfig;
use crate::identity::{not_ours_to_remove, Instance, InstanceRef};
use crate::read::{infos, read_instances, read_names, Filter};
use crate::watch::{WatchSettings, Watches};

/// A service registry on a Consul agent.
///
/// Instances are registered through the local agent with a TTL check that a task of this
/// registry passes at a third of the TTL; reads and watches use the cluster-wide catalog and
/// health endpoints. See the [crate documentation](crate) for the mapping.
pub struct ConsulRegistry {
    inner: Arc<Inner>,
    /// The keep-alive and watch feed tasks. They hold `inner` (or its watches), never the other
    /// way round, so dropping the registry drops (and aborts) them.
    tasks: Tasks,
}

/// What the registry and its tasks share.
pub(crate) struct Inner {
    pub(crate) cfg: ConsulConfig,
    pub(crate) client: ConsulClient,
    filter: Filter,
    pub(crate) watches: Arc<Watches>,
    /// What this registry registered (stamped), by id.
    pub(crate) owned: Mutex<BTreeMap<String, ServiceInfo>>,
    pub(crate) state: StateCell,
    /// Serialises writes to the agent (so a re-registration cannot resurrect a deregistered id).
    pub(crate) writes: tokio::sync::Mutex<()>,
    /// Wakes the keep-alive after a registration.
    pub(crate) kick: Notify,
    /// The local agent's node name, once asked for (`GET /v1/agent/self`).
    node_name: tokio::sync::OnceCell<String>,
}

impl fmt::Debug for ConsulRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulRegistry")
            .field("agent", &self.inner.client.base())
            .field("config", &self.inner.cfg)
            .field("registered", &self.inner.owned.lock().len())
            .field("state", &self.inner.state.get())
            .finish()
    }
}

/// The part of `GET /v1/agent/service/:id` we use.
#[derive(Debug, Deserialize)]
struct AgentService {
    #[serde(rename = "Service", default)]
    service: String,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
}

impl ConsulRegistry {
    /// Runs one call, timed and counted (see [`waypost_core_types::observe`]).
    async fn observe<T>(
        &self,
        op: RegistryOp,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.inner.state.metrics().observe(op, call).await
    }

    /// Connects to the agent: validates the configuration and checks, within
    /// `connect_timeout`, that the agent answers (`GET /v1/status/leader`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`], [`Error::Unavailable`] or [`Error::Timeout`] when the agent
    /// cannot be reached, [`Error::Auth`] when it refuses the token.
    pub async fn connect(cfg: ConsulConfig) -> Result<Self> {
        cfg.validate()?;
        let client = ConsulClient::new(&cfg)?;
        let limit = cfg.connect_timeout;
        let probe = client.send(Method::GET, "/v1/status/leader", None, Some(limit));
        let reply = tokio::time::timeout(limit, probe).await.map_err(|_| {
            Error::timeout(format!("connecting to consul at {}", client.base()), limit)
        })??;
        if reply.status != StatusCode::OK {
            return Err(reply.error("checking the agent"));
        }
        match reply.json::<String>("checking the agent") {
            Ok(leader) if leader.is_empty() => {
                warn!(agent = %client.base(), "consul: the cluster has no leader right now")
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Error::Unavailable(format!(
                    "{} does not look like a Consul agent: {e}",
                    client.base()
                )))
            }
        }
        let filter = Filter {
            prefix: cfg.prefix.clone(),
            foreign: cfg.foreign_services,
            include_consul: cfg.include_consul_service,
        };
        let watches = Watches::new(
            client.clone(),
            filter.clone(),
            WatchSettings {
                wait: cfg.watch_wait,
                min_interval: cfg.watch_min_interval,
                backoff_initial: cfg.retry_initial_backoff,
                backoff_max: cfg.retry_max_backoff,
                buffer: cfg.watch_buffer,
            },
        );
        let inner = Arc::new(Inner {
            cfg,
            client,
            filter,
            watches: Arc::new(watches),
            owned: Mutex::new(BTreeMap::new()),
            state: StateCell::new(BACKEND),
            writes: tokio::sync::Mutex::new(()),
            kick: Notify::new(),
            node_name: tokio::sync::OnceCell::new(),
        });
        let tasks = Tasks::new();
        tasks.spawn(crate::liveness::run(Arc::clone(&inner)));
        info!(agent = %inner.client.base(), "consul: registry connected");
        Ok(ConsulRegistry { inner, tasks })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ConsulConfig {
        &self.inner.cfg
    }

    /// The ids this registry registered and keeps alive.
    pub fn registered_ids(&self) -> Vec<String> {
        self.inner.owned.lock().keys().cloned().collect()
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.state.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }
}

/// Dropped without `close`: the tasks are aborted (with `self.tasks`), every watch stream ends,
/// and one bounded clean-up task deregisters what this registry registered.
impl Drop for ConsulRegistry {
    fn drop(&mut self) {
        let inner = &self.inner;
        if inner.state.is_closed() {
            return;
        }
        inner.state.close();
        inner.watches.close();
        let ids: Vec<String> = std::mem::take(&mut *inner.owned.lock())
            .into_keys()
            .collect();
        if ids.is_empty() {
            return;
        }
        let client = inner.client.clone();
        let bound = inner.cfg.request_timeout;
        let started = self.tasks.cleanup_on_drop(bound, async move {
            // Errors are logged inside; nobody is left to report them to.
            let _ = deregister_all(&client, ids).await;
        });
        if !started {
            debug!(
                "consul: registry dropped outside a runtime; its instances expire after their TTL"
            );
        }
    }
}

/// Deregisters `ids` from the agent (an id it no longer knows counts as done); the first error,
/// after trying every id.
async fn deregister_all(client: &ConsulClient, ids: Vec<String>) -> Result<()> {
    let mut first_err = None;
    for id in ids {
        let r = client
            .put(&format!("/v1/agent/service/deregister/{}", enc(&id)), None)
            .await;
        match r {
            Ok(r) if r.status == StatusCode::OK || r.status == StatusCode::NOT_FOUND => {}
            Ok(r) => {
                let e = r.error(&format!("deregistering `{id}` on close"));
                warn!("consul: {e}");
                first_err.get_or_insert(e);
            }
            Err(e) => {
                warn!(id, "consul: deregistering on close failed: {e}");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The shortest TTL check: a TTL that rounds to `0s` would be refused by Consul.
pub(crate) const MIN_CHECK_TTL: Duration = Duration::from_millis(100);
/// The longest TTL check: Consul reads it as a Go duration (at most about 292 years), and an
/// instance whose registrant died should not stay listed for longer than a day. A longer TTL
/// (`Duration::MAX` included) is clamped to this; the heartbeat still runs at a third of it.
pub(crate) const MAX_CHECK_TTL: Duration = Duration::from_secs(24 * 3600);

impl Inner {
    /// The TTL of an instance's check: its own, else the configured one, kept within
    /// [`MIN_CHECK_TTL`]..=[`MAX_CHECK_TTL`].
    pub(crate) fn effective_ttl(&self, info: &ServiceInfo) -> Duration {
        let ttl = if info.ttl.is_zero() {
            self.cfg.ttl
        } else {
            info.ttl
        };
        ttl.clamp(MIN_CHECK_TTL, MAX_CHECK_TTL)
    }

    /// `GET /v1/agent/service/:id`; `None` for an unknown id.
    async fn agent_service(&self, id: &str) -> Result<Option<AgentService>> {
        let reply = self
            .client
            .get(&format!("/v1/agent/service/{}", enc(id)))
            .await?;
        match reply.status {
            StatusCode::OK => Ok(Some(reply.json("reading an agent service")?)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(reply.error("reading an agent service")),
        }
    }

    /// Registers `info` (validated and stamped) with the agent and, when the agent already had
    /// it (`existed`), sets its check status: a re-registration keeps the old status, while a
    /// new check starts with the `Status` of the body. The caller holds `writes`.
    pub(crate) async fn put_registration(&self, info: &ServiceInfo, existed: bool) -> Result<()> {
        let body = codec::registration(
            info,
            &self.cfg.prefix,
            self.effective_ttl(info),
            self.cfg.deregister_critical_after,
        )?;
        let body = serde_json::to_vec(&body).map_err(|e| Error::Codec(e.to_string()))?;
        let reply = self
            .client
            .put(
                "/v1/agent/service/register?replace-existing-checks",
                Some(body),
            )
            .await?;
        match reply.status {
            StatusCode::OK => {}
            StatusCode::BAD_REQUEST => {
                return Err(Error::InvalidInstance(format!(
                    "consul refused the registration of `{}`: {}",
                    info.id,
                    reply.text()
                )))
            }
            _ => return Err(reply.error(&format!("registering `{}`", info.id))),
        }
        if !existed {
            return Ok(());
        }
        // Re-registering keeps a check's old status: set the one we mean now.
        match self.pass_check(&info.id, info.health).await? {
            CheckOutcome::Done => Ok(()),
            CheckOutcome::Lost(why) => Err(Error::backend_msg(
                BACKEND,
                format!(
                    "the check of `{}` vanished right after registering: {why}",
                    info.id
                ),
            )),
        }
    }

    /// Passes (or warns) the TTL check of `id`.
    pub(crate) async fn pass_check(&self, id: &str, health: Health) -> Result<CheckOutcome> {
        let path = format!(
            "/v1/agent/check/{}/{}?note={}",
            codec::ttl_endpoint_for(health),
            enc(&check_id(id)),
            enc(&format!("waypost: {health}"))
        );
        let reply = self.client.put(&path, None).await?;
        let text = reply.text();
        match reply.status {
            StatusCode::OK => Ok(CheckOutcome::Done),
            StatusCode::NOT_FOUND => Ok(CheckOutcome::Lost(text)),
            StatusCode::INTERNAL_SERVER_ERROR
                if text.contains("does not have associated TTL")
                    || text.contains("Unknown check") =>
            {
                Ok(CheckOutcome::Lost(text))
            }
            _ => Err(reply.error(&format!("passing the check of `{id}`"))),
        }
    }

    async fn upsert(&self, service: &ServiceInfo, must_exist: bool) -> Result<()> {
        service.validate()?;
        // Check what cannot fit Consul before any request.
        codec::encode_meta(service, &self.cfg.prefix)?;
        let owned_prev = self.owned.lock().get(&service.id).cloned();
        let prev_created = match owned_prev {
            Some(p) => Some(p.created_at),
            None => match self.agent_service(&service.id).await? {
                Some(a) => {
                    let meta = a.meta.unwrap_or_default();
                    let ours = meta.get(META_PREFIX) == Some(&self.cfg.prefix);
                    Some(
                        meta.get(META_CREATED)
                            .filter(|_| ours)
                            .and_then(|t| Timestamp::parse(t).ok())
                            .unwrap_or_else(Timestamp::zero),
                    )
                }
                None => None,
            },
        };
        if must_exist && prev_created.is_none() {
            return Err(Error::NotFound(service.id.clone()));
        }
        let mut info = service.clone();
        let now = Timestamp::now();
        info.created_at = match prev_created {
            Some(t) if !t.is_zero() => t,
            _ => now,
        };
        info.updated_at = now;
        info.last_check = now;
        {
            let _w = self.writes.lock().await;
            if self.state.is_closed() {
                return Err(Error::Closed);
            }
            self.put_registration(&info, prev_created.is_some()).await?;
            self.owned.lock().insert(info.id.clone(), info.clone());
        }
        self.kick.notify_one();
        self.watches.refresh(&info.name).await;
        Ok(())
    }

    /// The instance `r` names, wherever it runs: first under the name the local agent knows
    /// its service ID by, then through every service of the catalog.
    async fn find(&self, r: InstanceRef<'_>) -> Result<Option<Instance>> {
        fn pick(r: InstanceRef<'_>, read: BTreeMap<String, Instance>) -> Option<Instance> {
            read.into_iter()
                .find(|(listed, i)| r.matches(listed, i))
                .map(|(_, i)| i)
        }
        let service_id = match r {
            InstanceRef::Plain(id) | InstanceRef::OnNode { id, .. } => id,
        };
        let name = self.owned.lock().get(service_id).map(|s| s.name.clone());
        let name = match name {
            Some(n) => Some(n),
            None => self.agent_service(service_id).await?.map(|a| a.service),
        };
        if let Some(name) = name {
            let (_, read) = read_instances(&self.client, &self.filter, &name, None).await?;
            if let Some(i) = pick(r, read) {
                return Ok(Some(i));
            }
        }
        // Registered through another agent: look through the cluster's catalog.
        let (_, names) = read_names(&self.client, &self.filter, None).await?;
        let mut reads = futures_util::stream::iter(names)
            .map(
                |name| async move { read_instances(&self.client, &self.filter, &name, None).await },
            )
            .buffer_unordered(8);
        while let Some(read) = reads.next().await {
            if let Some(i) = pick(r, read?.1) {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// The local agent's node name (`Config.NodeName` of `GET /v1/agent/self`, which needs
    /// `agent:read`), asked once.
    async fn local_node(&self) -> Result<&str> {
        let name = self
            .node_name
            .get_or_try_init(|| async {
                let what = "asking the agent for its node name";
                let reply = self.client.get("/v1/agent/self").await?;
                if reply.status != StatusCode::OK {
                    return Err(reply.error(what));
                }
                let v: serde_json::Value = reply.json(what)?;
                match v.pointer("/Config/NodeName").and_then(|n| n.as_str()) {
                    Some(n) if !n.is_empty() => Ok(n.to_owned()),
                    _ => Err(Error::backend_msg(
                        BACKEND,
                        format!("{what}: the answer has no Config.NodeName"),
                    )),
                }
            })
            .await?;
        Ok(name)
    }

    /// Deregisters service `id` of the local agent (an id it does not know is `NotFound`).
    async fn deregister_local(&self, id: &str, shown: &str) -> Result<()> {
        let name;
        {
            let _w = self.writes.lock().await;
            let owned = self.owned.lock().remove(id);
            name = match owned {
                Some(s) => s.name,
                // Older agents answer 200 for unknown ids: ask first.
                None => match self.agent_service(id).await? {
                    Some(a) => a.service,
                    None => return Err(Error::NotFound(shown.to_owned())),
                },
            };
            let reply = self
                .client
                .put(&format!("/v1/agent/service/deregister/{}", enc(id)), None)
                .await?;
            match reply.status {
                StatusCode::OK => {}
                // Already gone (the agent restarted): what we wanted.
                StatusCode::NOT_FOUND => {
                    debug!(id, "consul: deregister of an id the agent no longer knows")
                }
                _ => return Err(reply.error(&format!("deregistering `{id}`"))),
            }
        }
        self.watches.refresh(&name).await;
        Ok(())
    }

    /// Deregisters the instance with service ID `id` on `node`: through the local agent when
    /// it is this agent's node; through `PUT /v1/catalog/deregister` when the node runs no
    /// agent (a service registered through the catalog, which no agent would re-sync); and
    /// never for a service of another agent, whose anti-entropy sync would put it back.
    async fn deregister_on_node(&self, node: &str, id: &str, shown: &str) -> Result<()> {
        let r = InstanceRef::OnNode { node, id };
        let Some(found) = self.find(r).await? else {
            return Err(Error::NotFound(shown.to_owned()));
        };
        if found.agent_node {
            if self.local_node().await? == node {
                return self.deregister_local(id, shown).await;
            }
            return Err(not_ours_to_remove(node, shown));
        }
        let mut body = serde_json::json!({"Node": node, "ServiceID": id});
        if let Some(dc) = &self.cfg.datacenter {
            body["Datacenter"] = serde_json::json!(dc);
        }
        let body = serde_json::to_vec(&body).map_err(|e| Error::Codec(e.to_string()))?;
        {
            let _w = self.writes.lock().await;
            let reply = self
                .client
                .put("/v1/catalog/deregister", Some(body))
                .await?;
            if reply.status != StatusCode::OK {
                return Err(reply.error(&format!("deregistering `{shown}` from the catalog")));
            }
        }
        self.watches.refresh(&found.info.name).await;
        Ok(())
    }
}

/// The result of passing a TTL check.
pub(crate) enum CheckOutcome {
    Done,
    /// The agent does not know the check (it restarted or reaped the service).
    Lost(String),
}

#[async_trait]
impl ServiceRegistry for ConsulRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn register(&self, service: &ServiceInfo) -> Result<()> {
        self.observe(RegistryOp::Register, async {
            self.check_open()?;
            self.inner.upsert(service, false).await
        })
        .await
    }

    async fn deregister(&self, id: &str) -> Result<()> {
        self.observe(RegistryOp::Deregister, async {
            self.check_open()?;
            match InstanceRef::parse(id)? {
                InstanceRef::Plain(plain) => self.inner.deregister_local(plain, id).await,
                InstanceRef::OnNode {
                    node,
                    id: service_id,
                } => self.inner.deregister_on_node(node, service_id, id).await,
            }
        })
        .await
    }

    async fn update(&self, service: &ServiceInfo) -> Result<()> {
        self.observe(RegistryOp::Update, async {
            self.check_open()?;
            self.inner.upsert(service, true).await
        })
        .await
    }

    async fn renew(&self, id: &str) -> Result<()> {
        self.observe(RegistryOp::Renew, async {
            self.check_open()?;
            let inner = &self.inner;
            // `<node>/<id>` (as a shared id is listed) renews the local agent's `<id>` when `<node>`
            // is the agent's node; another node's instance is not this agent's to renew.
            let id = match InstanceRef::parse(id)? {
                InstanceRef::Plain(plain) => plain,
                InstanceRef::OnNode {
                    node,
                    id: service_id,
                } => {
                    if inner.local_node().await? != node {
                        return Err(Error::NotFound(id.to_owned()));
                    }
                    service_id
                }
            };
            let owned = inner.owned.lock().get(id).cloned();
            let health = match &owned {
                Some(s) => s.health,
                None => match inner.agent_service(id).await? {
                    Some(a) => a
                        .meta
                        .and_then(|m| m.get(META_HEALTH).and_then(|h| h.parse().ok()))
                        .unwrap_or(Health::Healthy),
                    None => return Err(Error::NotFound(id.to_owned())),
                },
            };
            match inner.pass_check(id, health).await? {
                CheckOutcome::Done => Ok(()),
                CheckOutcome::Lost(why) => match owned {
                    Some(info) => {
                        info!(
                            id,
                            "consul: the agent forgot `{id}` ({why}); registering it again"
                        );
                        {
                            let _w = inner.writes.lock().await;
                            if !inner.owned.lock().contains_key(id) {
                                return Err(Error::NotFound(id.to_owned()));
                            }
                            inner.put_registration(&info, false).await?;
                        }
                        inner.watches.refresh(&info.name).await;
                        Ok(())
                    }
                    None => Err(Error::NotFound(id.to_owned())),
                },
            }
        })
        .await
    }

    async fn get_service(&self, id: &str) -> Result<ServiceInfo> {
        self.observe(RegistryOp::Get, async {
            self.check_open()?;
            let r = InstanceRef::parse(id)?;
            match self.inner.find(r).await? {
                Some(found) => Ok(found.info),
                None => Err(Error::NotFound(id.to_owned())),
            }
        })
        .await
    }

    async fn list_services(&self) -> Result<Vec<ServiceInfo>> {
        self.observe(RegistryOp::List, async {
            self.check_open()?;
            let inner = &self.inner;
            let (_, names) = read_names(&inner.client, &inner.filter, None).await?;
            let lists: Vec<Result<_>> = futures_util::stream::iter(names)
                .map(|name| async move {
                    read_instances(&inner.client, &inner.filter, &name, None).await
                })
                .buffer_unordered(8)
                .collect()
                .await;
            let mut out = Vec::new();
            for l in lists {
                out.extend(infos(l?.1));
            }
            out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
            Ok(out)
        })
        .await
    }

    async fn list_instances(&self, name: &str) -> Result<Vec<ServiceInfo>> {
        self.observe(RegistryOp::List, async {
            self.check_open()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            let (_, inst) =
                read_instances(&self.inner.client, &self.inner.filter, name, None).await?;
            Ok(infos(inst))
        })
        .await
    }

    async fn watch(&self) -> Result<WatchStream> {
        self.observe(RegistryOp::Watch, async {
            self.check_open()?;
            self.inner.watches.subscribe(&self.tasks, Scope::All).await
        })
        .await
    }

    async fn watch_service(&self, name: &str) -> Result<WatchStream> {
        self.observe(RegistryOp::Watch, async {
            self.check_open()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            let scope = Scope::Service(name.to_owned());
            self.inner.watches.subscribe(&self.tasks, scope).await
        })
        .await
    }

    async fn watch_service_shared(&self, name: &str) -> Result<SharedWatchStream> {
        self.observe(RegistryOp::Watch, async {
            self.check_open()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            let scope = Scope::Service(name.to_owned());
            self.inner
                .watches
                .subscribe_shared(&self.tasks, scope)
                .await
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
        Some(self.inner.cfg.ttl)
    }

    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.state.is_closed() {
            return Ok(());
        }
        inner.state.close();
        inner.watches.close();
        let result = {
            let _w = inner.writes.lock().await;
            let owned: Vec<String> = std::mem::take(&mut *inner.owned.lock())
                .into_keys()
                .collect();
            deregister_all(&inner.client, owned).await
        };
        self.tasks.shutdown().await;
        info!("consul: registry closed");
        result
    }
}
