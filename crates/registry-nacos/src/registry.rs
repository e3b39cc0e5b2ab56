//! [`NacosRegistry`]: the [`ServiceRegistry`] on Nacos 2.x: construction, our registrations,
//! reads, close and drop. How instances map onto SDK connections is in [`crate::slots`], what
//! the registry knows in [`crate::view`], watches in [`crate::watch`], keeping instances alive in
//! [`crate::liveness`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::warn;
use waypost_core_types::observe::RegistryOp;
use waypost_core_types::quote::quoted;
use waypost_core_types::validate::{validate_key_part, MAX_NAME_LEN};
use waypost_core_types::{
    Error, RegistryState, Result, Scope, ScopedHubs, ServiceInfo, ServiceRegistry,
    SharedWatchStream, StateCell, StateStream, Tasks, Timestamp, WatchStream,
};

use crate::auth::{LoginFailure, LoginPlugin};

/// Stands for "no limit" where a deadline must be an instant: about 30 years.
const NO_LIMIT: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
use crate::codec::{from_instance, to_instance};
use crate::config::{server_list, NacosConfig};
use crate::error::{from_sdk, BACKEND};
use crate::slots::{build_naming, Slots};
use crate::view::{Reg, State};
use crate::watch::{self, Dirty};

/// A service registry on Nacos 2.x (or a Nacos-compatible server such as rnacos), through the
/// official `nacos-sdk`.
///
/// See the [crate docs](crate) for an example and for how `ServiceInfo` maps onto Nacos.
pub struct NacosRegistry {
    inner: Arc<Inner>,
    /// Every background task (connection probe, push queries, watch feeds). It sits beside the
    /// shared state its tasks hold, so dropping the registry drops it and aborts them.
    tasks: Tasks,
}

impl fmt::Debug for NacosRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NacosRegistry")
            .field("config", &self.inner.config)
            .field("state", &self.inner.cell.get())
            .finish_non_exhaustive()
    }
}

/// What the registry and its tasks share.
pub(crate) struct Inner {
    pub(crate) config: NacosConfig,
    pub(crate) slots: Slots,
    /// Serializes register/update/deregister (and the audit that re-registers).
    pub(crate) ops: tokio::sync::Mutex<()>,
    /// Serializes SDK subscriptions and the start and end of watch feeds.
    pub(crate) subscribe_lock: tokio::sync::Mutex<()>,
    pub(crate) state: Mutex<State>,
    pub(crate) cell: StateCell,
    pub(crate) hubs: ScopedHubs,
    pub(crate) dirty: Arc<Dirty>,
    /// Set by the first `close` (or drop), which undoes what we registered.
    closing: AtomicBool,
    /// Whether the "server rewrites metadata" warning was logged.
    pub(crate) warned_metadata: AtomicBool,
    /// Whether the "per-instance TTLs are not enforced" notice was logged.
    warned_ttl: AtomicBool,
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    validate_key_part("name", name, MAX_NAME_LEN)?;
    if name.contains("@@") {
        return Err(Error::InvalidInstance(format!(
            "name `{name}` must not contain `@@` (Nacos' group separator)"
        )));
    }
    Ok(())
}

impl NacosRegistry {
    /// Runs one call, timed and counted (see [`waypost_core_types::observe`]).
    async fn observe<T>(
        &self,
        op: RegistryOp,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.inner.cell.metrics().observe(op, call).await
    }

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
        // `validate` bounds the limit; checked all the same, as a deadline must be an instant.
        let deadline = Instant::now()
            .checked_add(limit)
            .unwrap_or_else(|| Instant::now() + NO_LIMIT);
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
            slots: Slots::new(config.clone(), servers, plugin, main),
            hubs: ScopedHubs::new(BACKEND, config.watch_buffer),
            config,
            ops: tokio::sync::Mutex::new(()),
            subscribe_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
            cell: StateCell::new(BACKEND),
            dirty: Arc::new(Dirty::default()),
            closing: AtomicBool::new(false),
            warned_metadata: AtomicBool::new(false),
            warned_ttl: AtomicBool::new(false),
        });
        let tasks = Tasks::new();
        tasks.spawn(crate::liveness::probe_loop(Arc::clone(&inner)));
        tasks.spawn(watch::refresh_loop(Arc::clone(&inner)));
        Ok(NacosRegistry { inner, tasks })
    }

    /// The configuration this registry was built from.
    pub fn config(&self) -> &NacosConfig {
        &self.inner.config
    }

    /// How many SDK connections (slots) are open; see the crate docs.
    pub fn connection_count(&self) -> usize {
        self.inner.slots.count()
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

impl Inner {
    pub(crate) fn group(&self) -> Option<String> {
        Some(self.config.group.clone())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.cell.is_closed()
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Looks an id up among other clients' instances (scans every service).
    async fn find_foreign(&self, id: &str) -> Result<Option<ServiceInfo>> {
        if self.state.lock().is_tombstoned(id) {
            return Ok(None);
        }
        for name in self.slots.service_names().await? {
            for inst in self.slots.query(&name).await? {
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

    /// Register or update (`must_exist`) one of our instances.
    async fn upsert(&self, service: &ServiceInfo, must_exist: bool) -> Result<()> {
        service.validate()?;
        check_name(&service.name)?;
        self.check_open()?;
        if !service.ttl.is_zero() && !self.warned_ttl.swap(true, Ordering::AcqRel) {
            warn!(
                id = %quoted(&service.id),
                "nacos: per-instance TTLs are not enforced; an ephemeral instance lives as long \
                 as this registry's connection to the server (logged once)"
            );
        }
        let _op = self.ops.lock().await;
        self.check_open()?;
        let prev = self.state.lock().ours.get(&service.id).cloned();
        if must_exist && prev.is_none() {
            let found = self.find_foreign(&service.id).await?;
            return Err(Self::not_ours(&service.id, found));
        }
        // A full watch follows every service, ours included.
        self.follow_in(None, &service.name).await?;
        // The id moves to another service: remove it from the old one first.
        let prev = match prev {
            Some(p) if p.info.name != service.name => {
                self.slots.deregister(p.slot, &p.info.name, &p.inst).await?;
                let mut st = self.state.lock();
                st.ours.remove(&service.id);
                st.tombstone(&service.id, &p.info.name);
                st.publish(&p.info.name);
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
        if let Some(p) = &prev {
            if p.inst.ip != inst.ip || p.inst.port != inst.port {
                // Nacos keys instances by address: an address change is a new instance.
                self.slots.deregister(slot, &info.name, &p.inst).await?;
            }
        }
        let res = self
            .slots
            .register(
                slot,
                &info.name,
                &inst,
                &format!("registering `{}` in `{}`", info.id, info.name),
            )
            .await;
        let mut st = self.state.lock();
        match res {
            Ok(()) => {
                st.tombstones.remove(&info.id);
                let name = info.name.clone();
                st.ours.insert(info.id.clone(), Reg { info, slot, inst });
                st.publish(&name);
                Ok(())
            }
            Err(e) => {
                if prev.is_none() {
                    // The SDK keeps the request for its redo: take it back once the server is
                    // reachable (see `liveness`), unless the slot is reused in the meantime.
                    st.pending_retract.insert((info.name, slot), inst);
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
        self.slots
            .deregister(reg.slot, &reg.info.name, &reg.inst)
            .await?;
        let mut st = self.state.lock();
        st.ours.remove(id);
        st.tombstone(id, &reg.info.name);
        st.publish(&reg.info.name);
        Ok(())
    }

    async fn list_instances(&self, name: &str) -> Result<Vec<ServiceInfo>> {
        let list = self.slots.query(name).await?;
        let mut st = self.state.lock();
        let mut out = st.decode_foreign(name, &list);
        for r in st.ours_in(name) {
            out.insert(r.info.id.clone(), r.info.clone());
        }
        Ok(out.into_values().collect())
    }

    /// Marks the registry closed and ends every watch stream. Whether this was the first call.
    fn begin_close(&self) -> bool {
        if self.closing.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.cell.close();
        self.hubs.close();
        true
    }

    /// Deregisters our instances, unsubscribes, and drops every SDK handle, which closes the
    /// SDK's connections (see vendor/nacos-sdk/PATCHES.md) and ends its tasks, re-login
    /// included. Returns the first deregistration error.
    async fn undo(&self) -> Result<()> {
        // Wait for an operation or a subscription in flight, then undo what we registered.
        let _op = self.ops.lock().await;
        let _subscriptions = self.subscribe_lock.lock().await;
        let (regs, subscribed) = {
            let mut st = self.state.lock();
            let regs: Vec<Reg> = st.ours.drain().map(|(_, r)| r).collect();
            st.pending_retract.clear();
            st.feeds.clear();
            (regs, std::mem::take(&mut st.subscribed))
        };
        let mut first_err = None;
        for r in regs {
            if r.slot >= self.slots.count() {
                continue;
            }
            if let Err(e) = self.slots.deregister(r.slot, &r.info.name, &r.inst).await {
                first_err.get_or_insert(e);
            }
        }
        for (name, sub) in subscribed {
            self.unsubscribe(&name, sub.listener).await;
        }
        self.slots.close();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// How long the clean-up of a registry dropped without `close` may take.
fn drop_cleanup_bound(config: &NacosConfig) -> Duration {
    config.connect_timeout.saturating_mul(4)
}

impl Drop for NacosRegistry {
    fn drop(&mut self) {
        if !self.inner.begin_close() {
            return;
        }
        // Not closed: the tasks are aborted (dropping `tasks`), and one bounded clean-up task
        // undoes our registrations and closes the SDK's connections.
        let inner = Arc::clone(&self.inner);
        self.tasks
            .cleanup_on_drop(drop_cleanup_bound(&inner.config), async move {
                let _ = inner.undo().await;
            });
    }
}

#[async_trait]
impl ServiceRegistry for NacosRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn register(&self, service: &ServiceInfo) -> Result<()> {
        self.observe(RegistryOp::Register, async {
            self.inner.upsert(service, false).await
        })
        .await
    }

    async fn deregister(&self, id: &str) -> Result<()> {
        self.observe(RegistryOp::Deregister, async {
            self.inner.deregister(id).await
        })
        .await
    }

    async fn update(&self, service: &ServiceInfo) -> Result<()> {
        self.observe(RegistryOp::Update, async {
            self.inner.upsert(service, true).await
        })
        .await
    }

    /// Nacos keeps our instances alive through the connection; a renew checks that the server
    /// still has the instance (registering it again if not) and records the check time.
    async fn renew(&self, id: &str) -> Result<()> {
        self.observe(RegistryOp::Renew, async {
            self.inner.check_open()?;
            let ours = self.inner.state.lock().ours.contains_key(id);
            if !ours {
                return match self.inner.find_foreign(id).await? {
                    Some(_) => Ok(()),
                    None => Err(Error::NotFound(id.to_owned())),
                };
            }
            let put_back = self.inner.audit(Some(id)).await?;
            self.inner.cell.metrics().reregistered(put_back);
            let mut st = self.inner.state.lock();
            if let Some(r) = st.ours.get_mut(id) {
                r.info.last_check = Timestamp::now();
            }
            Ok(())
        })
        .await
    }

    async fn get_service(&self, id: &str) -> Result<ServiceInfo> {
        self.observe(RegistryOp::Get, async {
            self.inner.check_open()?;
            if let Some(r) = self.inner.state.lock().ours.get(id) {
                return Ok(r.info.clone());
            }
            self.inner
                .find_foreign(id)
                .await?
                .ok_or_else(|| Error::NotFound(id.to_owned()))
        })
        .await
    }

    async fn list_services(&self) -> Result<Vec<ServiceInfo>> {
        self.observe(RegistryOp::List, async {
            self.inner.check_open()?;
            let mut names = self.inner.slots.service_names().await?;
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
        })
        .await
    }

    async fn list_instances(&self, name: &str) -> Result<Vec<ServiceInfo>> {
        self.observe(RegistryOp::List, async {
            check_name(name)?;
            self.inner.check_open()?;
            self.inner.list_instances(name).await
        })
        .await
    }

    async fn watch(&self) -> Result<WatchStream> {
        self.observe(RegistryOp::Watch, async {
            watch::subscribe(&self.inner, &self.tasks, Scope::All).await
        })
        .await
    }

    async fn watch_service(&self, name: &str) -> Result<WatchStream> {
        self.observe(RegistryOp::Watch, async {
            check_name(name)?;
            watch::subscribe(&self.inner, &self.tasks, Scope::Service(name.to_owned())).await
        })
        .await
    }

    async fn watch_service_shared(&self, name: &str) -> Result<SharedWatchStream> {
        self.observe(RegistryOp::Watch, async {
            check_name(name)?;
            let scope = Scope::Service(name.to_owned());
            watch::subscribe_shared(&self.inner, &self.tasks, scope).await
        })
        .await
    }

    fn state(&self) -> RegistryState {
        self.inner.cell.get()
    }

    fn state_changes(&self) -> StateStream {
        self.inner.cell.changes()
    }

    fn default_ttl(&self) -> Option<Duration> {
        Some(self.inner.config.ttl)
    }

    async fn close(&self) -> Result<()> {
        if !self.inner.begin_close() {
            return Ok(());
        }
        let res = self.inner.undo().await;
        self.tasks.shutdown().await;
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_the_group_separator_are_rejected() {
        assert!(matches!(check_name("a@@b"), Err(Error::InvalidInstance(_))));
        assert!(matches!(check_name("a/b"), Err(Error::InvalidInstance(_))));
        check_name("user-service").unwrap();
        check_name("a@b").unwrap();
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

    /// `Duration::MAX` as the connect timeout is outside its bounds (1 ms to 24 h): a clear
    /// configuration error at once, not a panic or an endless wait.
    #[tokio::test]
    async fn a_connect_timeout_of_duration_max_is_a_config_error() {
        let cfg = NacosConfig::new("127.0.0.1:8848").with_connect_timeout(Duration::MAX);
        let attempt = tokio::time::timeout(Duration::from_secs(2), NacosRegistry::connect(cfg));
        match attempt.await {
            Ok(Err(Error::InvalidConfig(m))) => assert!(m.contains("connect_timeout"), "{m}"),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }
}
