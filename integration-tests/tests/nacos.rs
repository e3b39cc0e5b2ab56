//! The Nacos backend against a real Nacos-protocol server: rnacos (a Nacos-compatible server
//! written in Rust, installed with `cargo install rnacos --locked`; not Alibaba's Java Nacos),
//! started by each test on free loopback ports. With `NACOS_ADDR=host:port` the tests that do not
//! need to stop, restart or reconfigure the server run against that server instead (e.g. the
//! official Nacos image from `docker-compose.yml`).
//!
//! Without rnacos (and without `NACOS_ADDR`) the tests print `SKIPPED` and pass, unless `CI=true`,
//! where they fail.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use waypost_core_types::conformance::{self, faults, ConformanceOptions};
use waypost_core_types::{
    Error, Health, RegistryState, ServiceEventType, ServiceInfo, ServiceRegistry, SnapshotReason,
    WatchEvent, WatchStream,
};
use waypost_integration_tests::nacos::{
    nacos_target, start_rnacos, subscriber_count, NacosFixture, Rnacos, RnacosOptions,
};
use waypost_integration_tests::{require, wait_until};
use waypost_registry_nacos::{NacosConfig, NacosRegistry};

fn cache_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("waypost-nacos-test-cache-{}", std::process::id()))
}

fn config(addr: &str) -> NacosConfig {
    NacosConfig::new(addr)
        .with_connect_timeout(Duration::from_secs(5))
        .with_cache_dir(cache_dir())
}

async fn connect(addr: &str) -> NacosRegistry {
    NacosRegistry::connect(config(addr))
        .await
        .expect("connect to the Nacos server")
}

fn unique(what: &str) -> String {
    conformance::unique_name(what)
}

fn options() -> ConformanceOptions {
    // 150 changes for the lagging watcher: every instance of one service needs its own Nacos
    // connection (Nacos keeps one instance per service per connection).
    ConformanceOptions::default()
        .with_event_timeout(Duration::from_secs(15))
        .with_lag_burst(150)
}

/// Next change of any kind, skipping nothing; panics after `limit`.
async fn next_event(watch: &mut WatchStream, limit: Duration) -> WatchEvent {
    match tokio::time::timeout(limit, watch.next()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {limit:?}"),
    }
}

async fn wait_for_change(
    watch: &mut WatchStream,
    kind: ServiceEventType,
    id: &str,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(WatchEvent::Change(ev))) if ev.kind == kind && ev.service.id == id => {
                return start.elapsed()
            }
            Ok(Some(WatchEvent::Snapshot { services, .. }))
                if (kind == ServiceEventType::Deleted) != services.iter().any(|s| s.id == id) =>
            {
                return start.elapsed()
            }
            Ok(Some(_)) => continue,
            Ok(None) => panic!("watch ended while waiting for {kind} of {id}"),
            Err(_) => panic!("no {kind} of {id} within {limit:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The conformance suite, directly and through trait objects.

#[tokio::test]
async fn rnacos_conformance_suite() {
    let Some((addr, _server)) = require("rnacos_conformance_suite", nacos_target().await) else {
        return;
    };
    let registry = connect(&addr).await;
    conformance::run_all(&registry, &options()).await;
    assert_eq!(registry.state(), RegistryState::Closed);
}

#[tokio::test]
async fn rnacos_conformance_suite_through_box_dyn() {
    let Some((addr, _server)) = require(
        "rnacos_conformance_suite_through_box_dyn",
        nacos_target().await,
    ) else {
        return;
    };
    // A small watch buffer, so the lagging watcher is resynced by a snapshot (not only fed).
    let registry: Box<dyn ServiceRegistry> = Box::new(
        NacosRegistry::connect(config(&addr).with_watch_buffer(32))
            .await
            .unwrap(),
    );
    conformance::run_all(registry.as_ref(), &options()).await;
}

#[tokio::test]
async fn rnacos_conformance_suite_through_arc_dyn() {
    let Some((addr, _server)) = require(
        "rnacos_conformance_suite_through_arc_dyn",
        nacos_target().await,
    ) else {
        return;
    };
    let registry: Arc<dyn ServiceRegistry> = Arc::new(connect(&addr).await);
    let shared = registry.clone();
    conformance::run_all(&*shared, &options()).await;
    assert!(registry.list_services().await.unwrap_err().is_closed());
}

// ---------------------------------------------------------------------------------------------
// Liveness: a process that dies takes its instance with it.

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Nacos cannot enforce a per-instance TTL (ephemeral instances live with the connection): the
/// registration works, and the registry says so once, not on every write.
#[tokio::test]
async fn rnacos_per_instance_ttls_are_logged_once_as_not_enforced() {
    let test = "rnacos_per_instance_ttls_are_logged_once_as_not_enforced";
    let Some((addr, _server)) = require(test, nacos_target().await) else {
        return;
    };
    let (logs, _guard) = waypost_integration_tests::logs::capture();
    let registry = connect(&addr).await;
    let name = unique("ttl-note");
    let ttl = Duration::from_secs(5);
    for (id, port) in [("t-1", 1), ("t-2", 2)] {
        let svc = ServiceInfo::new(id, &name, "127.0.0.1", port).with_ttl(ttl);
        registry.register(&svc).await.expect("register");
    }
    let svc = ServiceInfo::new("t-1", &name, "127.0.0.1", 1).with_ttl(Duration::MAX);
    registry.update(&svc).await.expect("update");
    assert_eq!(
        logs.count("per-instance TTLs are not enforced"),
        1,
        "{}",
        logs.text()
    );
    registry.close().await.expect("close");
}

#[tokio::test]
async fn rnacos_sigkilled_process_instance_disappears_from_another_process() {
    let Some((addr, _server)) = require(
        "rnacos_sigkilled_process_instance_disappears_from_another_process",
        nacos_target().await,
    ) else {
        return;
    };
    let name = unique("sigkill");
    let id = format!("{name}-child");
    let observer = connect(&addr).await;
    let mut watch = observer.watch_service(&name).await.unwrap();
    assert!(matches!(
        next_event(&mut watch, Duration::from_secs(5)).await,
        WatchEvent::Snapshot {
            reason: SnapshotReason::Initial,
            ..
        }
    ));

    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_nacos_child"))
            .args([addr.as_str(), name.as_str(), id.as_str(), "7001"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nacos_child"),
    );
    let stdout = child.0.stdout.take().expect("child stdout");
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ready.trim(), "READY", "the child did not register");

    wait_for_change(
        &mut watch,
        ServiceEventType::Created,
        &id,
        Duration::from_secs(10),
    )
    .await;
    let seen = observer
        .get_service(&id)
        .await
        .expect("another process's instance");
    assert_eq!(seen.version, "child");
    assert_eq!(seen.health, Health::Healthy);

    // SIGKILL: no chance to deregister.
    child.0.kill().expect("kill -9 the child");
    let _ = child.0.wait();
    let gone = wait_for_change(
        &mut watch,
        ServiceEventType::Deleted,
        &id,
        Duration::from_secs(20),
    )
    .await;
    eprintln!("instance of the SIGKILLed process disappeared after {gone:?}");
    assert!(
        gone <= Duration::from_secs(5),
        "the instance of a killed process must disappear within a few seconds, took {gone:?}"
    );
    assert!(observer.list_instances(&name).await.unwrap().is_empty());
    assert!(matches!(
        observer.get_service(&id).await,
        Err(Error::NotFound(_))
    ));
    observer.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The fault suite: no server, wrong credentials, a dropped registry, close, a frozen server, and
// a restart after which registrations and subscriptions come back without the application's help.

#[tokio::test]
async fn rnacos_fault_suite() {
    let Some(mut fixture) = require("rnacos_fault_suite", NacosFixture::start(cache_dir()).await)
    else {
        return;
    };
    let unreachable = faults::no_server_fails_fast(&fixture).await;
    assert!(
        unreachable.error.to_string().contains("127.0.0.1"),
        "names the address: {}",
        unreachable.error
    );
    match faults::wrong_credentials_are_a_clear_auth_error(&mut fixture).await {
        Some(Error::Auth { backend, message }) => {
            assert_eq!(backend, "nacos");
            assert!(
                message.contains(NacosFixture::USER),
                "names the user: {message}"
            );
        }
        other => panic!("rnacos has authentication: {other:?}"),
    }
    let auth_addr = fixture
        .auth
        .as_ref()
        .map(Rnacos::addr)
        .expect("auth server");
    let err = NacosRegistry::connect(config(&auth_addr).with_credentials("nobody", "x"))
        .await
        .expect_err("unknown user must be refused");
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");

    let gone = faults::dropped_registry_vanishes_promptly(&fixture).await;
    eprintln!("dropped registry's instances gone after {gone:?}");
    faults::close_is_idempotent_and_ends_streams(&fixture).await;
}

/// The faults that stop the server, on a server of their own, so that they run beside the
/// checks above.
#[tokio::test]
async fn rnacos_fault_suite_outages() {
    let test = "rnacos_fault_suite_outages";
    let Some(mut fixture) = require(test, NacosFixture::start(cache_dir()).await) else {
        return;
    };
    let started = Instant::now();
    let frozen = faults::freeze_and_thaw_recovers(&mut fixture).await;
    eprintln!("freeze check took {:?}", started.elapsed());
    let started = Instant::now();
    eprintln!("freeze: {frozen:?}");
    let restarted = faults::kill_and_restart_recovers(&mut fixture).await;
    eprintln!(
        "restart: recovered after {:?}; the check took {:?}",
        restarted.recovered_after,
        started.elapsed()
    );
}

async fn rnacos_only(test: &str, opts: RnacosOptions) -> Option<Rnacos> {
    require(test, start_rnacos(opts).await)
}

// ---------------------------------------------------------------------------------------------
// A registration that failed (server frozen) does not come back as an orphan later.

#[tokio::test]
async fn rnacos_failed_registration_leaves_no_orphan_after_the_server_returns() {
    let Some(server) = rnacos_only(
        "rnacos_failed_registration_leaves_no_orphan_after_the_server_returns",
        RnacosOptions::default(),
    )
    .await
    else {
        return;
    };
    let addr = server.addr();
    let registry = NacosRegistry::connect(
        config(&addr)
            .with_connect_timeout(Duration::from_secs(1))
            .with_probe_interval(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let observer = connect(&addr).await;
    let name = unique("orphan");
    let s = ServiceInfo::new(format!("{name}-1"), &name, "127.0.0.1", 7801);

    server.process.signal("STOP").unwrap();
    let err = registry
        .register(&s)
        .await
        .expect_err("a frozen server cannot register");
    assert!(err.is_retryable(), "a transient error: {err:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while registry.state().is_connected() {
        assert!(
            Instant::now() < deadline,
            "state() must leave Connected while the server is frozen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.process.signal("CONT").unwrap();

    // The SDK keeps the request for its redo; the registry takes it back.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !registry.state().is_connected() {
        assert!(
            Instant::now() < deadline,
            "never reconnected: {:?}",
            registry.state()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        observer.list_instances(&name).await.unwrap().is_empty(),
        "the failed registration must not appear on the server"
    );
    assert!(matches!(
        registry.get_service(&s.id).await,
        Err(Error::NotFound(_))
    ));
    // Registering again works normally.
    registry.register(&s).await.unwrap();
    assert_eq!(observer.list_instances(&name).await.unwrap().len(), 1);
    registry.close().await.unwrap();
    observer.close().await.unwrap();
}

#[tokio::test]
async fn rnacos_lagging_watcher_is_resynced_by_a_snapshot() {
    let Some((addr, _server)) = require(
        "rnacos_lagging_watcher_is_resynced_by_a_snapshot",
        nacos_target().await,
    ) else {
        return;
    };
    let registry = NacosRegistry::connect(config(&addr).with_watch_buffer(8))
        .await
        .unwrap();
    let report = conformance::lagging_watcher_gets_resync(
        &registry,
        &ConformanceOptions::default()
            .with_event_timeout(Duration::from_secs(15))
            .with_lag_burst(40),
    )
    .await;
    assert!(
        report.resynced,
        "40 changes into an 8-event buffer must resync: {report:?}"
    );
    registry.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Construction failures.

// ---------------------------------------------------------------------------------------------
// Isolation by group and namespace.

#[tokio::test]
async fn rnacos_groups_and_namespaces_do_not_see_each_other() {
    let Some((addr, _server)) = require(
        "rnacos_groups_and_namespaces_do_not_see_each_other",
        nacos_target().await,
    ) else {
        return;
    };
    let name = unique("isolation");
    let scopes = [
        ("public", "DEFAULT_GROUP"),
        ("public", "WAYPOST_OTHER_GROUP"),
        ("waypost-test-ns", "DEFAULT_GROUP"),
    ];
    let mut registries = Vec::new();
    for (i, (ns, group)) in scopes.iter().enumerate() {
        let r = NacosRegistry::connect(config(&addr).with_namespace(*ns).with_group(*group))
            .await
            .unwrap();
        let s = ServiceInfo::new(format!("{name}-{i}"), &name, "127.0.0.1", 7300 + i as u16)
            .with_health(Health::Healthy);
        r.register(&s).await.unwrap();
        registries.push(r);
    }
    // Each sees exactly its own instance, through every read path.
    for (i, r) in registries.iter().enumerate() {
        let own = format!("{name}-{i}");
        let ids: BTreeSet<String> = r
            .list_instances(&name)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, BTreeSet::from([own.clone()]), "scope {:?}", scopes[i]);
        let all: Vec<_> = r
            .list_services()
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.name == name)
            .map(|s| s.id)
            .collect();
        assert_eq!(
            all,
            vec![own.clone()],
            "list_services in scope {:?}",
            scopes[i]
        );
        for (j, _) in scopes.iter().enumerate().filter(|(j, _)| *j != i) {
            let other = format!("{name}-{j}");
            assert!(
                matches!(r.get_service(&other).await, Err(Error::NotFound(_))),
                "scope {:?} sees {other}",
                scopes[i]
            );
        }
        let mut watch = r.watch().await.unwrap();
        match next_event(&mut watch, Duration::from_secs(10)).await {
            WatchEvent::Snapshot { services, .. } => {
                let mine: Vec<_> = services.iter().filter(|s| s.name == name).collect();
                assert_eq!(mine.len(), 1, "watch snapshot in scope {:?}", scopes[i]);
                assert_eq!(mine[0].id, own);
            }
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }
    // A change in one scope is not delivered to a watcher of another.
    let mut watch0 = registries[0].watch_service(&name).await.unwrap();
    next_event(&mut watch0, Duration::from_secs(5)).await;
    let extra = ServiceInfo::new(format!("{name}-extra"), &name, "127.0.0.1", 7399);
    registries[1].register(&extra).await.unwrap();
    registries[2]
        .deregister(&format!("{name}-2"))
        .await
        .unwrap();
    let marker = ServiceInfo::new(format!("{name}-marker"), &name, "127.0.0.1", 7398);
    let probe = connect(&addr).await; // scope 0, another connection: arrives as a push
    probe.register(&marker).await.unwrap();
    match next_event(&mut watch0, Duration::from_secs(10)).await {
        WatchEvent::Change(ev) => {
            assert_eq!(ev.service.id, marker.id, "only scope 0's change arrives");
            assert_eq!(ev.kind, ServiceEventType::Created);
        }
        other => panic!("expected the marker's Created, got {other:?}"),
    }
    probe.close().await.unwrap();
    for r in &registries {
        r.close().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// A full watch finds services created after it started.

#[tokio::test]
async fn rnacos_full_watch_discovers_services_created_later() {
    let Some((addr, _server)) = require(
        "rnacos_full_watch_discovers_services_created_later",
        nacos_target().await,
    ) else {
        return;
    };
    let reader = NacosRegistry::connect(
        config(&addr).with_service_poll_interval(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    let mut watch = reader.watch().await.unwrap();
    assert!(matches!(
        next_event(&mut watch, Duration::from_secs(5)).await,
        WatchEvent::Snapshot {
            reason: SnapshotReason::Initial,
            ..
        }
    ));
    let writer = connect(&addr).await;
    let name = unique("later");
    let s = ServiceInfo::new(format!("{name}-1"), &name, "127.0.0.1", 7701)
        .with_health(Health::Healthy);
    writer.register(&s).await.unwrap();
    let took = wait_for_change(
        &mut watch,
        ServiceEventType::Created,
        &s.id,
        Duration::from_secs(10),
    )
    .await;
    eprintln!("a new service's first instance reached the full watch after {took:?}");
    // From then on the new service is subscribed: its changes are pushed.
    writer.deregister(&s.id).await.unwrap();
    wait_for_change(
        &mut watch,
        ServiceEventType::Deleted,
        &s.id,
        Duration::from_secs(10),
    )
    .await;
    writer.close().await.unwrap();
    reader.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Streams of one scope share one subscription; the last one dropped unsubscribes.

#[tokio::test]
async fn rnacos_dropping_the_last_stream_of_a_service_unsubscribes_it() {
    let Some(server) = rnacos_only(
        "rnacos_dropping_the_last_stream_of_a_service_unsubscribes_it",
        RnacosOptions::default(),
    )
    .await
    else {
        return;
    };
    let addr = server.addr();
    let port = server.http_port;
    let name = unique("unsub");
    let registry = connect(&addr).await;
    let writer = connect(&addr).await;
    let subscribers = || subscriber_count(port, &name);
    assert_eq!(subscribers().await, Some(0));
    let mut one = registry.watch_service(&name).await.unwrap();
    let mut two = registry.watch_service(&name).await.unwrap();
    for w in [&mut one, &mut two] {
        assert!(matches!(
            next_event(w, Duration::from_secs(5)).await,
            WatchEvent::Snapshot {
                reason: SnapshotReason::Initial,
                ..
            }
        ));
    }
    assert_eq!(
        subscribers().await,
        Some(1),
        "one subscription for both streams"
    );
    drop(one);
    // The other stream still gets pushed changes.
    let s = ServiceInfo::new(format!("{name}-1"), &name, "127.0.0.1", 7951);
    writer.register(&s).await.unwrap();
    wait_for_change(
        &mut two,
        ServiceEventType::Created,
        &s.id,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(subscribers().await, Some(1));
    drop(two);
    let _ = wait_until("the subscription gone", Duration::from_secs(5), || async {
        subscribers().await == Some(0)
    })
    .await;
    assert_eq!(subscribers().await, Some(0), "the last stream unsubscribes");
    // A new stream subscribes again and starts from the server's state.
    let mut three = registry.watch_service(&name).await.unwrap();
    match next_event(&mut three, Duration::from_secs(5)).await {
        WatchEvent::Snapshot { services, reason } => {
            assert_eq!(reason, SnapshotReason::Initial);
            assert_eq!(services.len(), 1);
            assert_eq!(services[0].id, s.id);
        }
        other => panic!("expected the initial snapshot, got {other:?}"),
    }
    assert_eq!(subscribers().await, Some(1));
    writer.close().await.unwrap();
    wait_for_change(
        &mut three,
        ServiceEventType::Deleted,
        &s.id,
        Duration::from_secs(10),
    )
    .await;
    registry.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Behaviour specific to Nacos.

#[tokio::test]
async fn rnacos_round_trip_through_another_client_loses_nothing() {
    let Some((addr, _server)) = require(
        "rnacos_round_trip_through_another_client_loses_nothing",
        nacos_target().await,
    ) else {
        return;
    };
    let name = unique("roundtrip");
    let writer = connect(&addr).await;
    let reader = connect(&addr).await;
    let s = ServiceInfo::new(format!("{name}-1"), &name, "127.0.0.1", 7401)
        .with_version("3.1.4")
        .with_protocol(waypost_core_types::Protocol::Grpc)
        .with_health(Health::Unknown)
        .with_metadata("region", "eu-west")
        .with_metadata("waypost.looks-reserved", "kept")
        .with_tag("a")
        .with_tag("b")
        .with_ttl(Duration::from_secs(42))
        .with_weight(12_345);
    writer.register(&s).await.unwrap();
    let mine = writer.get_service(&s.id).await.unwrap();
    // Another client sees exactly what the writer stored (times included).
    let theirs = reader.get_service(&s.id).await.unwrap();
    assert_eq!(theirs, mine);
    assert_eq!(theirs.version, "3.1.4");
    assert_eq!(theirs.weight, 12_345);
    assert_eq!(theirs.health, Health::Unknown);
    assert_eq!(theirs.ttl, Duration::from_secs(42));
    assert_eq!(
        theirs
            .metadata
            .get("waypost.looks-reserved")
            .map(String::as_str),
        Some("kept")
    );
    // Another client cannot change an instance bound to the writer's connection.
    assert!(matches!(
        reader.deregister(&s.id).await,
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        reader.update(&s).await,
        Err(Error::Unsupported(_))
    ));
    // An update by the owner reaches other clients.
    writer
        .update(
            &s.clone()
                .with_version("3.2.0")
                .with_health(Health::Unhealthy),
        )
        .await
        .unwrap();
    let theirs = reader.get_service(&s.id).await.unwrap();
    assert_eq!(
        (theirs.version.as_str(), theirs.health),
        ("3.2.0", Health::Unhealthy)
    );
    assert_eq!(
        theirs.created_at, mine.created_at,
        "an update keeps created_at"
    );
    reader
        .renew(&s.id)
        .await
        .expect("renew of a live foreign instance");
    // Two instances of one service from one process: both live (separate connections).
    let s2 = ServiceInfo::new(format!("{name}-2"), &name, "127.0.0.1", 7402);
    writer.register(&s2).await.unwrap();
    let ids: BTreeSet<_> = reader
        .list_instances(&name)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(writer.connection_count(), 2);
    // close() removes everything the writer registered.
    writer.close().await.unwrap();
    assert!(reader.list_instances(&name).await.unwrap().is_empty());
    reader.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// close: deregisters, unsubscribes, ends watches, closes the SDK's connections.

/// Established TCP connections (in this network namespace) whose remote port is `port`.
fn established_to(port: u16) -> usize {
    let mut n = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(rem), Some(st)) = (cols.get(2), cols.get(3)) else {
                continue;
            };
            let rem_port = rem
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if rem_port == Some(port) && *st == "01" {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
async fn rnacos_close_deregisters_ends_watches_and_closes_the_sdk_connections() {
    let Some(server) = rnacos_only(
        "rnacos_close_deregisters_ends_watches_and_closes_the_sdk_connections",
        RnacosOptions::default(),
    )
    .await
    else {
        return;
    };
    let addr = server.addr();
    let grpc = server.grpc_port();
    let name = unique("close");
    let other = connect(&addr).await;
    let baseline = established_to(grpc);
    let registry = connect(&addr).await;
    for i in 0..2u16 {
        let s = ServiceInfo::new(format!("{name}-{i}"), &name, "127.0.0.1", 7600 + i);
        registry.register(&s).await.unwrap();
    }
    let mut watch = registry.watch_service(&name).await.unwrap();
    assert_eq!(
        registry.connection_count(),
        2,
        "two instances of one service: two connections"
    );
    assert_eq!(
        established_to(grpc),
        baseline + 2,
        "one TCP connection per SDK connection"
    );
    assert_eq!(other.list_instances(&name).await.unwrap().len(), 2);
    let mut states = registry.state_changes();
    assert_eq!(states.next().await, Some(RegistryState::Connected));

    registry.close().await.unwrap();
    // state_changes() of a registry closed without trouble: Connected, then Closed, then the end.
    assert_eq!(states.next().await, Some(RegistryState::Closed));
    assert_eq!(states.next().await, None);
    assert!(
        other.list_instances(&name).await.unwrap().is_empty(),
        "close deregisters"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), async {
            while watch.next().await.is_some() {}
        })
        .await
        .is_ok(),
        "close ends the watch"
    );
    // Both gRPC connections of the closed registry are gone, while the registry value itself is
    // still alive; the other client's connection is untouched.
    assert_eq!(registry.connection_count(), 0);
    let _ = wait_until(
        "the closed registry's connections gone",
        Duration::from_secs(5),
        || std::future::ready(established_to(grpc) == baseline),
    )
    .await;
    assert_eq!(
        established_to(grpc),
        baseline,
        "close closes the SDK's TCP connections"
    );
    assert!(other.list_instances(&name).await.is_ok());
    other.close().await.unwrap();
    let _ = wait_until("every connection gone", Duration::from_secs(5), || {
        std::future::ready(established_to(grpc) == 0)
    })
    .await;
    assert_eq!(established_to(grpc), 0, "the other client's connection too");
    drop(registry);
}

// ---------------------------------------------------------------------------------------------
// Benchmark: register → visible in another client's watch.
//
// cargo test -p waypost-integration-tests --test nacos -- --ignored --nocapture rnacos_latency

#[tokio::test]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn rnacos_latency_register_to_visible_in_another_clients_watch() {
    let Some((addr, _server)) = require(
        "rnacos_latency_register_to_visible_in_another_clients_watch",
        nacos_target().await,
    ) else {
        return;
    };
    let rounds: usize = std::env::var("WAYPOST_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let name = unique("latency");
    let writer = connect(&addr).await;
    let reader = connect(&addr).await;
    let mut watch = reader.watch_service(&name).await.unwrap();
    next_event(&mut watch, Duration::from_secs(5)).await;
    let mut up = Vec::with_capacity(rounds);
    let mut down = Vec::with_capacity(rounds);
    let mut calls = Vec::with_capacity(rounds);
    // A pseudo-random pause between rounds, so registrations do not stay in phase with the
    // server's push timer (rnacos batches pushes on a 500 ms tick).
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..rounds {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        tokio::time::sleep(Duration::from_millis((seed >> 33) % 500)).await;
        let s = ServiceInfo::new(format!("{name}-{i}"), &name, "127.0.0.1", 7500)
            .with_health(Health::Healthy);
        let t = Instant::now();
        writer.register(&s).await.unwrap();
        calls.push(t.elapsed());
        wait_for_change(
            &mut watch,
            ServiceEventType::Created,
            &s.id,
            Duration::from_secs(10),
        )
        .await;
        up.push(t.elapsed());
        let t = Instant::now();
        writer.deregister(&s.id).await.unwrap();
        wait_for_change(
            &mut watch,
            ServiceEventType::Deleted,
            &s.id,
            Duration::from_secs(10),
        )
        .await;
        down.push(t.elapsed());
    }
    let register_call = {
        let mut v = calls.clone();
        v.sort();
        v[v.len() / 2]
    };
    println!("nacos register() call itself: p50 {register_call:?}");
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        let idx = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[idx]
    };
    println!(
        "nacos register→visible in another client's watch over {rounds} registrations: \
         p50 {:?}, p99 {:?}, max {:?}",
        pct(&mut up, 0.50),
        pct(&mut up, 0.99),
        up.last().copied().unwrap_or_default()
    );
    println!(
        "nacos deregister→gone in another client's watch over {rounds} deregistrations: \
         p50 {:?}, p99 {:?}, max {:?}",
        pct(&mut down, 0.50),
        pct(&mut down, 0.99),
        down.last().copied().unwrap_or_default()
    );
    writer.close().await.unwrap();
    reader.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Discovery through a server restart: never "not found" for a service whose instances come back.

/// rnacos is killed and restarted while a tight loop asks `discover_one` for a service. After
/// the restart the watcher gets a `Reconnected` snapshot with no instance about a second before
/// the re-registration lands; the discovery cache keeps serving the instance it knew through
/// that gap (the reconnect grace), so the loop never sees `ServiceNotFound`. A second discovery
/// with the grace off, over the same registry, shows the gap the grace covers.
#[tokio::test]
async fn rnacos_restart_discovery_never_answers_not_found() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use waypost_core_types::ServiceDiscovery;
    use waypost_discovery::CachedDiscovery;

    let test = "rnacos_restart_discovery_never_answers_not_found";
    let Some(mut server) = rnacos_only(test, RnacosOptions::default()).await else {
        return;
    };
    let addr = server.addr();
    let fast = |addr: &str| {
        config(addr)
            .with_connect_timeout(Duration::from_millis(1500))
            .with_probe_interval(Duration::from_millis(200))
    };
    let name = unique("restart-discovery");
    let owner = NacosRegistry::connect(fast(&addr)).await.unwrap();
    let instance =
        ServiceInfo::new("restart-1", &name, "127.0.0.1", 7601).with_health(Health::Healthy);
    owner.register(&instance).await.unwrap();

    let reader: Arc<NacosRegistry> = Arc::new(NacosRegistry::connect(fast(&addr)).await.unwrap());
    let balancer = || Arc::new(waypost_balancer::RoundRobin::new());
    let guarded = CachedDiscovery::builder(reader.clone())
        .balancer(balancer())
        .build()
        .unwrap();
    let control = CachedDiscovery::builder(reader.clone())
        .balancer(balancer())
        .reconnect_grace(Duration::ZERO)
        .build()
        .unwrap();
    wait_until("the instance in both caches", Duration::from_secs(15), || {
        let (g, c, name) = (guarded.clone(), control.clone(), name.clone());
        async move { g.discover_one(&name).await.is_ok() && c.discover_one(&name).await.is_ok() }
    })
    .await
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (calls, not_found, other_errors, control_not_found, max_stale) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let looper = {
        let (g, c, name, stop) = (guarded.clone(), control.clone(), name.clone(), stop.clone());
        let (calls, not_found, other_errors, control_not_found, max_stale) = (
            calls.clone(),
            not_found.clone(),
            other_errors.clone(),
            control_not_found.clone(),
            max_stale.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                calls.fetch_add(1, Ordering::Relaxed);
                match g.discover_one(&name).await {
                    Ok(found) => assert_eq!(found.id, "restart-1"),
                    Err(Error::ServiceNotFound(_)) => {
                        not_found.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("discover_one: {e}");
                        other_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Err(Error::ServiceNotFound(_)) = c.discover_one(&name).await {
                    control_not_found.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(stats) = g.service_stats(&name) {
                    max_stale.fetch_max(stats.stale_instances, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    // What the reader's watch delivers through the restart (printed at the end).
    let mut raw = reader.watch_service(&name).await.unwrap();
    let t0 = Instant::now();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorder = tokio::spawn({
        let seen = seen.clone();
        let reader = reader.clone();
        async move {
            while let Some(ev) = raw.next().await {
                let what = match ev {
                    WatchEvent::Snapshot { services, reason } => {
                        format!("snapshot {reason:?} with {}", services.len())
                    }
                    WatchEvent::Change(c) => format!("{} {}", c.kind, c.service.id),
                    other => format!("{other:?}"),
                };
                seen.lock().unwrap().push(format!(
                    "{:?}: {what} ({:?})",
                    t0.elapsed(),
                    reader.state()
                ));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let restarted = Instant::now();
    server.restart().await.unwrap();
    eprintln!("server restarted after {:?}", restarted.elapsed());
    // Back: the owner re-registered, the reader's watch delivered it (no instance held any more),
    // and the server lists it.
    let back = wait_until(
        "the instance registered again",
        Duration::from_secs(40),
        || {
            let (g, name, reader) = (guarded.clone(), name.clone(), reader.clone());
            async move {
                let listed = reader
                    .list_instances(&name)
                    .await
                    .is_ok_and(|l| l.iter().any(|s| s.id == "restart-1"));
                listed
                    && reader.state() == RegistryState::Connected
                    && g.service_stats(&name)
                        .is_some_and(|s| s.stale_instances == 0)
            }
        },
    )
    .await;
    // A little longer, so a late empty push would be caught too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    looper.await.unwrap();
    recorder.abort();
    eprintln!(
        "the reader's watch through the restart: {:?}",
        seen.lock().unwrap()
    );
    back.unwrap();
    let (calls, not_found, other_errors, control_not_found, max_stale) = (
        calls.load(Ordering::SeqCst),
        not_found.load(Ordering::SeqCst),
        other_errors.load(Ordering::SeqCst),
        control_not_found.load(Ordering::SeqCst),
        max_stale.load(Ordering::SeqCst),
    );
    eprintln!(
        "restart: back after {:?}; {calls} lookups, {not_found} not found, {other_errors} other \
         errors; most instances held at once {max_stale}; without the grace: {control_not_found} \
         not found",
        restarted.elapsed()
    );
    assert!(calls > 100, "the loop ran ({calls} lookups)");
    assert_eq!(
        not_found, 0,
        "discovery answered \"not found\" during the restart"
    );
    assert_eq!(other_errors, 0);
    assert_eq!(guarded.discover_one(&name).await.unwrap().id, "restart-1");
    guarded.close().await.unwrap();
    control.close().await.unwrap();
    owner.close().await.unwrap();
    reader.close().await.unwrap();
}
