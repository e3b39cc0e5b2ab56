//! [`NacosRegistry`]: the [`ServiceRegistry`] on Nacos 2.x.
//!
//! ## How instances map onto SDK connections
//!
//! Nacos 2.x binds an ephemeral instance to the gRPC connection that registered it (the instance
//! lives exactly as long as the connection), and keeps **one instance per service per
//! connection**: a second registration of the same service on the same connection replaces the
//! first. The SDK's redo (which registers again after a reconnect) has the same shape. So the
//! registry keeps a small pool of SDK connections ("slots"): the first instance of a service uses
//! slot 0 (the main connection, which also serves queries and subscriptions), a second instance
//! of the same service in the same process uses slot 1, and so on. A process that registers one
//! instance per service (the usual case) has one connection.
//!
//! ## Our view and the server's
//!
//! Instances this registry registered are known locally (the local index, keyed by our id); the
//! server is the truth for everyone else's instances. A watch's view of a service is "the server's
//! foreign instances + our own": our changes are published to watchers as soon as the server
//! acknowledged them (so they are in order and never coalesced), other clients' changes arrive as
//! Nacos pushes, each of which triggers a fresh query (pushes may be delivered out of order by the
//! SDK, a query is not) that is diffed against the view.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, NamingServiceBuilder, ServiceInstance,
};
use nacos_sdk::api::props::ClientProps;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use waypost_core_types::validate::{validate_key_part, MAX_NAME_LEN};
use waypost_core_types::{
    Error, RegistryState, Result, ServiceEvent, ServiceInfo, ServiceRegistry, SnapshotReason,
    Timestamp, WatchStream,
};

use crate::auth::{LoginFailure, LoginPlugin};
use crate::config::{server_list, NacosConfig};
use crate::error::{from_sdk, limited, BACKEND};
use crate::mapping::{from_instance, to_instance};
use crate::watch::{into_stream, SnapshotSource, Watcher};

/// How long an id we deregistered is ignored in server answers that may still show it.
const TOMBSTONE_TTL: Duration = Duration::from_secs(30);
/// Page size when listing service names.
const PAGE_SIZE: i32 = 500;
/// Every this many probes, check that the server still has all our instances.
const AUDIT_EVERY_PROBES: u32 = 20;

/// A service registry on Nacos 2.x (or a Nacos-compatible server such as rnacos), through the
/// official `nacos-sdk`.
///
/// See the [crate docs](crate) for an example and for how `ServiceInfo` maps onto Nacos.
pub struct NacosRegistry {
    inner: Arc<Inner>,
}

impl fmt::Debug for NacosRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NacosRegistry")
            .field("config", &self.inner.config)
            .field("state", &self.inner.conn_state())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: NacosConfig,
    servers: Vec<String>,
    /// The login plugin for new SDK connections; taken by `close`, which ends the SDK's periodic
    /// re-login (it holds the plugin weakly).
    plugin: Mutex<Option<Arc<LoginPlugin>>>,
    /// SDK connections; slot 0 is the main one. Emptied by `close`.
    slots: Mutex<Vec<NamingService>>,
    slot_create: tokio::sync::Mutex<()>,
    /// Serializes register/update/deregister (and the audit that re-registers).
    ops: tokio::sync::Mutex<()>,
    subscribe_lock: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    conn: Mutex<RegistryState>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Whether the "server rewrites metadata" warning was logged.
    warned_metadata: AtomicBool,
    runtime: tokio::runtime::Handle,
}

#[derive(Clone)]
struct Reg {
    info: ServiceInfo,
    slot: usize,
    inst: ServiceInstance,
}

struct View {
    /// Other clients' instances, as last queried.
    foreign: BTreeMap<String, ServiceInfo>,
    /// What watchers of this service have been told.
    current: BTreeMap<String, ServiceInfo>,
    listener: Arc<dyn NamingEventListener>,
}

#[derive(Default)]
struct State {
    ours: HashMap<String, Reg>,
    /// Ids we deregistered (with their service), ignored in server answers that still show them.
    tombstones: HashMap<String, (String, Instant)>,
    /// (service, slot) pairs held by a failed registration being retracted.
    reserved: HashSet<(String, usize)>,
    views: HashMap<String, View>,
    watchers: Vec<Arc<Watcher>>,
    all_mode: bool,
}

impl State {
    fn is_tombstoned(&self, id: &str) -> bool {
        self.tombstones
            .get(id)
            .is_some_and(|(_, t)| t.elapsed() < TOMBSTONE_TTL)
    }

    fn ours_in<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Reg> + 'a {
        self.ours.values().filter(move |r| r.info.name == name)
    }

    fn free_slot(&self, name: &str) -> usize {
        let used: HashSet<usize> = self
            .ours_in(name)
            .map(|r| r.slot)
            .chain(
                self.reserved
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, s)| *s),
            )
            .collect();
        (0..).find(|i| !used.contains(i)).unwrap_or(0)
    }

    /// Decodes a server answer for `name` into other clients' instances.
    fn decode_foreign(
        &mut self,
        name: &str,
        list: &[ServiceInstance],
    ) -> BTreeMap<String, ServiceInfo> {
        let mut foreign = BTreeMap::new();
        let mut seen = HashSet::new();
        for inst in list {
            match from_instance(inst, name) {
                Ok(s) => {
                    seen.insert(s.id.clone());
                    if self.ours.contains_key(&s.id) || self.is_tombstoned(&s.id) {
                        continue;
                    }
                    foreign.insert(s.id.clone(), s);
                }
                Err(e) => tracing::warn!(
                    target: "waypost::nacos",
                    service = name,
                    ip = inst.ip.as_str(),
                    port = inst.port,
                    "skipping a Nacos instance that is not a valid service instance: {e}"
                ),
            }
        }
        // A tombstone is needed only while the server still shows the id; old ones expire.
        self.tombstones.retain(|id, (service, t)| {
            t.elapsed() < TOMBSTONE_TTL && (service != name || seen.contains(id))
        });
        foreign
    }

    /// Everything in scope of service `name`: foreign instances and ours.
    fn combined(&self, name: &str) -> BTreeMap<String, ServiceInfo> {
        let mut out: BTreeMap<String, ServiceInfo> = self
            .views
            .get(name)
            .map(|v| {
                v.foreign
                    .iter()
                    .filter(|(id, _)| !self.ours.contains_key(*id) && !self.is_tombstoned(id))
                    .map(|(id, s)| (id.clone(), s.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for r in self.ours_in(name) {
            out.insert(r.info.id.clone(), r.info.clone());
        }
        out
    }

    /// Recomputes the view of `name` and tells the watchers what changed.
    fn recompute(&mut self, name: &str) {
        if !self.views.contains_key(name) {
            return;
        }
        let new = self.combined(name);
        let Some(view) = self.views.get_mut(name) else {
            return;
        };
        let events = diff(&view.current, &new);
        view.current = new;
        if events.is_empty() {
            return;
        }
        self.watchers.retain(|w| !w.is_closed());
        for w in self.watchers.iter().filter(|w| w.wants(name)) {
            for ev in &events {
                w.push_change(ev.clone());
            }
        }
    }

    /// The instances a watcher with `filter` sees.
    fn snapshot(&self, filter: Option<&str>) -> Vec<ServiceInfo> {
        let mut out: Vec<ServiceInfo> = self
            .views
            .iter()
            .filter(|(name, _)| filter.is_none_or(|f| f == name.as_str()))
            .flat_map(|(_, v)| v.current.values().cloned())
            .collect();
        out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        out
    }
}

fn diff(
    old: &BTreeMap<String, ServiceInfo>,
    new: &BTreeMap<String, ServiceInfo>,
) -> Vec<ServiceEvent> {
    let mut out = Vec::new();
    for (id, s) in old {
        if !new.contains_key(id) {
            out.push(ServiceEvent::deleted(s.clone()));
        }
    }
    for (id, s) in new {
        match old.get(id) {
            None => out.push(ServiceEvent::created(s.clone())),
            Some(o) if o != s => out.push(ServiceEvent::updated(s.clone())),
            Some(_) => {}
        }
    }
    out
}

/// The SDK listener of one service: it only says "something changed"; the registry queries.
struct Listener {
    notify: Arc<Notify>,
}

impl NamingEventListener for Listener {
    fn event(&self, _event: Arc<NamingChangeEvent>) {
        self.notify.notify_one();
    }
}

struct Source(Weak<Inner>);

impl SnapshotSource for Source {
    fn resync(&self, watcher: &Watcher) {
        match self.0.upgrade() {
            Some(inner) => {
                let st = inner.state.lock();
                watcher.push_resync(st.snapshot(watcher.filter.as_deref()));
            }
            None => watcher.close(),
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    validate_key_part("name", name, MAX_NAME_LEN)?;
    if name.contains("@@") {
        return Err(Error::InvalidInstance(format!(
            "name `{name}` must not contain `@@` (Nacos' group separator)"
        )));
    }
    Ok(())
}

impl NacosRegistry {
    /// Connects to Nacos and checks the connection with a real request.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad configuration; [`Error::Auth`] when the server refuses
    /// the credentials; [`Error::Timeout`] or [`Error::Unavailable`] when no server answers
    /// within [`NacosConfig::connect_timeout`] (the SDK's own connection attempts are stopped);
    /// another backend error otherwise.
    pub async fn connect(config: NacosConfig) -> Result<Self> {
        config.validate()?;
        let servers = server_list(&config.server_addr)?;
        let limit = config.connect_timeout;
        let deadline = Instant::now() + limit;
        let what = format!("connecting to nacos at {}", servers.join(","));

        let plugin = match (&config.username, &config.password) {
            (Some(user), pass) if !user.is_empty() => {
                let p = LoginPlugin::new(
                    user.clone(),
                    pass.clone().unwrap_or_default(),
                    servers.clone(),
                    limit,
                );
                match tokio::time::timeout_at(deadline, p.ensure_login()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(LoginFailure::Rejected(m))) => {
                        return Err(Error::Auth {
                            backend: BACKEND,
                            message: m,
                        })
                    }
                    Ok(Err(LoginFailure::Unreachable(m))) => {
                        return Err(Error::Unavailable(format!("{what}: {m}")))
                    }
                    Err(_) => return Err(Error::timeout(what, limit)),
                }
                Some(p)
            }
            _ => None,
        };

        let main = match tokio::time::timeout_at(
            deadline,
            build_naming(&config, &servers, plugin.clone()),
        )
        .await
        {
            Ok(Ok(svc)) => svc,
            Ok(Err(e)) => return Err(annotate(from_sdk(&what, e), &plugin)),
            Err(_) => return Err(Error::timeout(what, limit)),
        };
        // The SDK may report success while it is still retrying in the background: prove the
        // connection with a real request.
        let probe = main.get_service_list(1, 1, Some(config.group.clone()));
        match tokio::time::timeout_at(deadline, probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                drop(main);
                return Err(annotate(from_sdk(&what, e), &plugin));
            }
            Err(_) => {
                drop(main);
                return Err(Error::timeout(what, limit));
            }
        }

        let inner = Arc::new(Inner {
            config,
            servers,
            plugin: Mutex::new(plugin),
            slots: Mutex::new(vec![main]),
            slot_create: tokio::sync::Mutex::new(()),
            ops: tokio::sync::Mutex::new(()),
            subscribe_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
            conn: Mutex::new(RegistryState::Connected),
            tasks: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            warned_metadata: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        let probe_task = tokio::spawn(probe_loop(Arc::downgrade(&inner)));
        inner.tasks.lock().push(probe_task);
        Ok(NacosRegistry { inner })
    }

    /// The configuration this registry was built from.
    pub fn config(&self) -> &NacosConfig {
        &self.inner.config
    }

    /// How many SDK connections (slots) are open; see the module docs.
    pub fn connection_count(&self) -> usize {
        self.inner.slots.lock().len()
    }
}

fn annotate(e: Error, plugin: &Option<Arc<LoginPlugin>>) -> Error {
    if let (Error::Auth { .. }, Some(p)) = (&e, plugin) {
        if let Some(LoginFailure::Rejected(m)) = p.last_failure() {
            return Error::Auth {
                backend: BACKEND,
                message: m,
            };
        }
    }
    e
}

async fn build_naming(
    config: &NacosConfig,
    servers: &[String],
    plugin: Option<Arc<LoginPlugin>>,
) -> std::result::Result<NamingService, nacos_sdk::api::error::Error> {
    let mut props = ClientProps::new()
        .server_addr(servers.join(","))
        .namespace(config.namespace.clone())
        .app_name(config.app_name.clone())
        .naming_push_empty_protection(false)
        .naming_load_cache_at_start(false)
        .env_first(false);
    if let Some(port) = config.grpc_port {
        props = props.remote_grpc_port(port);
    }
    if let Some(dir) = &config.cache_dir {
        props = props.cache_dir(dir.clone());
    }
    let mut builder = NamingServiceBuilder::new(props);
    if let Some(p) = plugin {
        builder = builder.with_auth_plugin(p);
    }
    builder.build().await
}

impl Inner {
    fn group(&self) -> Option<String> {
        Some(self.config.group.clone())
    }

    fn limit(&self) -> Duration {
        self.config.connect_timeout
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn conn_state(&self) -> RegistryState {
        if self.closed.load(Ordering::Acquire) {
            RegistryState::Closed
        } else {
            self.conn.lock().clone()
        }
    }

    fn main(&self) -> Result<NamingService> {
        self.slots.lock().first().cloned().ok_or(Error::Closed)
    }

    /// SDK connection number `i`, opened on first use.
    async fn slot(&self, i: usize) -> Result<NamingService> {
        if let Some(s) = self.slots.lock().get(i) {
            return Ok(s.clone());
        }
        let _one_at_a_time = self.slot_create.lock().await;
        loop {
            self.check_open()?;
            let have = {
                let slots = self.slots.lock();
                if let Some(s) = slots.get(i) {
                    return Ok(s.clone());
                }
                slots.len()
            };
            let what = format!("opening nacos connection #{have}");
            let plugin = self.plugin.lock().clone();
            let svc = match tokio::time::timeout(
                self.limit(),
                build_naming(&self.config, &self.servers, plugin),
            )
            .await
            {
                Ok(Ok(svc)) => svc,
                Ok(Err(e)) => return Err(from_sdk(&what, e)),
                Err(_) => return Err(Error::timeout(what, self.limit())),
            };
            let mut slots = self.slots.lock();
            if slots.is_empty() {
                return Err(Error::Closed);
            }
            slots.push(svc);
        }
    }

    async fn query(&self, name: &str) -> Result<Vec<ServiceInstance>> {
        let main = self.main()?;
        limited(
            &format!("listing instances of `{name}`"),
            self.limit(),
            main.get_all_instances(name.to_owned(), self.group(), Vec::new(), false),
        )
        .await
    }

    async fn service_names(&self) -> Result<Vec<String>> {
        let main = self.main()?;
        let mut names = Vec::new();
        let mut page = 1;
        loop {
            let (batch, count) = limited(
                "listing services",
                self.limit(),
                main.get_service_list(page, PAGE_SIZE, self.group()),
            )
            .await?;
            let got = batch.len();
            names.extend(batch);
            if got == 0
                || names.len() >= usize::try_from(count).unwrap_or(0)
                || got < PAGE_SIZE as usize
            {
                break;
            }
            page += 1;
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Makes sure service `name` is subscribed and has a view.
    async fn ensure_view(self: &Arc<Self>, name: &str) -> Result<()> {
        if self.state.lock().views.contains_key(name) {
            return Ok(());
        }
        let _one_at_a_time = self.subscribe_lock.lock().await;
        if self.state.lock().views.contains_key(name) {
            return Ok(());
        }
        self.check_open()?;
        let notify = Arc::new(Notify::new());
        let listener: Arc<dyn NamingEventListener> = Arc::new(Listener {
            notify: notify.clone(),
        });
        let main = self.main()?;
        limited(
            &format!("subscribing to `{name}`"),
            self.limit(),
            main.subscribe(name.to_owned(), self.group(), Vec::new(), listener.clone()),
        )
        .await?;
        let list = self.query(name).await?;
        {
            let mut st = self.state.lock();
            let foreign = st.decode_foreign(name, &list);
            st.views.insert(
                name.to_owned(),
                View {
                    foreign,
                    current: BTreeMap::new(),
                    listener,
                },
            );
            st.recompute(name);
        }
        let task = tokio::spawn(refresh_loop(Arc::downgrade(self), name.to_owned(), notify));
        self.tasks.lock().push(task);
        Ok(())
    }

    /// Queries `name` and applies the answer to its view.
    async fn refresh(&self, name: &str) -> Result<()> {
        let list = self.query(name).await?;
        let mut st = self.state.lock();
        let foreign = st.decode_foreign(name, &list);
        if let Some(v) = st.views.get_mut(name) {
            v.foreign = foreign;
        }
        st.recompute(name);
        Ok(())
    }

    /// Looks an id up among other clients' instances (scans every service).
    async fn find_foreign(&self, id: &str) -> Result<Option<ServiceInfo>> {
        if self.state.lock().is_tombstoned(id) {
            return Ok(None);
        }
        for name in self.service_names().await? {
            for inst in self.query(&name).await? {
                if let Ok(s) = from_instance(&inst, &name) {
                    if s.id == id {
                        return Ok(Some(s));
                    }
                }
            }
        }
        Ok(None)
    }

    fn not_ours(id: &str, found: Option<ServiceInfo>) -> Error {
        match found {
            None => Error::NotFound(id.to_owned()),
            Some(_) => Error::Unsupported(format!(
                "instance `{id}` was registered by another Nacos client; Nacos binds an \
                 ephemeral instance to the connection that registered it, so only that client \
                 can change or remove it"
            )),
        }
    }

    async fn remote_deregister(
        &self,
        slot: usize,
        name: &str,
        inst: &ServiceInstance,
    ) -> Result<()> {
        let svc = self.slot(slot).await?;
        limited(
            &format!("deregistering from `{name}`"),
            self.limit(),
            svc.deregister_instance(name.to_owned(), self.group(), inst.clone()),
        )
        .await
    }

    /// Register or update (`must_exist`) one of our instances.
    async fn upsert(self: &Arc<Self>, service: &ServiceInfo, must_exist: bool) -> Result<()> {
        service.validate()?;
        check_name(&service.name)?;
        self.check_open()?;
        let _op = self.ops.lock().await;
        self.check_open()?;
        let prev = self.state.lock().ours.get(&service.id).cloned();
        if must_exist && prev.is_none() {
            let found = self.find_foreign(&service.id).await?;
            return Err(Self::not_ours(&service.id, found));
        }
        let all_mode = self.state.lock().all_mode;
        if all_mode {
            self.ensure_view(&service.name).await?;
        }
        // The id moves to another service: remove it from the old one first.
        let prev = match prev {
            Some(p) if p.info.name != service.name => {
                self.remote_deregister(p.slot, &p.info.name, &p.inst)
                    .await?;
                let mut st = self.state.lock();
                st.ours.remove(&service.id);
                st.tombstones
                    .insert(service.id.clone(), (p.info.name.clone(), Instant::now()));
                st.recompute(&p.info.name);
                None
            }
            other => other,
        };
        let slot = match &prev {
            Some(p) => p.slot,
            None => self.state.lock().free_slot(&service.name),
        };
        let mut info = service.clone();
        info.stamp(Timestamp::now(), prev.as_ref().map(|p| &p.info));
        let inst = to_instance(&info, &self.config.cluster);
        let svc = self.slot(slot).await?;
        if let Some(p) = &prev {
            if p.inst.ip != inst.ip || p.inst.port != inst.port {
                // Nacos keys instances by address: an address change is a new instance.
                self.remote_deregister(slot, &info.name, &p.inst).await?;
            }
        }
        let res = limited(
            &format!("registering `{}` in `{}`", info.id, info.name),
            self.limit(),
            svc.register_instance(info.name.clone(), self.group(), inst.clone()),
        )
        .await;
        match res {
            Ok(()) => {
                let mut st = self.state.lock();
                st.tombstones.remove(&info.id);
                let name = info.name.clone();
                st.ours.insert(info.id.clone(), Reg { info, slot, inst });
                st.recompute(&name);
                Ok(())
            }
            Err(e) => {
                if prev.is_none() {
                    // The SDK keeps the request for its redo: take it back once the server is
                    // reachable, unless the slot is reused in the meantime.
                    self.state.lock().reserved.insert((info.name.clone(), slot));
                    let task = tokio::spawn(retract(Arc::downgrade(self), info.name, slot, inst));
                    self.tasks.lock().push(task);
                }
                Err(e)
            }
        }
    }

    async fn deregister(&self, id: &str) -> Result<()> {
        self.check_open()?;
        let _op = self.ops.lock().await;
        self.check_open()?;
        let reg = self.state.lock().ours.get(id).cloned();
        let Some(reg) = reg else {
            let found = self.find_foreign(id).await?;
            return Err(Self::not_ours(id, found));
        };
        self.remote_deregister(reg.slot, &reg.info.name, &reg.inst)
            .await?;
        let mut st = self.state.lock();
        st.ours.remove(id);
        st.tombstones
            .insert(id.to_owned(), (reg.info.name.clone(), Instant::now()));
        st.recompute(&reg.info.name);
        Ok(())
    }

    /// Registers again every one of our instances the server does not show (after a reconnect,
    /// a server restart, or a renew).
    async fn audit(&self, only: Option<&str>) -> Result<usize> {
        let _op = self.ops.lock().await;
        self.check_open()?;
        let regs: Vec<Reg> = self
            .state
            .lock()
            .ours
            .values()
            .filter(|r| only.is_none_or(|id| r.info.id == id))
            .cloned()
            .collect();
        let mut by_service: BTreeMap<String, Vec<Reg>> = BTreeMap::new();
        for r in regs {
            by_service.entry(r.info.name.clone()).or_default().push(r);
        }
        let mut fixed = 0;
        for (name, regs) in by_service {
            let listed = self.query(&name).await?;
            // Nacos keys instances by address: ours is present when its address is.
            let addr = |i: &ServiceInstance| {
                (
                    i.ip.clone(),
                    i.port,
                    i.cluster_name.clone().unwrap_or_default(),
                )
            };
            let present: HashMap<(String, i32, String), &ServiceInstance> =
                listed.iter().map(|i| (addr(i), i)).collect();
            for r in &regs {
                if let Some(seen) = present.get(&addr(&r.inst)) {
                    if seen.metadata != r.inst.metadata
                        && !self.warned_metadata.swap(true, Ordering::AcqRel)
                    {
                        tracing::warn!(
                            target: "waypost::nacos",
                            id = r.info.id.as_str(),
                            service = name.as_str(),
                            "the server answers with other metadata than we registered; other \
                             clients will see stale data (rnacos: start it with \
                             RNACOS_NAMING_INSTANCE_METADATA_PERSISTENCE_ENABLE=false)"
                        );
                    }
                }
            }
            for r in regs
                .iter()
                .filter(|r| !present.contains_key(&addr(&r.inst)))
            {
                let svc = self.slot(r.slot).await?;
                tracing::info!(
                    target: "waypost::nacos",
                    id = r.info.id.as_str(),
                    service = name.as_str(),
                    "the server lost our instance; registering it again"
                );
                limited(
                    &format!("registering `{}` again", r.info.id),
                    self.limit(),
                    svc.register_instance(name.clone(), self.group(), r.inst.clone()),
                )
                .await?;
                fixed += 1;
            }
        }
        Ok(fixed)
    }

    /// After a reconnect: our instances back, every view queried again, every watcher resynced.
    async fn resync(&self) {
        if let Err(e) = self.audit(None).await {
            tracing::warn!(target: "waypost::nacos", "re-registration after reconnect: {e}");
        }
        let names: Vec<String> = self.state.lock().views.keys().cloned().collect();
        for name in names {
            if let Err(e) = self.refresh(&name).await {
                tracing::warn!(target: "waypost::nacos", service = name.as_str(), "refresh after reconnect: {e}");
            }
        }
        let mut st = self.state.lock();
        st.watchers.retain(|w| !w.is_closed());
        for w in &st.watchers {
            w.push_snapshot(
                st.snapshot(w.filter.as_deref()),
                SnapshotReason::Reconnected,
            );
        }
    }

    async fn watch(self: &Arc<Self>, filter: Option<&str>) -> Result<WatchStream> {
        self.check_open()?;
        match filter {
            Some(name) => self.ensure_view(name).await?,
            None => {
                let first = {
                    let mut st = self.state.lock();
                    !std::mem::replace(&mut st.all_mode, true)
                };
                self.discover_services().await?;
                if first {
                    let task = tokio::spawn(poll_services(Arc::downgrade(self)));
                    self.tasks.lock().push(task);
                }
            }
        }
        self.check_open()?;
        let watcher = Watcher::new(filter.map(str::to_owned), self.config.watch_buffer);
        {
            let mut st = self.state.lock();
            watcher.push_snapshot(st.snapshot(filter), SnapshotReason::Initial);
            st.watchers.push(watcher.clone());
        }
        Ok(into_stream(watcher, Arc::new(Source(Arc::downgrade(self)))))
    }

    /// Subscribes every service of the group that has no view yet.
    async fn discover_services(self: &Arc<Self>) -> Result<()> {
        let names = self.service_names().await?;
        let ours: Vec<String> = self
            .state
            .lock()
            .ours
            .values()
            .map(|r| r.info.name.clone())
            .collect();
        for name in names.into_iter().chain(ours) {
            if check_name(&name).is_err() {
                continue;
            }
            self.ensure_view(&name).await?;
        }
        Ok(())
    }

    async fn list_instances(&self, name: &str) -> Result<Vec<ServiceInfo>> {
        let list = self.query(name).await?;
        let mut st = self.state.lock();
        let mut out = st.decode_foreign(name, &list);
        for r in st.ours_in(name) {
            out.insert(r.info.id.clone(), r.info.clone());
        }
        Ok(out.into_values().collect())
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        *self.conn.lock() = RegistryState::Closed;
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        {
            let mut st = self.state.lock();
            for w in st.watchers.drain(..) {
                w.close();
            }
        }
        // Wait for an operation in flight, then undo what we registered.
        let _op = self.ops.lock().await;
        let (regs, views) = {
            let mut st = self.state.lock();
            let regs: Vec<Reg> = st.ours.drain().map(|(_, r)| r).collect();
            let views: Vec<(String, View)> = st.views.drain().collect();
            st.reserved.clear();
            (regs, views)
        };
        let slots: Vec<NamingService> = self.slots.lock().clone();
        let mut first_err = None;
        for r in regs {
            let Some(svc) = slots.get(r.slot) else {
                continue;
            };
            if let Err(e) = limited(
                &format!("deregistering `{}` on close", r.info.id),
                self.limit(),
                svc.deregister_instance(r.info.name.clone(), self.group(), r.inst.clone()),
            )
            .await
            {
                first_err.get_or_insert(e);
            }
        }
        if let Some(main) = slots.first() {
            for (name, view) in views {
                let _ = limited(
                    &format!("unsubscribing from `{name}`"),
                    self.limit(),
                    main.unsubscribe(name, self.group(), Vec::new(), view.listener),
                )
                .await;
            }
        }
        // Dropping the last handles closes the SDK's connections (see vendor/nacos-sdk/PATCHES.md)
        // and ends its tasks, re-login included.
        drop(slots);
        self.slots.lock().clear();
        self.plugin.lock().take();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

async fn refresh_loop(inner: Weak<Inner>, name: String, notify: Arc<Notify>) {
    loop {
        notify.notified().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = inner.refresh(&name).await {
            tracing::debug!(target: "waypost::nacos", service = name.as_str(), "refresh failed, retrying: {e}");
            drop(inner);
            tokio::time::sleep(Duration::from_millis(500)).await;
            notify.notify_one();
        }
    }
}

async fn poll_services(inner: Weak<Inner>) {
    loop {
        let interval = match inner.upgrade() {
            Some(i) => i.config.service_poll_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = inner.discover_services().await {
            tracing::debug!(target: "waypost::nacos", "service discovery poll failed: {e}");
        }
    }
}

async fn retract(inner: Weak<Inner>, name: String, slot: usize, inst: ServiceInstance) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let _op = inner.ops.lock().await;
        let reused = inner
            .state
            .lock()
            .ours
            .values()
            .any(|r| r.info.name == name && r.slot == slot);
        if reused || inner.remote_deregister(slot, &name, &inst).await.is_ok() {
            inner.state.lock().reserved.remove(&(name.clone(), slot));
            return;
        }
    }
}

async fn probe_loop(inner: Weak<Inner>) {
    let mut probes: u32 = 0;
    loop {
        let interval = match inner.upgrade() {
            Some(i) => i.config.probe_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        probes = probes.wrapping_add(1);
        let Ok(main) = inner.main() else { return };
        let limit = inner.limit().min(Duration::from_secs(2));
        let res = limited(
            "probing the connection",
            limit,
            main.get_service_list(1, 1, inner.group()),
        )
        .await;
        let recovered = {
            let mut conn = inner.conn.lock();
            match (&res, &mut *conn) {
                (Ok(_), RegistryState::Recovering { .. }) => {
                    *conn = RegistryState::Connected;
                    true
                }
                (Ok(_), _) => false,
                (
                    Err(e),
                    RegistryState::Recovering {
                        attempts,
                        last_error,
                        ..
                    },
                ) => {
                    *attempts += 1;
                    *last_error = e.to_string();
                    false
                }
                (Err(e), RegistryState::Connected) => {
                    tracing::warn!(target: "waypost::nacos", "lost the nacos connection: {e}");
                    *conn = RegistryState::Recovering {
                        since: SystemTime::now(),
                        attempts: 1,
                        last_error: e.to_string(),
                    };
                    false
                }
                (Err(_), _) => false,
            }
        };
        if recovered {
            tracing::info!(target: "waypost::nacos", "nacos connection is back; resyncing");
            inner.resync().await;
        } else if res.is_ok() && probes % AUDIT_EVERY_PROBES == 0 {
            match inner.audit(None).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(target: "waypost::nacos", "re-registered {n} lost instance(s)");
                    inner.resync().await;
                }
                Err(e) => tracing::debug!(target: "waypost::nacos", "audit failed: {e}"),
            }
        }
    }
}

impl Drop for NacosRegistry {
    fn drop(&mut self) {
        if self.inner.closed.load(Ordering::Acquire) {
            return;
        }
        // Not closed: undo our registrations and close the SDK's connections in the background
        // (the tasks of a watch hold the registry weakly, so they do not keep it alive).
        let inner = self.inner.clone();
        let rt = inner.runtime.clone();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.spawn(async move {
                let _ = inner.close().await;
            })
        }));
    }
}

#[async_trait]
impl ServiceRegistry for NacosRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn register(&self, service: &ServiceInfo) -> Result<()> {
        self.inner.upsert(service, false).await
    }

    async fn deregister(&self, id: &str) -> Result<()> {
        self.inner.deregister(id).await
    }

    async fn update(&self, service: &ServiceInfo) -> Result<()> {
        self.inner.upsert(service, true).await
    }

    /// Nacos keeps our instances alive through the connection; a renew checks that the server
    /// still has the instance (registering it again if not) and records the check time.
    async fn renew(&self, id: &str) -> Result<()> {
        self.inner.check_open()?;
        let ours = self.inner.state.lock().ours.contains_key(id);
        if !ours {
            return match self.inner.find_foreign(id).await? {
                Some(_) => Ok(()),
                None => Err(Error::NotFound(id.to_owned())),
            };
        }
        self.inner.audit(Some(id)).await?;
        let mut st = self.inner.state.lock();
        if let Some(r) = st.ours.get_mut(id) {
            r.info.last_check = Timestamp::now();
        }
        Ok(())
    }

    async fn get_service(&self, id: &str) -> Result<ServiceInfo> {
        self.inner.check_open()?;
        if let Some(r) = self.inner.state.lock().ours.get(id) {
            return Ok(r.info.clone());
        }
        self.inner
            .find_foreign(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    async fn list_services(&self) -> Result<Vec<ServiceInfo>> {
        self.inner.check_open()?;
        let mut names = self.inner.service_names().await?;
        names.extend(
            self.inner
                .state
                .lock()
                .ours
                .values()
                .map(|r| r.info.name.clone()),
        );
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            if check_name(&name).is_err() {
                continue;
            }
            out.extend(self.inner.list_instances(&name).await?);
        }
        self.inner.check_open()?;
        Ok(out)
    }

    async fn list_instances(&self, name: &str) -> Result<Vec<ServiceInfo>> {
        check_name(name)?;
        self.inner.check_open()?;
        self.inner.list_instances(name).await
    }

    async fn watch(&self) -> Result<WatchStream> {
        self.inner.watch(None).await
    }

    async fn watch_service(&self, name: &str) -> Result<WatchStream> {
        check_name(name)?;
        self.inner.watch(Some(name)).await
    }

    fn state(&self) -> RegistryState {
        self.inner.conn_state()
    }

    fn default_ttl(&self) -> Option<Duration> {
        Some(self.inner.config.ttl)
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: &str, v: &str) -> ServiceInfo {
        ServiceInfo::new(id, "svc", "h", 1).with_version(v)
    }

    #[test]
    fn diff_reports_created_updated_deleted() {
        let old: BTreeMap<_, _> = [("a", "1"), ("b", "1")]
            .iter()
            .map(|(id, v)| (id.to_string(), s(id, v)))
            .collect();
        let new: BTreeMap<_, _> = [("b", "2"), ("c", "1")]
            .iter()
            .map(|(id, v)| (id.to_string(), s(id, v)))
            .collect();
        let evs = diff(&old, &new);
        let kinds: Vec<_> = evs
            .iter()
            .map(|e| (e.kind, e.service.id.as_str()))
            .collect();
        use waypost_core_types::ServiceEventType::*;
        assert_eq!(kinds, vec![(Deleted, "a"), (Updated, "b"), (Created, "c")]);
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn names_with_the_group_separator_are_rejected() {
        assert!(matches!(check_name("a@@b"), Err(Error::InvalidInstance(_))));
        assert!(matches!(check_name("a/b"), Err(Error::InvalidInstance(_))));
        check_name("user-service").unwrap();
        check_name("a@b").unwrap();
    }

    #[test]
    fn free_slot_takes_the_lowest_unused() {
        let mut st = State::default();
        assert_eq!(st.free_slot("svc"), 0);
        let reg = |id: &str, slot| Reg {
            info: ServiceInfo::new(id, "svc", "h", 1),
            slot,
            inst: ServiceInstance::default(),
        };
        st.ours.insert("a".into(), reg("a", 0));
        st.ours.insert("b".into(), reg("b", 2));
        assert_eq!(st.free_slot("svc"), 1);
        st.reserved.insert(("svc".into(), 1));
        assert_eq!(st.free_slot("svc"), 3);
        assert_eq!(st.free_slot("other"), 0);
    }

    #[tokio::test]
    async fn unreachable_server_fails_within_the_connect_timeout() {
        // A port nothing listens on (bound and released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = NacosConfig::new(format!("127.0.0.1:{}", port.min(64_000)))
            .with_connect_timeout(Duration::from_millis(800));
        let start = std::time::Instant::now();
        let err = NacosRegistry::connect(cfg).await.unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(err, Error::Timeout { .. } | Error::Unavailable(_)),
            "{err:?}"
        );
        assert!(took < Duration::from_millis(1_800), "took {took:?}");
    }
}
