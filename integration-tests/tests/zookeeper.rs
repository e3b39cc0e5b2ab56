//! The ZooKeeper backend against a real ZooKeeper started by the test (Debian's `zookeeper`
//! package): the conformance suite, the fault suite (no server, wrong credentials, a dropped
//! registry, close, a frozen and a killed-and-restarted server), session expiry, connection loss,
//! a killed registering process, digest ACLs, interop with `zkCli.sh`, streams sharing one watch
//! per scope, `state_changes`, and the register-to-watch latency.
//!
//! Without ZooKeeper installed these tests print `SKIPPED` (and fail with `CI=true`).
//! Runtimes are current-thread: the watch task then fetches a changed node's data before the
//! test's next write reaches the server, which the ordering checks of the suite rely on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncBufReadExt;
use waypost_balancer::RoundRobin;
use waypost_core_types::conformance::{self, faults, ConformanceOptions};
use waypost_core_types::{
    Error, Health, InstanceView, RegistryState, Scope, ServiceDiscovery, ServiceEvent,
    ServiceEventType, ServiceInfo, ServiceRegistry, SnapshotReason, WatchEvent, WatchStream,
};
use waypost_discovery::CachedDiscovery;
use waypost_integration_tests::require;
use waypost_integration_tests::zookeeper::{dump, ZkFixture, ZkOptions, ZkServer};
use waypost_registry_zookeeper::{ZookeeperConfig, ZookeeperRegistry};

const SESSION: Duration = Duration::from_secs(2);

async fn server(test: &str) -> Option<ZkServer> {
    require(test, ZkServer::start(ZkOptions::default()).await)
}

fn unique_prefix(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("/waypost-it/{tag}-{}-{nanos:x}", std::process::id())
}

fn config(zk: &ZkServer, prefix: &str) -> ZookeeperConfig {
    ZookeeperConfig::new([zk.addr()])
        .with_prefix(prefix)
        .with_session_timeout(SESSION)
        .with_connect_timeout(Duration::from_secs(10))
        .with_max_backoff(Duration::from_secs(1))
}

async fn connect(config: ZookeeperConfig) -> ZookeeperRegistry {
    ZookeeperRegistry::connect(config)
        .await
        .expect("connect to the test ZooKeeper")
}

fn instance(name: &str, id: &str, port: u16) -> ServiceInfo {
    ServiceInfo::new(id, name, "127.0.0.1", port)
        .with_version("1.0.0")
        .with_health(Health::Healthy)
}

/// A watcher's view: the snapshots it got, the changes as the registry sent them, and the
/// instances it knows.
#[derive(Debug, Default)]
struct View {
    view: InstanceView,
    snapshots: Vec<SnapshotReason>,
    changes: Vec<ServiceEvent>,
}

impl View {
    fn apply(&mut self, event: WatchEvent) {
        match &event {
            WatchEvent::Snapshot { reason, .. } => self.snapshots.push(*reason),
            WatchEvent::Change(change) => self.changes.push(change.clone()),
            _ => {}
        }
        self.view.apply_watch_event(&Scope::All, event);
    }

    fn has(&self, ids: &[&str]) -> bool {
        ids.iter()
            .all(|id| self.view.iter(&Scope::All).any(|s| s.id == *id))
    }
}

/// Applies watch items until `done` holds; false when the limit passes or the stream ends.
async fn drive(
    stream: &mut WatchStream,
    view: &mut View,
    limit: Duration,
    mut done: impl FnMut(&View) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !done(view) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(event)) => view.apply(event),
            Ok(None) | Err(_) => return false,
        }
    }
    true
}

async fn ids_of(registry: &ZookeeperRegistry, name: &str) -> Option<Vec<String>> {
    registry
        .list_instances(name)
        .await
        .ok()
        .map(|list| list.into_iter().map(|s| s.id).collect())
}

/// A watch-driven discovery over its own registry (as another process would have).
async fn discovery_over(zk: &ZkServer, prefix: &str) -> (Arc<ZookeeperRegistry>, CachedDiscovery) {
    let registry = Arc::new(connect(config(zk, prefix)).await);
    let as_dyn: Arc<dyn ServiceRegistry> = registry.clone();
    let discovery = CachedDiscovery::new(as_dyn, Arc::new(RoundRobin::new()));
    (registry, discovery)
}

/// The ids discovery returns for `name` (empty for "no such service").
async fn discovered(discovery: &CachedDiscovery, name: &str) -> Vec<String> {
    match discovery.discover(name).await {
        Ok(list) => {
            let mut ids: Vec<String> = list.iter().map(|s| s.id.clone()).collect();
            ids.sort();
            ids
        }
        Err(_) => Vec::new(),
    }
}

/// Polls until `probe` holds; returns how long it took, or `None` after `limit`.
async fn poll_until<F, Fut>(limit: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if probe().await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn zookeeper_conformance_suite_direct_boxed_and_arc() {
    let test = "zookeeper_conformance_suite_direct_boxed_and_arc";
    let Some(zk) = server(test).await else { return };
    let started = Instant::now();

    let direct = connect(config(&zk, &unique_prefix("conf-direct"))).await;
    conformance::run_all(&direct, &ConformanceOptions::default()).await;
    assert_eq!(direct.state(), RegistryState::Closed);

    let opts = ConformanceOptions::default().with_lag_burst(300);
    let boxed: Box<dyn ServiceRegistry> =
        Box::new(connect(config(&zk, &unique_prefix("conf-box"))).await);
    conformance::run_all(boxed.as_ref(), &opts).await;

    let shared: Arc<dyn ServiceRegistry> =
        Arc::new(connect(config(&zk, &unique_prefix("conf-arc"))).await);
    conformance::run_all(shared.as_ref(), &opts).await;

    // A watcher with a small buffer must get a resync snapshot, never a silent gap.
    let small = connect(config(&zk, &unique_prefix("conf-lag")).with_watch_buffer(32)).await;
    let report = conformance::lagging_watcher_gets_resync(
        &small,
        &ConformanceOptions::default().with_lag_burst(400),
    )
    .await;
    assert!(
        report.resynced,
        "a watcher 400 changes behind a 32-slot buffer must be resynced: {report:?}"
    );
    small.close().await.expect("close");
    eprintln!(
        "zookeeper conformance (3 runs + lag check) took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn session_expiry_restores_registrations_within_5s_of_resume() {
    let test = "session_expiry_restores_registrations_within_5s_of_resume";
    let Some(zk) = server(test).await else { return };
    let prefix = unique_prefix("expiry");
    let owner = connect(config(&zk, &prefix)).await;
    let observer = connect(config(&zk, &prefix)).await;
    let name = "expiring";
    owner
        .register(&instance(name, "e-1", 8001))
        .await
        .expect("register e-1");
    owner
        .register(&instance(name, "e-2", 8002))
        .await
        .expect("register e-2");
    let mut watch = observer.watch_service(name).await.expect("watch");
    let mut view = View::default();
    assert!(
        drive(&mut watch, &mut view, Duration::from_secs(5), |v| v
            .has(&["e-1", "e-2"]))
        .await
    );
    let (discovery_registry, discovery) = discovery_over(&zk, &prefix).await;
    assert_eq!(discovered(&discovery, name).await, vec!["e-1", "e-2"]);
    let discovery_session = discovery_registry.session_id().expect("session");
    let old_session = owner.session_id().expect("session");
    let timeout = owner.negotiated_session_timeout().expect("timeout");

    // Freeze the server for longer than the session timeout: the session expires.
    zk.pause().expect("SIGSTOP");
    let frozen = Instant::now();
    let mut saw_recovering = false;
    while frozen.elapsed() < timeout + Duration::from_secs(2) {
        if matches!(owner.state(), RegistryState::Recovering { .. }) {
            saw_recovering = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    zk.resume().expect("SIGCONT");
    let resumed = Instant::now();
    assert!(
        saw_recovering,
        "state() must report Recovering while the server is frozen"
    );

    // Our registrations exist again within 5 s, in a new session, and another registry sees them.
    let visible = poll_until(Duration::from_secs(5), || async {
        ids_of(&observer, name)
            .await
            .is_some_and(|ids| ids.contains(&"e-1".to_string()) && ids.contains(&"e-2".to_string()))
            && owner.session_id().is_some_and(|s| s != old_session)
    })
    .await;
    let Some(after) = visible else {
        panic!(
            "registrations not restored within 5 s of resume; owner state {:?}, observer sees {:?}\n{}",
            owner.state(),
            ids_of(&observer, name).await,
            zk.process.log_tail(2000)
        );
    };
    eprintln!("session expiry: registrations back {after:?} after SIGCONT");
    // Discovery in another registry: its session expired too, it resynced, and it serves both.
    let shown = poll_until(
        Duration::from_secs(5).saturating_sub(resumed.elapsed()),
        || async {
            discovery_registry
                .session_id()
                .is_some_and(|s| s != discovery_session)
                && discovery_registry.state().is_connected()
                && discovered(&discovery, name).await == vec!["e-1", "e-2"]
        },
    )
    .await;
    assert!(
        shown.is_some(),
        "discovery after expiry: {:?} ({:?})",
        discovered(&discovery, name).await,
        discovery_registry.state()
    );
    assert!(
        owner.state().is_connected(),
        "state after recovery: {:?}",
        owner.state()
    );

    // The observer's watch resynced (its session expired too) and shows both again.
    let remaining =
        Duration::from_secs(5).saturating_sub(resumed.elapsed()) + Duration::from_millis(500);
    let ok = drive(&mut watch, &mut view, remaining, |v| {
        v.snapshots.contains(&SnapshotReason::Reconnected) && v.has(&["e-1", "e-2"])
    })
    .await;
    assert!(ok, "watch after expiry: {view:?}");
    // Still registered after the old session's expiry has certainly been processed.
    tokio::time::sleep(timeout).await;
    let ids = ids_of(&observer, name).await.expect("list");
    assert_eq!(ids, vec!["e-1".to_string(), "e-2".to_string()]);
    assert_eq!(discovered(&discovery, name).await, vec!["e-1", "e-2"]);
    discovery.close().await.expect("close discovery");
    discovery_registry.close().await.expect("close");
    owner.close().await.expect("close");
    observer.close().await.expect("close");
}

#[tokio::test(flavor = "current_thread")]
async fn connection_loss_without_expiry_keeps_the_session() {
    let test = "connection_loss_without_expiry_keeps_the_session";
    let Some(zk) = server(test).await else { return };
    let prefix = unique_prefix("connloss");
    // 4 s is the server's maximum (20 ticks); the client declares a connection lost after 1.6 s.
    let cfg = config(&zk, &prefix).with_session_timeout(Duration::from_secs(4));
    let registry = connect(cfg).await;
    // Every state the registry reports, until the stream ends after `Closed`.
    let mut changes = registry.state_changes();
    let states = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(state) = changes.next().await {
            seen.push(state);
        }
        seen
    });
    registry
        .register(&instance("steady", "s-1", 8001))
        .await
        .expect("register");
    let mut watch = registry.watch().await.expect("watch");
    let mut view = View::default();
    assert!(
        drive(&mut watch, &mut view, Duration::from_secs(5), |v| v
            .has(&["s-1"]))
        .await
    );
    let session = registry.session_id().expect("session");

    zk.pause().expect("SIGSTOP");
    let frozen = Instant::now();
    let mut saw_recovering = false;
    while frozen.elapsed() < Duration::from_millis(2500) {
        if matches!(registry.state(), RegistryState::Recovering { .. }) {
            saw_recovering = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    zk.resume().expect("SIGCONT");
    assert!(saw_recovering, "a lost connection must show as Recovering");

    let back = poll_until(Duration::from_secs(5), || async {
        registry.state().is_connected()
    })
    .await;
    assert!(
        back.is_some(),
        "not connected again: {:?}",
        registry.state()
    );
    assert_eq!(
        registry.session_id(),
        Some(session),
        "a connection loss shorter than the session timeout must keep the session"
    );
    // The watch resyncs after the reconnect (changes during the outage could be missing).
    assert!(
        drive(&mut watch, &mut view, Duration::from_secs(5), |v| {
            v.snapshots.contains(&SnapshotReason::Reconnected) && v.has(&["s-1"])
        })
        .await,
        "watch after reconnect: {view:?}"
    );
    let got = registry.get_service("s-1").await.expect("still registered");
    assert_eq!(got.port, 8001);
    // Changes after the reconnect still reach the watch.
    registry
        .register(&instance("steady", "s-2", 8002))
        .await
        .expect("register after reconnect");
    assert!(
        drive(&mut watch, &mut view, Duration::from_secs(5), |v| v
            .has(&["s-1", "s-2"]))
        .await,
        "the watch must deliver changes after the reconnect: {view:?}"
    );
    registry.close().await.expect("close");
    let seen = tokio::time::timeout(Duration::from_secs(1), states)
        .await
        .expect("state_changes ends after close")
        .expect("collector");
    assert_eq!(seen.first(), Some(&RegistryState::Connected), "{seen:?}");
    let recovering = seen
        .iter()
        .position(|s| matches!(s, RegistryState::Recovering { .. }))
        .unwrap_or_else(|| panic!("state_changes must report Recovering: {seen:?}"));
    assert!(
        seen[recovering..].contains(&RegistryState::Connected),
        "state_changes must report Connected again after Recovering: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&RegistryState::Closed), "{seen:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn killed_registering_process_disappears_within_session_timeout() {
    let test = "killed_registering_process_disappears_within_session_timeout";
    let Some(zk) = server(test).await else { return };
    let prefix = unique_prefix("child");
    let observer = connect(config(&zk, &prefix)).await;
    let name = "child-svc";
    let mut watch = observer.watch_service(name).await.expect("watch");
    let mut view = View::default();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_zk_child"))
        .args([
            zk.addr(),
            prefix.clone(),
            name.to_owned(),
            "child-1".to_owned(),
            SESSION.as_millis().to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn zk_child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("child ready in time")
        .expect("read child output");
    assert_eq!(ready.as_deref(), Some("READY"));
    assert!(
        drive(&mut watch, &mut view, Duration::from_secs(5), |v| v
            .has(&["child-1"]))
        .await
    );
    assert_eq!(
        ids_of(&observer, name).await,
        Some(vec!["child-1".to_string()])
    );
    let (discovery_registry, discovery) = discovery_over(&zk, &prefix).await;
    assert_eq!(discovered(&discovery, name).await, vec!["child-1"]);

    child.start_kill().expect("SIGKILL the child");
    let killed = Instant::now();
    let _ = child.wait().await;
    let limit = SESSION + Duration::from_secs(2);
    let gone = poll_until(limit, || async {
        ids_of(&observer, name).await == Some(Vec::new())
    })
    .await;
    let Some(after) = gone else {
        panic!("the killed process's node is still listed after {limit:?}");
    };
    eprintln!("killed child: node gone {after:?} after SIGKILL (session timeout {SESSION:?})");
    let remaining = limit.saturating_sub(killed.elapsed()) + Duration::from_millis(500);
    assert!(
        drive(&mut watch, &mut view, remaining, |v| !v.has(&["child-1"])).await,
        "watch must report the Deleted: {view:?}"
    );
    assert!(view
        .changes
        .iter()
        .any(|c| c.kind == ServiceEventType::Deleted && c.service.id == "child-1"));
    // Another process's discovery no longer returns it.
    let forgotten = poll_until(Duration::from_secs(1), || async {
        discovered(&discovery, name).await.is_empty()
    })
    .await;
    assert!(
        forgotten.is_some() && killed.elapsed() <= limit + Duration::from_secs(1),
        "discovery still returns the killed instance: {:?}",
        discovered(&discovery, name).await
    );
    assert!(matches!(
        discovery.discover(name).await,
        Err(Error::ServiceNotFound(_))
    ));
    discovery.close().await.expect("close discovery");
    discovery_registry.close().await.expect("close");
    observer.close().await.expect("close");
}

#[tokio::test(flavor = "current_thread")]
async fn zookeeper_fault_suite() {
    let test = "zookeeper_fault_suite";
    let Some(mut fixture) = require(test, ZkFixture::start(&unique_prefix("faults")).await) else {
        return;
    };
    let unreachable = faults::no_server_fails_fast(&fixture).await;
    let text = unreachable.error.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{}", unreachable.port)),
        "the error names the server: {text}"
    );
    eprintln!("no server: failed after {:?}: {text}", unreachable.took);

    match faults::wrong_credentials_are_a_clear_auth_error(&mut fixture).await {
        Some(Error::Auth { backend, message }) => {
            assert_eq!(backend, "zookeeper");
            assert!(message.contains("does not match"), "{message}");
        }
        other => panic!("ZooKeeper has digest authentication: {other:?}"),
    }
    let gone = faults::dropped_registry_vanishes_promptly(&fixture).await;
    eprintln!("drop: nodes gone {gone:?} after the registry was dropped");
    faults::close_is_idempotent_and_ends_streams(&fixture).await;
    let frozen = faults::freeze_and_thaw_recovers(&mut fixture).await;
    eprintln!("freeze: {frozen:?}");
    let restarted = faults::kill_and_restart_recovers(&mut fixture).await;
    eprintln!(
        "server restart: recovered {:?} after the server was ready",
        restarted.recovered_after
    );
}

#[tokio::test(flavor = "current_thread")]
async fn invalid_prefix_is_a_config_error() {
    let invalid =
        ZookeeperRegistry::connect(ZookeeperConfig::new(["a:1"]).with_prefix("bad")).await;
    assert!(matches!(invalid, Err(Error::InvalidConfig(_))));
}

#[tokio::test(flavor = "current_thread")]
async fn digest_acl_guards_writes_and_other_users() {
    let test = "digest_acl_and_wrong_credentials";
    let Some(zk) = server(test).await else { return };
    let prefix = unique_prefix("acl");
    let name = "guarded";
    let owner = connect(config(&zk, &prefix).with_digest_auth("alice", "right-password")).await;
    let x = instance(name, "g-1", 8001);
    owner.register(&x).await.expect("owner registers");

    // A wrong password: the fault suite (`zookeeper_fault_suite`) checks it. Another user:
    let bob = ZookeeperRegistry::connect(config(&zk, &prefix).with_digest_auth("bob", "pw")).await;
    assert!(
        matches!(bob, Err(Error::Auth { .. })),
        "another user: {bob:?}"
    );

    // Without credentials: reading works (readable by anyone), writing does not.
    let anon = connect(config(&zk, &prefix)).await;
    let seen = anon.list_instances(name).await.expect("anyone may read");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].id, "g-1");
    assert!(matches!(
        anon.register(&instance(name, "intruder", 9)).await,
        Err(Error::Auth { .. })
    ));
    assert!(matches!(
        anon.deregister("g-1").await,
        Err(Error::Auth { .. })
    ));
    assert!(matches!(
        anon.update(&x.clone().with_health(Health::Unhealthy)).await,
        Err(Error::Auth { .. })
    ));
    assert_eq!(
        owner.get_service("g-1").await.expect("unchanged").health,
        Health::Healthy
    );

    // The node's ACL as ZooKeeper's own CLI shows it.
    let acl = zk
        .zkcli(&["getAcl", &format!("{prefix}/{name}/g-1")])
        .await
        .expect("zkCli getAcl");
    assert!(acl.contains("'world,'anyone\n: r"), "{acl}");
    assert!(
        acl.contains("'digest,'alice:") && acl.contains(": cdrwa"),
        "{acl}"
    );

    anon.close().await.expect("close");
    owner.close().await.expect("close");
}

#[tokio::test(flavor = "current_thread")]
async fn interop_nodes_written_by_zkcli_in_go_json_are_discovered() {
    let test = "interop_nodes_written_by_zkcli_in_go_json_are_discovered";
    let Some(zk) = server(test).await else { return };
    let prefix = unique_prefix("interop");
    let registry = connect(config(&zk, &prefix)).await;
    let name = "go-user";
    let mut watch = registry.watch_service(name).await.expect("watch");
    let mut view = View::default();
    assert!(
        drive(&mut watch, &mut view, Duration::from_secs(5), |v| !v
            .snapshots
            .is_empty())
        .await
    );

    // Exactly what the Go module writes (its field order, ttl in nanoseconds, zero last_check).
    let go_json = r#"{"id":"go-user-1","name":"go-user","version":"1.2.0","address":"10.0.0.7","port":8080,"protocol":"http","health":"healthy","metadata":{"region":"us-west-1"},"tags":["api","v1"],"created_at":"2024-05-01T10:00:00Z","updated_at":"2024-05-01T10:00:00Z","last_check":"0001-01-01T00:00:00Z","ttl":30000000000}"#;
    zk.zkcli(&["create", &format!("{prefix}/{name}")])
        .await
        .expect("zkCli create dir");
    zk.zkcli(&["create", &format!("{prefix}/{name}/go-user-1"), go_json])
        .await
        .expect("zkCli create node");
    // Foreign data beside it is skipped.
    zk.zkcli(&["create", &format!("{prefix}/{name}/junk"), "not-json"])
        .await
        .expect("zkCli create junk");

    assert!(
        drive(&mut watch, &mut view, Duration::from_secs(10), |v| v
            .has(&["go-user-1"]))
        .await,
        "the zkCli node must reach the watch: {view:?}"
    );
    let created = view
        .changes
        .iter()
        .find(|c| c.service.id == "go-user-1")
        .expect("a change for go-user-1");
    assert_eq!(created.kind, ServiceEventType::Created);
    let listed = registry.list_instances(name).await.expect("list");
    assert_eq!(listed.len(), 1, "junk must be skipped: {listed:?}");
    let got = &listed[0];
    assert_eq!(
        (got.address.as_str(), got.port, got.version.as_str()),
        ("10.0.0.7", 8080, "1.2.0")
    );
    assert_eq!(got.health, Health::Healthy);
    assert_eq!(got.ttl, Duration::from_secs(30));
    assert_eq!(
        got.metadata.get("region").map(String::as_str),
        Some("us-west-1")
    );
    assert_eq!(got.tags, vec!["api".to_string(), "v1".to_string()]);
    assert_eq!(
        registry.get_service("go-user-1").await.expect("get").id,
        "go-user-1"
    );
    assert_eq!(
        got.to_json().expect("json"),
        go_json,
        "read and written back byte-identically"
    );

    // And the other way: what we write is the Go JSON, readable by zkCli.
    let ours = instance(name, "rust-1", 9090).with_ttl(Duration::from_secs(30));
    registry.register(&ours).await.expect("register");
    let out = zk
        .zkcli(&["get", &format!("{prefix}/{name}/rust-1")])
        .await
        .expect("zkCli get");
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in:\n{out}"));
    assert!(line.starts_with(r#"{"id":"rust-1","name":"go-user","version":"1.0.0","address":"127.0.0.1","port":9090,"protocol":"http","health":"healthy""#), "{line}");
    assert!(line.ends_with(r#","ttl":30000000000}"#), "{line}");
    let parsed = ServiceInfo::from_json(line.as_bytes()).expect("valid");
    assert_eq!(parsed.id, "rust-1");
    registry.close().await.expect("close");
}

#[tokio::test(flavor = "current_thread")]
async fn register_takes_over_another_sessions_node_and_close_removes_only_ours() {
    let test = "register_takes_over_another_sessions_node_and_close_removes_only_ours";
    let Some(zk) = server(test).await else { return };
    let prefix = unique_prefix("takeover");
    let first = connect(config(&zk, &prefix)).await;
    let second = connect(config(&zk, &prefix)).await;
    let observer = connect(config(&zk, &prefix)).await;
    let name = "shared-id";
    first
        .register(&instance(name, "x-1", 8001))
        .await
        .expect("first");
    second
        .register(&instance(name, "x-1", 8002))
        .await
        .expect("second takes over");
    second
        .register(&instance(name, "x-2", 8003))
        .await
        .expect("second");

    // The first registry's close must not delete the node the second now owns.
    first.close().await.expect("close first");
    let listed = observer.list_instances(name).await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|s| (s.id.as_str(), s.port))
            .collect::<Vec<_>>(),
        vec![("x-1", 8002), ("x-2", 8003)]
    );

    // Closing the owner removes its nodes at once (not after the session timeout).
    let mut watch = observer.watch_service(name).await.expect("watch");
    let mut view = View::default();
    assert!(
        drive(&mut watch, &mut view, Duration::from_secs(5), |v| v
            .has(&["x-1", "x-2"]))
        .await
    );
    let closing = Instant::now();
    second.close().await.expect("close second");
    assert!(
        drive(&mut watch, &mut view, Duration::from_secs(1), |v| v
            .view
            .is_empty())
        .await,
        "close must remove our nodes at once: {view:?}"
    );
    eprintln!("close: nodes gone {:?} after close()", closing.elapsed());
    assert!(matches!(
        second.register(&instance(name, "x-3", 1)).await,
        Err(Error::Closed)
    ));
    observer.close().await.expect("close");
}

async fn measure_latency(fsync: bool, samples: usize) -> Option<(Duration, Duration, Duration)> {
    let test = "register_to_watch_latency";
    let zk = require(
        test,
        ZkServer::start(ZkOptions {
            fsync,
            ..ZkOptions::default()
        })
        .await,
    )?;
    let prefix = unique_prefix("latency");
    let writer = connect(config(&zk, &prefix)).await;
    let reader = connect(config(&zk, &prefix)).await;
    let name = "latency";
    let mut watch = reader.watch_service(name).await.expect("watch");
    let mut view = View::default();
    assert!(
        drive(&mut watch, &mut view, Duration::from_secs(5), |v| !v
            .snapshots
            .is_empty())
        .await
    );
    // Warm up (JIT, connections).
    for i in 0..20u16 {
        let id = format!("warm-{i}");
        writer
            .register(&instance(name, &id, 7000 + i))
            .await
            .expect("register");
        assert!(
            drive(&mut watch, &mut view, Duration::from_secs(5), |v| v
                .has(&[id.as_str()]))
            .await
        );
    }
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = format!("lat-{i}");
        let start = Instant::now();
        writer
            .register(&instance(name, &id, 8000 + (i % 1000) as u16))
            .await
            .expect("register");
        assert!(
            drive(&mut watch, &mut view, Duration::from_secs(5), |v| v
                .has(&[id.as_str()]))
            .await,
            "registration {id} never reached the other client's watch"
        );
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let pick = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let (p50, p99, max) = (pick(0.50), pick(0.99), latencies[latencies.len() - 1]);
    eprintln!(
        "zookeeper register -> visible in another client's watch, {samples} registrations, \
         fsync={fsync}: p50 = {p50:?}, p99 = {p99:?}, max = {max:?}"
    );
    writer.close().await.expect("close");
    reader.close().await.expect("close");
    Some((p50, p99, max))
}

#[tokio::test(flavor = "current_thread")]
async fn register_to_watch_latency() {
    let Some((_, p99, _)) = measure_latency(false, 300).await else {
        return;
    };
    // Target 50 ms; the assertion leaves room for a busy shared machine.
    assert!(p99 <= Duration::from_millis(250), "p99 {p99:?}");
    let Some((_, p99_fsync, _)) = measure_latency(true, 300).await else {
        return;
    };
    assert!(
        p99_fsync <= Duration::from_millis(500),
        "p99 with fsync {p99_fsync:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn chroot_holds_the_tree_and_dropping_the_registry_ends_its_session() {
    let test = "chroot_holds_the_tree_and_dropping_the_registry_ends_its_session";
    let Some(zk) = server(test).await else { return };
    let root = unique_prefix("chroot");
    let prefix = "/laravel-go/services";
    // The chroot does not exist yet: the registry creates it.
    let rooted = connect(config(&zk, prefix).with_chroot(root.as_str())).await;
    rooted
        .register(&instance("rooted", "c-1", 8001))
        .await
        .expect("register");
    assert_eq!(
        ids_of(&rooted, "rooted").await,
        Some(vec!["c-1".to_string()])
    );

    // Without the chroot, the same node sits under `<chroot><prefix>`.
    let plain = connect(config(&zk, &format!("{root}{prefix}"))).await;
    assert_eq!(
        ids_of(&plain, "rooted").await,
        Some(vec!["c-1".to_string()])
    );
    let mut watch = plain.watch_service("rooted").await.expect("watch");
    let mut view = View::default();
    assert!(
        drive(&mut watch, &mut view, Duration::from_secs(5), |v| v
            .has(&["c-1"]))
        .await
    );

    // Dropping the registry without close aborts its tasks, and its clean-up task removes the
    // ephemeral node and ends its session at once, long before a session timeout would.
    let session = format!("0x{:x}", rooted.session_id().expect("session") as u64);
    let held = dump(zk.port).await.expect("dump");
    assert!(held.contains(&session), "{session} not in:\n{held}");
    let dropped = Instant::now();
    drop(rooted);
    assert!(
        drive(&mut watch, &mut view, SESSION / 2, |v| v.view.is_empty()).await,
        "dropping the registry must remove its node: {view:?}"
    );
    eprintln!(
        "drop: node gone {:?} after the registry was dropped",
        dropped.elapsed()
    );
    let ended = poll_until(SESSION / 2, || async {
        dump(zk.port).await.is_some_and(|d| !d.contains(&session))
    })
    .await;
    assert!(
        ended.is_some(),
        "dropping the registry must end its session {session}: {:?}",
        dump(zk.port).await
    );
    plain.close().await.expect("close");
}

#[tokio::test(flavor = "current_thread")]
async fn renew_puts_back_our_node_deleted_behind_our_back() {
    let test = "renew_puts_back_our_node_deleted_behind_our_back";
    let Some(zk) = server(test).await else { return };
    let prefix = unique_prefix("renew");
    let owner = connect(config(&zk, &prefix)).await;
    let other = connect(config(&zk, &prefix)).await;
    let x = instance("renewed", "n-1", 8001).with_metadata("k", "v");
    owner.register(&x).await.expect("register");
    owner.renew("n-1").await.expect("renew of a live instance");
    // Someone else removes it (an operator, another tool).
    other
        .deregister("n-1")
        .await
        .expect("delete behind the owner's back");
    assert_eq!(ids_of(&other, "renewed").await, Some(Vec::new()));
    owner.renew("n-1").await.expect("renew puts it back");
    let back = other.get_service("n-1").await.expect("visible again");
    assert_eq!(back.metadata.get("k").map(String::as_str), Some("v"));
    // `renew` of an instance that another registry owns only checks that it exists.
    other
        .renew("n-1")
        .await
        .expect("renew of another registry's live instance");
    assert!(matches!(
        other.renew("nobody").await,
        Err(Error::NotFound(_))
    ));
    owner.close().await.expect("close");
    assert!(matches!(other.renew("n-1").await, Err(Error::NotFound(_))));
    other.close().await.expect("close");
}

#[tokio::test(flavor = "current_thread")]
async fn registries_racing_to_create_the_parents_all_succeed() {
    let test = "registries_racing_to_create_the_parents_all_succeed";
    let Some(zk) = server(test).await else { return };
    // Neither the prefix nor the service directory exists yet; four sessions race for both.
    let prefix = unique_prefix("race");
    let registries: Vec<ZookeeperRegistry> =
        futures_util::future::join_all((0..4).map(|_| connect(config(&zk, &prefix)))).await;
    let name = "raced";
    let tasks = registries
        .iter()
        .enumerate()
        .map(|(r, registry)| async move {
            for i in 0..10u16 {
                let id = format!("race-{r}-{i}");
                registry
                    .register(&instance(name, &id, 8000 + i))
                    .await
                    .unwrap_or_else(|e| panic!("register {id}: {e}"));
            }
        });
    futures_util::future::join_all(tasks).await;
    let listed = ids_of(&registries[0], name).await.expect("list");
    assert_eq!(listed.len(), 40, "{listed:?}");
    for registry in &registries {
        registry.close().await.expect("close");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn expiry_seen_only_by_the_client_replaces_the_stale_node_of_the_old_session() {
    use waypost_integration_tests::zookeeper::{ephemerals_of, MuteProxy};

    let test = "expiry_seen_only_by_the_client_replaces_the_stale_node_of_the_old_session";
    let Some(zk) = server(test).await else { return };
    let proxy = MuteProxy::start(zk.port).await.expect("proxy");
    let prefix = unique_prefix("stale");
    let name = "stale-svc";
    let path = format!("{prefix}/{name}/st-1");
    let timeout = Duration::from_secs(4);
    let owner = connect(
        ZookeeperConfig::new([proxy.addr()])
            .with_prefix(prefix.as_str())
            .with_session_timeout(timeout)
            .with_max_backoff(Duration::from_millis(500)),
    )
    .await;
    let observer = connect(config(&zk, &prefix)).await;
    owner
        .register(&instance(name, "st-1", 8001))
        .await
        .expect("register");
    let old_session = owner.session_id().expect("session");

    // The owner hears nothing more, but its reconnect attempts keep its session alive on the
    // server: the client gives up on the session (after 1.4 × the timeout) before the server does.
    proxy.set_muted(true);
    let expired = poll_until(Duration::from_secs(15), || async {
        matches!(owner.state(), RegistryState::Recovering { ref last_error, .. } if last_error.contains("Expired"))
    })
    .await;
    assert!(
        expired.is_some(),
        "the client never declared its session expired: {:?}",
        owner.state()
    );
    let held = dump(zk.port).await.expect("dump");
    assert_eq!(
        ephemerals_of(&held, old_session),
        vec![path.clone()],
        "the old session must still hold the node when recovery starts:\n{held}"
    );

    proxy.drop_connections();
    proxy.set_muted(false);
    let started = Instant::now();
    let recovered = poll_until(Duration::from_secs(5), || async {
        owner.state().is_connected() && owner.session_id().is_some_and(|s| s != old_session)
    })
    .await;
    assert!(recovered.is_some(), "no new session: {:?}", owner.state());
    let new_session = owner.session_id().expect("session");
    let after = dump(zk.port).await.expect("dump");
    assert_eq!(
        ephemerals_of(&after, new_session),
        vec![path.clone()],
        "the new session must own the node:\n{after}"
    );
    eprintln!(
        "stale node replaced {:?} after the connection came back",
        started.elapsed()
    );
    // Once the server expires the old session (at the latest one timeout after its last
    // reconnect attempt), our node stays: it belongs to the new session.
    tokio::time::sleep(timeout + Duration::from_secs(1)).await;
    let later = dump(zk.port).await.expect("dump");
    assert!(ephemerals_of(&later, old_session).is_empty(), "{later}");
    assert_eq!(
        ephemerals_of(&later, new_session),
        vec![path.clone()],
        "{later}"
    );
    assert_eq!(
        ids_of(&observer, name).await,
        Some(vec!["st-1".to_string()])
    );
    owner.close().await.expect("close");
    observer.close().await.expect("close");
}

#[tokio::test(flavor = "current_thread")]
async fn streams_of_a_scope_share_its_watch_until_the_last_is_dropped() {
    use waypost_integration_tests::zookeeper::{watched_by, wchp};

    let test = "streams_of_a_scope_share_its_watch_until_the_last_is_dropped";
    let Some(zk) = server(test).await else { return };
    let prefix = unique_prefix("shared");
    let registry = connect(config(&zk, &prefix)).await;
    let session = registry.session_id().expect("session");
    let name = "shared-svc";
    let watched = || async {
        let out = wchp(zk.port).await.expect("wchp");
        watched_by(&out, session)
    };
    assert!(watched().await.is_empty(), "no watch before a stream");

    let mut first = registry.watch_service(name).await.expect("watch_service");
    let mut second = registry.watch_service(name).await.expect("watch_service");
    let mut all = registry.watch().await.expect("watch");
    let service_path = format!("{prefix}/{name}");
    assert_eq!(
        watched().await,
        vec![prefix.clone(), service_path.clone()],
        "the server watches the path of each watched scope"
    );
    // Every stream of the scope gets its snapshot and the same changes.
    registry
        .register(&instance(name, "sh-1", 8001))
        .await
        .expect("register");
    for stream in [&mut first, &mut second, &mut all] {
        let mut view = View::default();
        assert!(
            drive(stream, &mut view, Duration::from_secs(5), |v| v
                .has(&["sh-1"]))
            .await,
            "{view:?}"
        );
        assert_eq!(view.snapshots, vec![SnapshotReason::Initial]);
    }

    // Another stream of a watched scope joins its hub: it starts without asking the server.
    zk.pause().expect("SIGSTOP");
    let joined =
        tokio::time::timeout(Duration::from_millis(500), registry.watch_service(name)).await;
    zk.resume().expect("SIGCONT");
    let mut third = joined
        .expect("a stream of a watched scope must start without a server round trip")
        .expect("watch_service");
    let mut view = View::default();
    assert!(
        drive(&mut third, &mut view, Duration::from_secs(5), |v| v
            .has(&["sh-1"]))
        .await
    );
    assert_eq!(view.snapshots, vec![SnapshotReason::Initial]);

    // The scope's watch stays while one of its streams is alive, and goes with the last one.
    drop(first);
    drop(third);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(watched().await, vec![prefix.clone(), service_path.clone()]);
    drop(second);
    let gone = poll_until(Duration::from_secs(2), || async {
        watched().await == vec![prefix.clone()]
    })
    .await;
    assert!(
        gone.is_some(),
        "service watch still set: {:?}",
        watched().await
    );
    // A new stream of that scope starts a new watch with a fresh snapshot.
    let mut again = registry.watch_service(name).await.expect("watch_service");
    let mut view = View::default();
    assert!(
        drive(&mut again, &mut view, Duration::from_secs(5), |v| v
            .has(&["sh-1"]))
        .await
    );
    assert_eq!(watched().await, vec![prefix.clone(), service_path.clone()]);
    drop(all);
    drop(again);
    let none = poll_until(Duration::from_secs(2), || async {
        watched().await.is_empty()
    })
    .await;
    assert!(none.is_some(), "watches left: {:?}", watched().await);
    registry.close().await.expect("close");
}

/// ZooKeeper cannot enforce a per-instance TTL (liveness is the session): the registration
/// works, and the registry says so once, not on every write.
#[tokio::test(flavor = "current_thread")]
async fn per_instance_ttls_are_logged_once_as_not_enforced() {
    let test = "per_instance_ttls_are_logged_once_as_not_enforced";
    let Some(zk) = server(test).await else { return };
    let (logs, _guard) = waypost_integration_tests::logs::capture();
    let registry = connect(config(&zk, &unique_prefix("ttl-note"))).await;
    let ttl = Duration::from_secs(5);
    registry
        .register(&instance("ttl", "t-1", 1).with_ttl(ttl))
        .await
        .expect("register");
    registry
        .register(&instance("ttl", "t-2", 2).with_ttl(ttl))
        .await
        .expect("register");
    registry
        .update(&instance("ttl", "t-1", 1).with_ttl(Duration::MAX))
        .await
        .expect("update");
    assert_eq!(
        logs.count("per-instance TTLs are not enforced"),
        1,
        "{}",
        logs.text()
    );
    assert_eq!(registry.list_instances("ttl").await.expect("list").len(), 2);
    registry.close().await.expect("close");
}
