//! The registry conformance suite: one public async check per behaviour that every
//! [`ServiceRegistry`] must have. Backend crates call these from their tests, against the real
//! server, directly and through `Box<dyn ServiceRegistry>` / `Arc<dyn ServiceRegistry>`.
//!
//! Each check panics with a message naming the broken behaviour. Checks use their own service
//! names (unique per process and call), so they can share a registry and run while other data
//! exists under the same prefix, and they remove what they registered. Timing is expressed as
//! tolerances from [`ConformanceOptions`], never as exact instants, so remote servers can meet it.
//!
//! ```
//! # async fn demo(registry: &dyn waypost_core_types::ServiceRegistry) {
//! use waypost_core_types::conformance::{self, ConformanceOptions};
//! conformance::run_all(registry, &ConformanceOptions::default()).await;
//! # }
//! ```
//!
//! The fault suite, [`faults`], checks what happens around a registry when its server fails
//! (absent, killed and restarted, frozen, refusing credentials) and when a registry is dropped
//! without `close`. It drives a [`faults::ServerFixture`] that each backend's tests implement.
//!
//! One idea in one file: the conformance checks, one `pub async fn` per behaviour.

pub mod faults;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use crate::{
    Error, Health, ServiceEventType, ServiceInfo, ServiceRegistry, SnapshotReason, WatchEvent,
    WatchStream,
};

/// Tolerances and parameters of the suite.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConformanceOptions {
    /// How long to wait for an event or a change to become visible.
    pub event_timeout: Duration,
    /// `Some(ttl)`: the registry expires instances that are not renewed (the in-memory registry),
    /// and [`expires_after_ttl_unless_renewed`] runs with this TTL. `None`: the backend keeps
    /// instances alive by itself while the registry lives (a lease, a session); its liveness is
    /// checked by killing a registering process instead, in the backend's own tests.
    pub ttl_expiry: Option<Duration>,
    /// How late an expiry may be, beyond the TTL.
    pub expiry_tolerance: Duration,
    /// How many changes [`lagging_watcher_gets_resync`] makes without reading its watch.
    pub lag_burst: usize,
    /// Which fields of an instance the backend keeps (its record format may keep fewer).
    pub kept: KeptFields,
}

/// Which fields of an instance a registry keeps, as the checks compare them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KeptFields {
    /// Every field the checks compare: id, name, version, address, port, protocol, health,
    /// metadata, tags, weight, and the registration times.
    #[default]
    All,
    /// Only id, name, address and port, as a record format that stores `host:port` under a
    /// key naming the instance (go-zero's in etcd). The checks compare these four fields and
    /// leave out what depends on the others (registration times, health after an update); the
    /// events, their order and kinds, upserts, validation, copies and concurrency are checked
    /// in full.
    AddressOnly,
}

impl Default for ConformanceOptions {
    fn default() -> Self {
        ConformanceOptions {
            event_timeout: Duration::from_secs(10),
            ttl_expiry: None,
            expiry_tolerance: Duration::from_secs(2),
            lag_burst: 2_000,
            kept: KeptFields::All,
        }
    }
}

/// The longest bound a check waits for, whatever an option says: an hour. Every option that
/// takes a `Duration` keeps at most this (so `Duration::MAX` means "an hour", and adding bounds
/// to an instant cannot overflow); zero means "at once", so such a check fails unless the
/// result is already there.
pub const MAX_BOUND: Duration = Duration::from_secs(3600);

/// `d`, at most [`MAX_BOUND`].
pub(crate) fn bounded(d: Duration) -> Duration {
    d.min(MAX_BOUND)
}

impl ConformanceOptions {
    /// Sets [`ConformanceOptions::ttl_expiry`] (each at most [`MAX_BOUND`]).
    #[must_use]
    pub fn with_ttl_expiry(mut self, ttl: Duration, tolerance: Duration) -> Self {
        self.ttl_expiry = Some(bounded(ttl));
        self.expiry_tolerance = bounded(tolerance);
        self
    }

    /// Sets [`ConformanceOptions::event_timeout`] (at most [`MAX_BOUND`]).
    #[must_use]
    pub fn with_event_timeout(mut self, timeout: Duration) -> Self {
        self.event_timeout = bounded(timeout);
        self
    }

    /// Sets [`ConformanceOptions::kept`].
    #[must_use]
    pub fn with_kept(mut self, kept: KeptFields) -> Self {
        self.kept = kept;
        self
    }

    /// Sets [`ConformanceOptions::lag_burst`].
    #[must_use]
    pub fn with_lag_burst(mut self, burst: usize) -> Self {
        self.lag_burst = burst;
        self
    }
}

/// Runs every check in turn, ending with the ones that close the registry. The registry is
/// closed afterwards.
pub async fn run_all(registry: &dyn ServiceRegistry, opts: &ConformanceOptions) {
    crud(registry, opts.kept).await;
    upsert_emits_created_then_updated(registry, opts).await;
    invalid(registry, opts.kept).await;
    copies(registry, opts.kept).await;
    unknown_id_is_not_found(registry).await;
    watch_delivers_changes_in_order(registry, opts).await;
    same_sequence_same_events(registry, opts).await;
    watch_service_sees_only_its_service(registry, opts).await;
    dropped_watch_does_not_block(registry, opts).await;
    lagging_watcher_gets_resync(registry, opts).await;
    concurrent_registrations(registry).await;
    if let Some(ttl) = opts.ttl_expiry {
        expires_after_ttl_unless_renewed(registry, ttl, opts).await;
    }
    close_ends_watches_and_is_idempotent(registry, opts).await;
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A service name no other check (in this or another process) uses.
pub fn unique_name(check: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("cf-{check}-{}-{nanos:x}-{n}", std::process::id())
}

/// A healthy test instance with a metadata pair and a tag.
pub fn instance(name: &str, id: &str, port: u16) -> ServiceInfo {
    ServiceInfo::new(id, name, "127.0.0.1", port)
        .with_version("1.0.0")
        .with_health(Health::Healthy)
        .with_metadata("env", "conformance")
        .with_tag("cf")
}

/// Fields a registry must keep as given (it may set the times).
fn assert_same_data(got: &ServiceInfo, want: &ServiceInfo, ctx: &str, kept: KeptFields) {
    if kept == KeptFields::AddressOnly {
        let pick = |s: &ServiceInfo| (s.id.clone(), s.name.clone(), s.address.clone(), s.port);
        assert_eq!(pick(got), pick(want), "{ctx}: stored instance differs");
        return;
    }
    let pick = |s: &ServiceInfo| {
        (
            s.id.clone(),
            s.name.clone(),
            s.version.clone(),
            s.address.clone(),
            s.port,
            s.protocol,
            s.health,
            s.metadata.clone(),
            s.tags.clone(),
            s.weight,
        )
    };
    assert_eq!(pick(got), pick(want), "{ctx}: stored instance differs");
}

async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing within {limit:?}"),
    }
}

async fn expect_snapshot(stream: &mut WatchStream, opts: &ConformanceOptions) -> Vec<ServiceInfo> {
    match within(opts.event_timeout, "initial watch snapshot", stream.next()).await {
        Some(WatchEvent::Snapshot {
            services,
            reason: SnapshotReason::Initial,
        }) => services,
        other => panic!("a watch must start with an initial snapshot, got {other:?}"),
    }
}

/// Next change for service `name`, skipping other services' changes.
async fn next_change_for(
    stream: &mut WatchStream,
    name: &str,
    opts: &ConformanceOptions,
) -> (ServiceEventType, ServiceInfo) {
    let fut = async {
        loop {
            match stream.next().await {
                Some(WatchEvent::Change(ev)) if ev.service.name == name => {
                    return (ev.kind, ev.service)
                }
                Some(WatchEvent::Change(_)) => continue,
                Some(WatchEvent::Snapshot { reason, .. }) => {
                    panic!("unexpected snapshot ({reason:?}) while waiting for a change of {name}")
                }
                None => panic!("watch ended while waiting for a change of {name}"),
            }
        }
    };
    within(opts.event_timeout, "change event", fut).await
}

async fn cleanup(registry: &dyn ServiceRegistry, ids: &[String]) {
    for id in ids {
        match registry.deregister(id).await {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => panic!("cleanup: deregister {id} failed: {e}"),
        }
    }
}

/// Register, read back (by id, by name, in the full list), update, deregister.
pub async fn register_get_list_update_deregister(registry: &dyn ServiceRegistry) {
    crud(registry, KeptFields::All).await;
}

async fn crud(registry: &dyn ServiceRegistry, kept: KeptFields) {
    let name = unique_name("crud");
    let a = instance(&name, &format!("{name}-a"), 8001);
    let b = instance(&name, &format!("{name}-b"), 8002);
    registry.register(&a).await.expect("register a");
    registry.register(&b).await.expect("register b");

    let got = registry.get_service(&a.id).await.expect("get a");
    assert_same_data(&got, &a, "get_service after register", kept);
    if kept == KeptFields::All {
        assert!(!got.created_at.is_zero(), "register must set created_at");
        assert!(!got.updated_at.is_zero(), "register must set updated_at");
    }

    let mut listed = registry
        .list_instances(&name)
        .await
        .expect("list_instances");
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(listed.len(), 2, "list_instances must return both instances");
    assert_same_data(&listed[0], &a, "list_instances[0]", kept);
    assert_same_data(&listed[1], &b, "list_instances[1]", kept);

    let all = registry.list_services().await.expect("list_services");
    let ours: Vec<_> = all.iter().filter(|s| s.name == name).collect();
    assert_eq!(ours.len(), 2, "list_services must include both instances");

    let a2 = a
        .clone()
        .with_version("2.0.0")
        .with_health(Health::Unhealthy);
    registry.update(&a2).await.expect("update a");
    let got = registry
        .get_service(&a.id)
        .await
        .expect("get a after update");
    assert_same_data(&got, &a2, "get_service after update", kept);

    registry.deregister(&a.id).await.expect("deregister a");
    assert!(
        matches!(registry.get_service(&a.id).await, Err(Error::NotFound(_))),
        "get_service after deregister must be NotFound"
    );
    let listed = registry
        .list_instances(&name)
        .await
        .expect("list after deregister");
    assert_eq!(listed.len(), 1, "one instance must remain");
    assert_eq!(listed[0].id, b.id);
    cleanup(registry, std::slice::from_ref(&b.id)).await;
    assert!(
        registry
            .list_instances(&name)
            .await
            .expect("list")
            .is_empty(),
        "an unknown service name lists empty"
    );
}

/// Registering the same id twice is an upsert: `Created`, then `Updated`, and one instance.
pub async fn upsert_emits_created_then_updated(
    registry: &dyn ServiceRegistry,
    opts: &ConformanceOptions,
) {
    let name = unique_name("upsert");
    let mut watch = registry.watch_service(&name).await.expect("watch_service");
    let initial = expect_snapshot(&mut watch, opts).await;
    assert!(initial.is_empty(), "a fresh service's snapshot is empty");

    let a = instance(&name, &format!("{name}-a"), 8001);
    registry.register(&a).await.expect("first register");
    let first = registry.get_service(&a.id).await.expect("get");
    let a2 = a.clone().with_version("1.1.0");
    registry.register(&a2).await.expect("second register");

    let (k1, s1) = next_change_for(&mut watch, &name, opts).await;
    assert_eq!(
        k1,
        ServiceEventType::Created,
        "first register emits Created"
    );
    assert_same_data(&s1, &a, "Created event", opts.kept);
    let (k2, s2) = next_change_for(&mut watch, &name, opts).await;
    assert_eq!(
        k2,
        ServiceEventType::Updated,
        "second register emits Updated"
    );
    assert_same_data(&s2, &a2, "Updated event", opts.kept);

    let listed = registry.list_instances(&name).await.expect("list");
    assert_eq!(listed.len(), 1, "an upsert must not duplicate the instance");
    assert_same_data(&listed[0], &a2, "after upsert", opts.kept);
    assert_eq!(
        listed[0].created_at, first.created_at,
        "an upsert keeps the original created_at"
    );
    cleanup(registry, &[a.id]).await;
}

/// Every kind of invalid instance is rejected with `InvalidInstance` and changes nothing.
pub async fn rejects_invalid_instances(registry: &dyn ServiceRegistry) {
    invalid(registry, KeptFields::All).await;
}

async fn invalid(registry: &dyn ServiceRegistry, kept: KeptFields) {
    let name = unique_name("invalid");
    let good = instance(&name, &format!("{name}-good"), 8001);
    registry.register(&good).await.expect("register good");

    let mut bad = Vec::new();
    let mut s = good.clone();
    s.id = String::new();
    bad.push(("empty id", s));
    let mut s = good.clone();
    s.name = String::new();
    bad.push(("empty name", s));
    let mut s = good.clone();
    s.name = format!("{name}/x");
    bad.push(("`/` in name", s));
    let mut s = good.clone();
    s.id = format!("{name}/../x");
    bad.push(("`/..` in id", s));
    let mut s = good.clone();
    s.id = "..".into();
    bad.push(("`..` id", s));
    let mut s = good.clone();
    s.id = format!("{name}\u{0}x");
    bad.push(("control character in id", s));
    let mut s = good.clone();
    s.port = 0;
    bad.push(("port 0", s));
    let mut s = good.clone();
    s.address = String::new();
    bad.push(("empty address", s));
    let mut s = good.clone();
    s.id = "x".repeat(crate::validate::MAX_ID_LEN + 1);
    bad.push(("overlong id", s));
    let mut s = good.clone();
    s.name = "n".repeat(crate::validate::MAX_NAME_LEN + 1);
    bad.push(("overlong name", s));

    for (what, s) in &bad {
        match registry.register(s).await {
            Err(Error::InvalidInstance(_)) => {}
            other => panic!("register with {what}: expected InvalidInstance, got {other:?}"),
        }
        match registry.update(s).await {
            Err(Error::InvalidInstance(_)) => {}
            other => panic!("update with {what}: expected InvalidInstance, got {other:?}"),
        }
    }
    // An update of the existing id with invalid data must not touch it either.
    let mut s = good.clone();
    s.port = 0;
    assert!(matches!(
        registry.update(&s).await,
        Err(Error::InvalidInstance(_))
    ));
    let listed = registry.list_instances(&name).await.expect("list");
    assert_eq!(
        listed.len(),
        1,
        "invalid input must not add or remove anything"
    );
    assert_same_data(&listed[0], &good, "after invalid input", kept);
    match registry.list_instances("bad/name").await {
        Err(Error::InvalidInstance(_)) => {}
        other => panic!("list_instances(\"bad/name\"): expected InvalidInstance, got {other:?}"),
    }
    cleanup(registry, &[good.id]).await;
}

/// Values are copied in and out: changing a returned or a registered value changes nothing stored.
pub async fn returns_copies(registry: &dyn ServiceRegistry) {
    copies(registry, KeptFields::All).await;
}

async fn copies(registry: &dyn ServiceRegistry, kept: KeptFields) {
    let name = unique_name("copies");
    let mut a = instance(&name, &format!("{name}-a"), 8001);
    registry.register(&a).await.expect("register");
    a.metadata.insert("mutated".into(), "yes".into());
    a.port = 9999;
    let mut got = registry.get_service(&a.id).await.expect("get");
    assert_eq!(
        got.port, 8001,
        "changing the caller's value must not change the stored one"
    );
    assert!(!got.metadata.contains_key("mutated"));
    got.tags.push("mutated".into());
    got.health = Health::Unhealthy;
    let again = registry.get_service(&a.id).await.expect("get again");
    assert!(!again.tags.contains(&"mutated".to_string()));
    assert_ne!(
        again.health,
        Health::Unhealthy,
        "a returned value is a copy"
    );
    if kept == KeptFields::All {
        assert_eq!(again.health, Health::Healthy, "a returned value is a copy");
    }
    cleanup(registry, &[a.id]).await;
}

/// An unknown id gives `NotFound` for get, deregister, update and renew.
pub async fn unknown_id_is_not_found(registry: &dyn ServiceRegistry) {
    let name = unique_name("unknown");
    let ghost = instance(&name, &format!("{name}-ghost"), 8001);
    assert!(
        matches!(
            registry.get_service(&ghost.id).await,
            Err(Error::NotFound(_))
        ),
        "get_service of an unknown id"
    );
    assert!(
        matches!(
            registry.deregister(&ghost.id).await,
            Err(Error::NotFound(_))
        ),
        "deregister of an unknown id"
    );
    assert!(
        matches!(registry.update(&ghost).await, Err(Error::NotFound(_))),
        "update of an unknown id"
    );
    assert!(
        matches!(registry.renew(&ghost.id).await, Err(Error::NotFound(_))),
        "renew of an unknown id"
    );
    assert!(
        registry
            .list_instances(&name)
            .await
            .expect("list")
            .is_empty(),
        "update of an unknown id must not create it"
    );
}

/// A watch starts with a snapshot that includes existing instances and then delivers
/// `Created`, `Updated`, `Deleted` in the order they happened.
pub async fn watch_delivers_changes_in_order(
    registry: &dyn ServiceRegistry,
    opts: &ConformanceOptions,
) {
    let name = unique_name("watch");
    let pre = instance(&name, &format!("{name}-pre"), 8000);
    registry.register(&pre).await.expect("register pre");
    let mut watch = registry.watch().await.expect("watch");
    let snap = expect_snapshot(&mut watch, opts).await;
    assert!(
        snap.iter().any(|s| s.id == pre.id),
        "the initial snapshot must contain instances registered before the watch"
    );

    let a = instance(&name, &format!("{name}-a"), 8001);
    registry.register(&a).await.expect("register");
    let a2 = a.clone().with_health(Health::Unhealthy);
    registry.update(&a2).await.expect("update");
    registry.deregister(&a.id).await.expect("deregister");

    let (k, s) = next_change_for(&mut watch, &name, opts).await;
    assert_eq!(
        (k, s.id.as_str()),
        (ServiceEventType::Created, a.id.as_str())
    );
    let (k, s) = next_change_for(&mut watch, &name, opts).await;
    assert_eq!(
        (k, s.id.as_str()),
        (ServiceEventType::Updated, a.id.as_str())
    );
    if opts.kept == KeptFields::All {
        assert_eq!(s.health, Health::Unhealthy, "Updated carries the new state");
    }
    let (k, s) = next_change_for(&mut watch, &name, opts).await;
    assert_eq!(
        (k, s.id.as_str()),
        (ServiceEventType::Deleted, a.id.as_str())
    );
    assert_eq!(s.name, name, "Deleted carries at least the id and the name");
    cleanup(registry, &[pre.id]).await;
}

/// One sequence of calls gives one sequence of events, on every backend and on both kinds of
/// stream (`watch` and `watch_service`): each call's change, in the order of the calls, with
/// nothing merged, reordered or dropped. Ids are chosen so that id order differs from call order.
pub async fn same_sequence_same_events(registry: &dyn ServiceRegistry, opts: &ConformanceOptions) {
    let name = unique_name("order");
    let mut all = registry.watch().await.expect("watch");
    let mut one = registry.watch_service(&name).await.expect("watch_service");
    expect_snapshot(&mut all, opts).await;
    expect_snapshot(&mut one, opts).await;
    let a = instance(&name, &format!("{name}-a"), 8101);
    let b = instance(&name, &format!("{name}-b"), 8102);
    let c = instance(&name, &format!("{name}-c"), 8103);
    registry.register(&c).await.expect("register c");
    registry.register(&a).await.expect("register a");
    registry
        .update(&c.clone().with_metadata("step", "2"))
        .await
        .expect("update c");
    registry.deregister(&a.id).await.expect("deregister a");
    registry.register(&b).await.expect("register b");
    registry.deregister(&c.id).await.expect("deregister c");
    let want = [
        (ServiceEventType::Created, c.id.clone()),
        (ServiceEventType::Created, a.id.clone()),
        (ServiceEventType::Updated, c.id.clone()),
        (ServiceEventType::Deleted, a.id.clone()),
        (ServiceEventType::Created, b.id.clone()),
        (ServiceEventType::Deleted, c.id.clone()),
    ];
    for (label, stream) in [("watch", &mut all), ("watch_service", &mut one)] {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let (kind, s) = next_change_for(stream, &name, opts).await;
            got.push((kind, s.id));
        }
        assert_eq!(
            got, want,
            "{label}: events must follow the calls, one each, in order"
        );
    }
    cleanup(registry, &[b.id]).await;
}

/// `watch_service` sees its own service only.
pub async fn watch_service_sees_only_its_service(
    registry: &dyn ServiceRegistry,
    opts: &ConformanceOptions,
) {
    let mine = unique_name("mine");
    let other = unique_name("other");
    let o = instance(&other, &format!("{other}-o"), 8000);
    registry.register(&o).await.expect("register other");
    let mut watch = registry.watch_service(&mine).await.expect("watch_service");
    let snap = expect_snapshot(&mut watch, opts).await;
    assert!(
        snap.iter().all(|s| s.name == mine),
        "snapshot limited to the service"
    );
    let o2 = o.clone().with_version("9");
    registry.register(&o2).await.expect("update other");
    let m = instance(&mine, &format!("{mine}-m"), 8001);
    registry.register(&m).await.expect("register mine");
    match within(opts.event_timeout, "watch_service change", watch.next()).await {
        Some(WatchEvent::Change(ev)) => {
            assert_eq!(
                ev.service.name, mine,
                "watch_service delivered another service"
            );
            assert_eq!(ev.kind, ServiceEventType::Created);
        }
        other => panic!("expected the Created change of {mine}, got {other:?}"),
    }
    cleanup(registry, &[o.id, m.id]).await;
}

/// A dropped watch stream stops its watch: the registry keeps serving at full speed.
pub async fn dropped_watch_does_not_block(
    registry: &dyn ServiceRegistry,
    opts: &ConformanceOptions,
) {
    let name = unique_name("dropped");
    let watch = registry.watch().await.expect("watch");
    drop(watch);
    let ids: Vec<String> = (0..50).map(|i| format!("{name}-{i}")).collect();
    within(
        opts.event_timeout,
        "50 registrations after a dropped watch",
        async {
            for (i, id) in ids.iter().enumerate() {
                registry
                    .register(&instance(&name, id, 8000 + i as u16))
                    .await
                    .expect("register");
            }
        },
    )
    .await;
    cleanup(registry, &ids).await;
}

/// What [`lagging_watcher_gets_resync`] observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagReport {
    /// Whether the watcher received a resync snapshot (it fell behind).
    pub resynced: bool,
    /// Changes it received.
    pub changes: usize,
}

/// A watcher that does not read while many changes happen ends with the registry's exact state:
/// it either received every change or a resync snapshot; never a silent gap.
pub async fn lagging_watcher_gets_resync(
    registry: &dyn ServiceRegistry,
    opts: &ConformanceOptions,
) -> LagReport {
    let name = unique_name("lag");
    let mut watch = registry.watch_service(&name).await.expect("watch_service");
    let mut view: BTreeMap<String, ServiceInfo> = expect_snapshot(&mut watch, opts)
        .await
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let ids: Vec<String> = (0..opts.lag_burst).map(|i| format!("{name}-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let port = 1 + (i % 60_000) as u16;
        registry
            .register(&instance(&name, id, port))
            .await
            .expect("burst register");
    }
    // Every other instance changes again, so the final state is not only "created".
    for id in ids.iter().step_by(2) {
        let mut s = registry.get_service(id).await.expect("get");
        s.health = Health::Unhealthy;
        registry.update(&s).await.expect("burst update");
    }
    let expected: BTreeMap<String, ServiceInfo> = registry
        .list_instances(&name)
        .await
        .expect("list")
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    assert_eq!(expected.len(), ids.len());

    let mut report = LagReport {
        resynced: false,
        changes: 0,
    };
    let same = |view: &BTreeMap<String, ServiceInfo>| {
        view.len() == expected.len()
            && view
                .iter()
                .all(|(id, s)| expected.get(id).is_some_and(|e| e.health == s.health))
    };
    let deadline = tokio::time::Instant::now() + opts.event_timeout * 3;
    while !same(&view) {
        let item = tokio::time::timeout_at(deadline, watch.next()).await;
        match item {
            Ok(Some(WatchEvent::Snapshot { services, .. })) => {
                report.resynced = true;
                view = services.into_iter().map(|s| (s.id.clone(), s)).collect();
            }
            Ok(Some(WatchEvent::Change(ev))) => {
                report.changes += 1;
                match ev.kind {
                    ServiceEventType::Deleted => {
                        view.remove(&ev.service.id);
                    }
                    _ => {
                        view.insert(ev.service.id.clone(), ev.service);
                    }
                }
            }
            Ok(None) => panic!("watch ended while catching up"),
            Err(_) => panic!(
                "a lagging watcher's view never matched the registry: {} of {} instances, \
                 {} changes, resynced: {} (a silent gap)",
                view.len(),
                expected.len(),
                report.changes,
                report.resynced
            ),
        }
    }
    cleanup(registry, &ids).await;
    report
}

/// 10 tasks × 10 concurrent registrations give exactly 100 instances.
pub async fn concurrent_registrations(registry: &dyn ServiceRegistry) {
    let name = unique_name("concurrent");
    let tasks = (0..10).map(|t| {
        let name = name.clone();
        async move {
            for i in 0..10 {
                let id = format!("{name}-{t}-{i}");
                registry
                    .register(&instance(&name, &id, 8000 + (t * 10 + i) as u16))
                    .await
                    .expect("concurrent register");
            }
        }
    });
    futures_util::future::join_all(tasks).await;
    let listed = registry.list_instances(&name).await.expect("list");
    assert_eq!(listed.len(), 100, "10 × 10 concurrent registrations");
    let mut ids: Vec<_> = listed.iter().map(|s| s.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100, "no duplicate ids");
    cleanup(registry, &ids).await;
}

/// An instance stays while renewed within its TTL, and expires (with a `Deleted` event) within
/// the TTL plus the tolerance once renewals stop.
pub async fn expires_after_ttl_unless_renewed(
    registry: &dyn ServiceRegistry,
    ttl: Duration,
    opts: &ConformanceOptions,
) {
    let name = unique_name("ttl");
    let a = instance(&name, &format!("{name}-a"), 8001).with_ttl(ttl);
    let mut watch = registry.watch_service(&name).await.expect("watch");
    expect_snapshot(&mut watch, opts).await;
    registry.register(&a).await.expect("register");
    let (k, _) = next_change_for(&mut watch, &name, opts).await;
    assert_eq!(k, ServiceEventType::Created);

    // Renew at a third of the TTL for twice the TTL: it must stay.
    let step = ttl / 3;
    for _ in 0..6 {
        tokio::time::sleep(step).await;
        registry.renew(&a.id).await.expect("renew within the TTL");
    }
    let got = registry
        .get_service(&a.id)
        .await
        .expect("renewed instance must stay");
    assert!(got.last_check >= got.created_at);

    let stopped = tokio::time::Instant::now();
    let limit = ttl + opts.expiry_tolerance;
    let (k, s) = next_change_for(
        &mut watch,
        &name,
        &ConformanceOptions {
            event_timeout: limit + Duration::from_millis(500),
            ..opts.clone()
        },
    )
    .await;
    let waited = stopped.elapsed();
    assert_eq!(k, ServiceEventType::Deleted, "expiry emits Deleted");
    assert_eq!(s.id, a.id);
    assert!(
        waited + Duration::from_millis(50) >= ttl,
        "expired after {waited:?}, before its TTL {ttl:?}"
    );
    assert!(waited <= limit, "expired after {waited:?}, limit {limit:?}");
    assert!(matches!(
        registry.get_service(&a.id).await,
        Err(Error::NotFound(_))
    ));
}

/// `close` ends every watch stream, is idempotent, and every later call returns `Closed`.
/// This closes the registry.
pub async fn close_ends_watches_and_is_idempotent(
    registry: &dyn ServiceRegistry,
    opts: &ConformanceOptions,
) {
    let name = unique_name("close");
    let mut all = registry.watch().await.expect("watch");
    let mut one = registry.watch_service(&name).await.expect("watch_service");
    expect_snapshot(&mut all, opts).await;
    expect_snapshot(&mut one, opts).await;
    let a = instance(&name, &format!("{name}-a"), 8001);
    registry.register(&a).await.expect("register");

    registry.close().await.expect("close");
    registry.close().await.expect("a second close is fine");
    assert!(
        matches!(registry.state(), crate::RegistryState::Closed),
        "state after close"
    );

    for stream in [&mut all, &mut one] {
        let ended = within(opts.event_timeout, "watch end after close", async {
            while stream.next().await.is_some() {}
        });
        ended.await;
    }

    let closed = |r: Result<(), Error>, what: &str| {
        assert!(
            matches!(r, Err(Error::Closed)),
            "{what} after close must be Closed, got {r:?}"
        );
    };
    closed(registry.register(&a).await, "register");
    closed(registry.update(&a).await, "update");
    closed(registry.deregister(&a.id).await, "deregister");
    closed(registry.renew(&a.id).await, "renew");
    closed(registry.get_service(&a.id).await.map(|_| ()), "get_service");
    closed(registry.list_services().await.map(|_| ()), "list_services");
    closed(
        registry.list_instances(&name).await.map(|_| ()),
        "list_instances",
    );
    closed(registry.watch().await.map(|_| ()), "watch");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_durations_at_the_extremes_stay_within_the_bound() {
        let o = ConformanceOptions::default()
            .with_event_timeout(Duration::MAX)
            .with_ttl_expiry(Duration::MAX, Duration::MAX);
        assert_eq!(o.event_timeout, MAX_BOUND);
        assert_eq!(o.ttl_expiry, Some(MAX_BOUND));
        // What the checks compute from them stays representable.
        let _ = tokio::time::Instant::now() + o.event_timeout * 3 + o.expiry_tolerance * 2;
        let f = faults::FaultOptions::default()
            .with_connect_bound(Duration::MAX)
            .with_outage_detect(Duration::MAX)
            .with_recovery(Duration::MAX)
            .with_liveness(Duration::MAX, Duration::MAX)
            .with_event_timeout(Duration::MAX)
            .with_freeze_for(Duration::ZERO);
        for d in [
            f.connect_bound,
            f.outage_detect,
            f.recovery,
            f.liveness,
            f.drop_bound,
            f.event_timeout,
        ] {
            assert_eq!(d, MAX_BOUND);
        }
        assert_eq!(f.freeze_for, Duration::ZERO);
        let zero = ConformanceOptions::default().with_event_timeout(Duration::ZERO);
        assert_eq!(zero.event_timeout, Duration::ZERO);
    }
}
