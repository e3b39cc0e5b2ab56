//! waypost-registry-etcd against a real etcd 3.4 (single node, 3-member cluster, TLS, auth).
//!
//! Every test starts its own server(s) on free loopback ports. Without etcd installed they
//! print `SKIPPED` (or fail with `CI=true`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use waypost_core_types::conformance::{self, faults, ConformanceOptions};
use waypost_core_types::{
    Error, Health, RegistryState, ServiceEventType, ServiceInfo, ServiceRegistry, SnapshotReason,
    WatchEvent, WatchStream,
};
use waypost_integration_tests::etcd::{
    etcd_available, EtcdCluster, EtcdFixture, EtcdServer, TcpProxy,
};
use waypost_integration_tests::{require, wait_until};
use waypost_registry_etcd::{EtcdConfig, EtcdRegistry, EtcdTlsConfig};

static PREFIX_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A prefix of its own for each test.
fn prefix(test: &str) -> String {
    let n = PREFIX_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("/waypost-test/{test}-{}-{n}", std::process::id())
}

async fn server(test: &str) -> Option<EtcdServer> {
    require(test, etcd_available())?;
    Some(EtcdServer::start().await.expect("start etcd"))
}

fn config(endpoint: &str, test: &str, ttl_secs: u64) -> EtcdConfig {
    EtcdConfig::new([endpoint])
        .with_prefix(prefix(test))
        .with_ttl(Duration::from_secs(ttl_secs))
        .with_connect_timeout(Duration::from_secs(3))
        .with_max_backoff(Duration::from_millis(500))
}

fn svc(name: &str, id: &str, port: u16) -> ServiceInfo {
    ServiceInfo::new(id, name, "127.0.0.1", port)
        .with_version("1.0.0")
        .with_health(Health::Healthy)
}

type View = BTreeMap<String, ServiceInfo>;

fn apply(view: &mut View, ev: WatchEvent) -> Option<SnapshotReason> {
    match ev {
        WatchEvent::Snapshot { services, reason } => {
            *view = services.into_iter().map(|s| (s.id.clone(), s)).collect();
            Some(reason)
        }
        WatchEvent::Change(c) => {
            match c.kind {
                ServiceEventType::Deleted => {
                    view.remove(&c.service.id);
                }
                _ => {
                    view.insert(c.service.id.clone(), c.service);
                }
            }
            None
        }
        _ => None,
    }
}

/// Reads the stream into `view` until `done(view)` or the deadline; returns the snapshot
/// reasons seen.
async fn follow_until(
    stream: &mut WatchStream,
    view: &mut View,
    limit: Duration,
    mut done: impl FnMut(&View) -> bool,
) -> Result<Vec<SnapshotReason>, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut reasons = Vec::new();
    while !done(view) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(ev)) => reasons.extend(apply(view, ev)),
            Ok(None) => return Err("watch ended".into()),
            Err(_) => {
                return Err(format!(
                    "condition not met within {limit:?}; view: {view:?}"
                ))
            }
        }
    }
    Ok(reasons)
}

fn ids(list: &[ServiceInfo]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.id.clone()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn etcd_conformance_suite() {
    let Some(etcd) = server("etcd_conformance_suite").await else {
        return;
    };
    let registry = EtcdRegistry::connect(config(&etcd.endpoint(), "conformance", 5))
        .await
        .expect("connect");
    let opts = ConformanceOptions::default();
    conformance::run_all(&registry, &opts).await;
    assert_eq!(registry.state(), RegistryState::Closed);
}

#[tokio::test]
async fn etcd_conformance_through_box_and_arc() {
    let Some(etcd) = server("etcd_conformance_through_box_and_arc").await else {
        return;
    };
    let opts = ConformanceOptions::default().with_lag_burst(200);
    let boxed: Box<dyn ServiceRegistry> = Box::new(
        EtcdRegistry::connect(config(&etcd.endpoint(), "boxed", 5))
            .await
            .expect("connect"),
    );
    conformance::run_all(boxed.as_ref(), &opts).await;

    let shared: Arc<dyn ServiceRegistry> = Arc::new(
        EtcdRegistry::connect(config(&etcd.endpoint(), "arc", 5))
            .await
            .expect("connect"),
    );
    let clone = shared.clone();
    let task = tokio::spawn(async move {
        conformance::register_get_list_update_deregister(clone.as_ref()).await;
        conformance::concurrent_registrations(clone.as_ref()).await;
    });
    conformance::watch_delivers_changes_in_order(shared.as_ref(), &opts).await;
    task.await.expect("checks on another task");
    conformance::close_ends_watches_and_is_idempotent(shared.as_ref(), &opts).await;
}

#[tokio::test]
async fn etcd_fault_suite() {
    let test = "etcd_fault_suite";
    if require(test, etcd_available()).is_none() {
        return;
    }
    let mut fixture = EtcdFixture::start(&prefix("faults"))
        .await
        .expect("start etcd");

    // Without a server: Unavailable after exactly the connect timeout (etcd-client retries
    // until then), naming the limit.
    let unreachable = faults::no_server_fails_fast(&fixture).await;
    let text = unreachable.error.to_string();
    assert!(matches!(unreachable.error, Error::Unavailable(_)), "{text}");
    assert!(text.contains("1s"), "the error names the limit: {text}");
    assert!(
        unreachable.took >= Duration::from_secs(1),
        "gave up early: {:?}",
        unreachable.took
    );

    match faults::wrong_credentials_are_a_clear_auth_error(&mut fixture).await {
        Some(Error::Auth { backend, message }) => {
            assert_eq!(backend, "etcd");
            assert!(message.contains("authentication failed"), "{message}");
        }
        other => panic!("etcd has authentication: {other:?}"),
    }

    // A TTL (15 s) far longer than the bound (5 s): the instances can only be gone in time if
    // the drop revoked the lease (and no task kept it alive); no lease is left behind.
    let gone = faults::dropped_registry_vanishes_promptly(&fixture).await;
    eprintln!("dropped registry's instances gone after {gone:?}");
    let leases = fixture
        .server()
        .etcdctl(&["lease", "list"])
        .expect("lease list");
    assert!(
        leases.lines().filter(|l| l.contains("id(")).count() == 0,
        "a dropped (and every closed) registry revokes its lease: {leases}"
    );

    faults::close_is_idempotent_and_ends_streams(&fixture).await;
    let frozen = faults::freeze_and_thaw_recovers(&mut fixture).await;
    eprintln!("freeze: {frozen:?}");
    let restarted = faults::kill_and_restart_recovers(&mut fixture).await;
    eprintln!("kill -9 and restart: {restarted:?}");
}

#[tokio::test]
async fn etcd_close_revokes_lease_and_instances_vanish() {
    let Some(etcd) = server("etcd_close_revokes_lease_and_instances_vanish").await else {
        return;
    };
    let cfg = config(&etcd.endpoint(), "close", 30);
    let observer = EtcdRegistry::connect(cfg.clone()).await.expect("observer");
    let registry = EtcdRegistry::connect(cfg).await.expect("connect");
    let lease = registry.lease_id();
    assert_ne!(
        lease,
        registry_lease(&observer),
        "one lease per registry, not a shared one"
    );
    registry
        .register(&svc("closing", "closing-1", 9001))
        .await
        .expect("register");
    assert_eq!(
        observer
            .list_instances("closing")
            .await
            .expect("list")
            .len(),
        1
    );
    let start = Instant::now();
    registry.close().await.expect("close");
    // TTL is 30 s: an empty list now proves the revoke.
    assert!(observer
        .list_instances("closing")
        .await
        .expect("list")
        .is_empty());
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(registry.list_services().await, Err(Error::Closed)));
    registry.close().await.expect("idempotent");
    let leases = etcd.etcdctl(&["lease", "list"]).expect("lease list");
    assert!(
        !leases.contains(&format!("{lease:x}")),
        "lease revoked: {leases}"
    );
    observer.close().await.expect("close observer");
}

fn registry_lease(r: &EtcdRegistry) -> i64 {
    r.lease_id()
}

#[tokio::test]
async fn etcd_lease_lost_during_outage_is_replaced_and_instances_return() {
    let test = "etcd_lease_lost_during_outage_is_replaced_and_instances_return";
    let Some(etcd) = server(test).await else {
        return;
    };
    let proxy = TcpProxy::start(etcd.client_port()).await.expect("proxy");
    let ttl = 2u64;
    let mut cfg = config(&proxy.endpoint(), "leaselost", ttl);
    cfg = cfg.with_request_timeout(Duration::from_secs(3));
    let registry = EtcdRegistry::connect(cfg.clone()).await.expect("connect");
    let direct = EtcdRegistry::connect(cfg.clone().with_endpoints([etcd.endpoint()]))
        .await
        .expect("direct client");
    let mut watch = direct.watch_service("ll").await.expect("watch");
    let mut view = View::new();
    registry
        .register(&svc("ll", "ll-1", 9001))
        .await
        .expect("register");
    registry
        .register(&svc("ll", "ll-2", 9002))
        .await
        .expect("register");
    let first_lease = registry.lease_id();
    follow_until(&mut watch, &mut view, Duration::from_secs(5), |v| {
        v.len() == 2
    })
    .await
    .expect("both visible");

    // Cut the registry off for longer than the TTL: the server expires the lease.
    proxy.set_open(false);
    if let Err(e) = follow_until(&mut watch, &mut view, Duration::from_secs(ttl + 3), |v| {
        v.is_empty()
    })
    .await
    {
        let keys = etcd.etcdctl(&["get", &cfg.prefix, "--prefix", "-w", "json"]);
        let leases = etcd.etcdctl(&["lease", "list"]);
        panic!("instances expire while the registry is cut off: {e}\n{keys:?}\n{leases:?}\nfirst lease {first_lease:x}");
    }
    assert!(matches!(registry.state(), RegistryState::Recovering { .. }));

    proxy.set_open(true);
    follow_until(&mut watch, &mut view, Duration::from_secs(10), |v| {
        v.len() == 2
    })
    .await
    .expect("instances registered again on a new lease");
    wait_until("connected", Duration::from_secs(5), || async {
        registry.state().is_connected()
    })
    .await
    .expect("state back to Connected");
    assert_ne!(registry.lease_id(), first_lease, "a new lease was granted");

    // Revoking the new lease from outside is recovered from too.
    let lease_hex = format!("{:x}", registry.lease_id());
    etcd.etcdctl(&["lease", "revoke", &lease_hex])
        .expect("revoke");
    follow_until(&mut watch, &mut view, Duration::from_secs(10), |v| {
        v.is_empty()
    })
    .await
    .expect("revoked instances vanish");
    follow_until(&mut watch, &mut view, Duration::from_secs(10), |v| {
        v.len() == 2
    })
    .await
    .expect("and come back on a new lease");
    registry.close().await.expect("close");
    direct.close().await.expect("close");
}

#[tokio::test]
async fn etcd_compacted_history_gives_reconnected_snapshot() {
    let test = "etcd_compacted_history_gives_reconnected_snapshot";
    let Some(etcd) = server(test).await else {
        return;
    };
    let proxy = TcpProxy::start(etcd.client_port()).await.expect("proxy");
    let cfg = config(&proxy.endpoint(), "compact", 30);
    let watcher = EtcdRegistry::connect(cfg.clone()).await.expect("watcher");
    let writer = EtcdRegistry::connect(cfg.clone().with_endpoints([etcd.endpoint()]))
        .await
        .expect("writer");
    writer
        .register(&svc("cp", "cp-1", 9001))
        .await
        .expect("register");
    let mut watch = watcher.watch().await.expect("watch");
    let mut view = View::new();
    follow_until(&mut watch, &mut view, Duration::from_secs(5), |v| {
        v.len() == 1
    })
    .await
    .expect("snapshot");

    // While the watcher is cut off: changes, then compaction of the history it needs.
    proxy.set_open(false);
    writer
        .register(&svc("cp", "cp-2", 9002))
        .await
        .expect("register");
    writer.deregister("cp-1").await.expect("deregister");
    writer
        .register(&svc("cp", "cp-3", 9003))
        .await
        .expect("register");
    let status = etcd
        .etcdctl(&["endpoint", "status", "--write-out=json"])
        .expect("status");
    let v: serde_json::Value = serde_json::from_str(&status).expect("json");
    let rev = v[0]["Status"]["header"]["revision"]
        .as_i64()
        .expect("revision");
    etcd.etcdctl(&["compaction", &rev.to_string()])
        .expect("compact");
    proxy.set_open(true);

    let reasons = follow_until(&mut watch, &mut view, Duration::from_secs(15), |v| {
        v.keys().cloned().collect::<Vec<_>>() == ["cp-2", "cp-3"]
    })
    .await
    .expect("watcher catches up after compaction");
    assert!(
        reasons.contains(&SnapshotReason::Reconnected),
        "a compacted resume must send Snapshot{{Reconnected}}, got {reasons:?}"
    );
    watcher.close().await.expect("close");
    writer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_leader_kill_is_invisible_to_callers() {
    let test = "etcd_cluster_leader_kill_is_invisible_to_callers";
    if require(test, etcd_available()).is_none() {
        return;
    }
    let mut cluster = EtcdCluster::start(3).await.expect("cluster");
    let cfg = EtcdConfig::new(cluster.endpoints())
        .with_prefix(prefix("cluster"))
        .with_ttl(Duration::from_secs(5))
        .with_connect_timeout(Duration::from_secs(5))
        .with_max_backoff(Duration::from_millis(500));
    let registry = EtcdRegistry::connect(cfg.clone()).await.expect("connect");
    let other = EtcdRegistry::connect(cfg.clone()).await.expect("other");
    for i in 0..5 {
        registry
            .register(&svc("cl", &format!("before-{i}"), 9000 + i))
            .await
            .expect("register");
    }
    let leader = cluster.leader().expect("leader");
    eprintln!("killing leader {}", cluster.members[leader].name());
    cluster.members[leader].kill();

    // Keep registering and discovering for 3 s after the kill: no call may fail.
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut n = 0u16;
    while start.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let id = format!("after-{n}");
        registry
            .register(&svc("cl", &id, 10_000 + n))
            .await
            .unwrap_or_else(|e| panic!("register {id} after the leader died: {e}"));
        let listed = other
            .list_instances("cl")
            .await
            .unwrap_or_else(|e| panic!("discover after the leader died: {e}"));
        assert!(
            listed.iter().any(|s| s.id == id),
            "{id} visible to the other client"
        );
        let got = other.get_service(&id).await.expect("get_service");
        assert_eq!(got.id, id);
        worst = worst.max(t.elapsed());
        n += 1;
    }
    eprintln!("{n} register+discover rounds after the leader kill; slowest {worst:?}");
    assert!(n >= 3, "only {n} rounds in 3 s");
    assert!(worst < Duration::from_secs(5), "a round took {worst:?}");
    let listed = other.list_instances("cl").await.expect("list");
    assert_eq!(listed.len(), 5 + usize::from(n));
    registry.close().await.expect("close");
    other.close().await.expect("close");
}

#[tokio::test]
async fn etcd_killed_child_instance_disappears_within_ttl() {
    let test = "etcd_killed_child_instance_disappears_within_ttl";
    let Some(etcd) = server(test).await else {
        return;
    };
    let ttl = 2u64;
    let cfg = config(&etcd.endpoint(), "child", ttl);
    let observer = EtcdRegistry::connect(cfg.clone()).await.expect("observer");
    let mut watch = observer.watch_service("child-svc").await.expect("watch");
    let mut view = View::new();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_etcd_register_child"))
        .args([
            etcd.endpoint(),
            cfg.prefix.clone(),
            "child-svc".into(),
            "child-1".into(),
            ttl.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("child registers in time")
        .expect("read child");
    assert_eq!(line.as_deref(), Some("REGISTERED"));
    follow_until(&mut watch, &mut view, Duration::from_secs(5), |v| {
        v.contains_key("child-1")
    })
    .await
    .expect("observer sees the child's instance");
    // Alive past its TTL: the child's keep-alive works.
    tokio::time::sleep(Duration::from_secs(ttl + 1)).await;
    assert!(observer.get_service("child-1").await.is_ok(), "kept alive");

    child.start_kill().expect("SIGKILL");
    let killed = Instant::now();
    child.wait().await.expect("reap");
    follow_until(&mut watch, &mut view, Duration::from_secs(ttl + 2), |v| {
        v.is_empty()
    })
    .await
    .expect("instance gone within TTL + 2 s");
    let gone = killed.elapsed();
    eprintln!("child's instance gone {gone:?} after SIGKILL (TTL {ttl} s)");
    assert!(gone <= Duration::from_secs(ttl + 2));
    assert!(matches!(
        observer.get_service("child-1").await,
        Err(Error::NotFound(_))
    ));
    observer.close().await.expect("close");
}

#[tokio::test]
async fn etcd_garbage_under_prefix_is_skipped() {
    let Some(etcd) = server("etcd_garbage_under_prefix_is_skipped").await else {
        return;
    };
    let cfg = config(&etcd.endpoint(), "garbage", 10);
    let p = cfg.prefix.clone();
    etcd.etcdctl(&["put", &format!("{p}/gs/bad-1"), "not json"])
        .expect("put");
    etcd.etcdctl(&["put", &format!("{p}/gs/bad-2"), r#"{"id":"bad-2"}"#])
        .expect("put");
    etcd.etcdctl(&["put", &format!("{p}/gs"), "{}"])
        .expect("put");
    etcd.etcdctl(&["put", &format!("{p}/gs/a/b"), "{}"])
        .expect("put");
    let mismatched = svc("other-name", "bad-3", 1).to_json().expect("json");
    etcd.etcdctl(&["put", &format!("{p}/gs/bad-3"), &mismatched])
        .expect("put");

    let registry = EtcdRegistry::connect(cfg).await.expect("connect");
    let mut watch = registry.watch().await.expect("watch");
    match watch.next().await {
        Some(WatchEvent::Snapshot {
            services,
            reason: SnapshotReason::Initial,
        }) => {
            assert!(
                services.is_empty(),
                "garbage kept out of the snapshot: {services:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    registry
        .register(&svc("gs", "good-1", 9001))
        .await
        .expect("register");
    assert_eq!(
        ids(&registry.list_services().await.expect("list")),
        ["good-1"]
    );
    assert_eq!(
        ids(&registry.list_instances("gs").await.expect("list")),
        ["good-1"]
    );
    assert!(matches!(
        registry.get_service("bad-1").await,
        Err(Error::NotFound(_))
    ));

    // Garbage written while watching is skipped too; the next valid change still arrives.
    etcd.etcdctl(&["put", &format!("{p}/gs/bad-4"), "\u{1}\u{2}"])
        .expect("put");
    registry
        .register(&svc("gs", "good-2", 9002))
        .await
        .expect("register");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            Ok(Some(WatchEvent::Change(c))) => seen.push((c.kind, c.service.id)),
            other => panic!("expected changes, got {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            (ServiceEventType::Created, "good-1".to_owned()),
            (ServiceEventType::Created, "good-2".to_owned())
        ]
    );
    registry.close().await.expect("close");
}

#[tokio::test]
async fn etcd_tls_with_test_ca() {
    let test = "etcd_tls_with_test_ca";
    if require(test, etcd_available()).is_none() {
        return;
    }
    let etcd = EtcdServer::start_tls().await.expect("start TLS etcd");
    let pki = etcd.pki().expect("pki").clone();
    let tls = EtcdTlsConfig::new(&pki.ca).with_client_identity(&pki.client_cert, &pki.client_key);
    let cfg = config(&etcd.endpoint(), "tls", 5).with_tls(tls);
    let registry = EtcdRegistry::connect(cfg.clone())
        .await
        .expect("TLS connects");
    registry
        .register(&svc("tls", "tls-1", 9443))
        .await
        .expect("register");
    assert_eq!(registry.list_instances("tls").await.expect("list").len(), 1);
    registry.close().await.expect("close");

    // Without our CA the server is not trusted: a clear failure within the connect timeout.
    let untrusted = config(&etcd.endpoint(), "tls", 5)
        .with_connect_timeout(Duration::from_secs(1))
        .with_tls(EtcdTlsConfig::default().with_domain_name("localhost"));
    let start = Instant::now();
    let r = EtcdRegistry::connect(untrusted).await;
    assert!(r.is_err(), "an untrusted server must not be accepted");
    assert!(start.elapsed() < Duration::from_secs(3));
    // A missing CA file is a configuration error, before any network I/O.
    let missing = cfg.with_tls(EtcdTlsConfig::new("/nonexistent/ca.pem"));
    assert!(matches!(
        EtcdRegistry::connect(missing).await,
        Err(Error::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn etcd_interop_with_etcdctl_in_go_json() {
    let Some(etcd) = server("etcd_interop_with_etcdctl_in_go_json").await else {
        return;
    };
    let cfg = config(&etcd.endpoint(), "interop", 10);
    let p = cfg.prefix.clone();
    // What a laravel-go service writes.
    let go_json = r#"{"id":"go-1","name":"go-svc","version":"1.2.3","address":"10.0.0.5","port":8080,"protocol":"grpc","health":"healthy","metadata":{"region":"eu"},"tags":["api","v1"],"created_at":"2024-01-15T10:30:00Z","updated_at":"2024-01-15T10:30:00.5Z","last_check":"2024-01-15T10:30:00Z","ttl":30000000000}"#;
    etcd.etcdctl(&["put", &format!("{p}/go-svc/go-1"), go_json])
        .expect("put");
    let registry = EtcdRegistry::connect(cfg).await.expect("connect");
    let found = registry.list_instances("go-svc").await.expect("list");
    assert_eq!(found.len(), 1);
    let g = &found[0];
    assert_eq!(
        (g.id.as_str(), g.address.as_str(), g.port),
        ("go-1", "10.0.0.5", 8080)
    );
    assert_eq!(g.protocol.as_str(), "grpc");
    assert_eq!(g.health, Health::Healthy);
    assert_eq!(g.metadata.get("region").map(String::as_str), Some("eu"));
    assert_eq!(g.tags, ["api", "v1"]);
    assert_eq!(g.ttl, Duration::from_secs(30));
    assert_eq!(
        registry.get_service("go-1").await.expect("get").version,
        "1.2.3"
    );

    // What waypost writes reads back through etcdctl as that JSON.
    let mine = svc("rs-svc", "rs-1", 9000)
        .with_metadata("k", "v")
        .with_tag("t")
        .with_ttl(Duration::from_secs(10));
    registry.register(&mine).await.expect("register");
    let raw = etcd
        .etcdctl(&["get", &format!("{p}/rs-svc/rs-1"), "--print-value-only"])
        .expect("get");
    let v: serde_json::Value = serde_json::from_str(raw.trim()).expect("etcdctl shows JSON");
    assert_eq!(v["id"], "rs-1");
    assert_eq!(v["name"], "rs-svc");
    assert_eq!(v["port"], 9000);
    assert_eq!(v["health"], "healthy");
    assert_eq!(v["protocol"], "http");
    assert_eq!(v["ttl"], 10_000_000_000u64, "ttl in Go nanoseconds");
    assert_eq!(v["metadata"]["k"], "v");
    assert_eq!(v["tags"][0], "t");
    let created = v["created_at"].as_str().expect("created_at is a string");
    assert!(
        created.contains('T') && created.len() >= 20,
        "RFC 3339: {created}"
    );
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "id",
        "name",
        "version",
        "address",
        "port",
        "protocol",
        "health",
        "metadata",
        "tags",
        "created_at",
        "updated_at",
        "last_check",
        "ttl",
    ] {
        assert!(keys.contains(&k), "Go field {k} missing: {keys:?}");
    }
    // Updating the Go service's record (say, its health) does not make it ours.
    let mut go_update = g.clone();
    go_update.health = Health::Unhealthy;
    registry
        .update(&go_update)
        .await
        .expect("update foreign record");

    // Our value carries our lease, so it vanishes with the registry.
    registry.close().await.expect("close");
    let after = etcd
        .etcdctl(&["get", &format!("{p}/rs-svc/rs-1"), "--print-value-only"])
        .expect("get");
    assert!(after.trim().is_empty(), "revoked with the lease: {after}");
    // Foreign (Go) data is not ours to delete.
    let go_after = etcd
        .etcdctl(&["get", &format!("{p}/go-svc/go-1"), "--print-value-only"])
        .expect("get");
    assert!(
        go_after.contains("go-1") && go_after.contains(r#""health":"unhealthy""#),
        "a foreign record survives our close, with the update: {go_after}"
    );
}

#[tokio::test]
async fn etcd_lagging_watcher_gets_lagged_snapshot_not_a_gap() {
    let test = "etcd_lagging_watcher_gets_lagged_snapshot_not_a_gap";
    let Some(etcd) = server(test).await else {
        return;
    };
    // A tiny buffer: the suite's burst of 300 changes overflows it.
    let registry = EtcdRegistry::connect(config(&etcd.endpoint(), "lag", 5).with_watch_buffer(32))
        .await
        .expect("connect");
    let opts = ConformanceOptions::default().with_lag_burst(300);
    let report = conformance::lagging_watcher_gets_resync(&registry, &opts).await;
    assert!(
        report.resynced,
        "an overflowing watcher must get a Lagged snapshot: {report:?}"
    );
    // And the snapshot reason says so.
    let mut watch = registry.watch_service("lag2").await.expect("watch");
    assert!(matches!(
        watch.next().await,
        Some(WatchEvent::Snapshot { .. })
    ));
    // More than the stream's channel (256) plus the buffer (32), without reading.
    for i in 0..500u16 {
        registry
            .register(&svc("lag2", &format!("l-{i}"), 9000 + i))
            .await
            .expect("register");
    }
    let mut view = View::new();
    let reasons = follow_until(&mut watch, &mut view, Duration::from_secs(10), |v| {
        v.len() == 500
    })
    .await
    .expect("catches up");
    assert!(reasons.contains(&SnapshotReason::Lagged), "{reasons:?}");
    registry.close().await.expect("close");
}

#[tokio::test]
async fn etcd_watch_resumes_from_last_revision_without_gap() {
    let test = "etcd_watch_resumes_from_last_revision_without_gap";
    let Some(etcd) = server(test).await else {
        return;
    };
    let proxy = TcpProxy::start(etcd.client_port()).await.expect("proxy");
    let cfg = config(&proxy.endpoint(), "resume", 30);
    let watcher = EtcdRegistry::connect(cfg.clone()).await.expect("watcher");
    let writer = EtcdRegistry::connect(cfg.clone().with_endpoints([etcd.endpoint()]))
        .await
        .expect("writer");
    writer
        .register(&svc("rs", "rs-1", 9001))
        .await
        .expect("register");
    let mut watch = watcher.watch_service("rs").await.expect("watch");
    let mut view = View::new();
    follow_until(&mut watch, &mut view, Duration::from_secs(5), |v| {
        v.len() == 1
    })
    .await
    .expect("snapshot");

    // Changes while the watcher's connection is cut.
    proxy.set_open(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer
        .register(&svc("rs", "rs-2", 9002))
        .await
        .expect("register");
    writer.deregister("rs-1").await.expect("deregister");
    let mut updated = svc("rs", "rs-2", 9002);
    updated.health = Health::Unhealthy;
    writer.update(&updated).await.expect("update");
    proxy.set_open(true);

    // Resumed from the last revision: the three changes arrive as changes, in order.
    let mut changes = Vec::new();
    while changes.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            Ok(Some(WatchEvent::Change(c))) => {
                changes.push((c.kind, c.service.id, c.service.health))
            }
            other => panic!("expected the missed changes, got {other:?}"),
        }
    }
    assert_eq!(
        changes,
        [
            (
                ServiceEventType::Created,
                "rs-2".to_owned(),
                Health::Healthy
            ),
            (
                ServiceEventType::Deleted,
                "rs-1".to_owned(),
                Health::Healthy
            ),
            (
                ServiceEventType::Updated,
                "rs-2".to_owned(),
                Health::Unhealthy
            ),
        ]
    );
    watcher.close().await.expect("close");
    writer.close().await.expect("close");
}

/// Spawns `etcd_register_child` and waits for its `REGISTERED` line.
async fn spawn_registrant(args: Vec<String>) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_etcd_register_child"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("child registers in time")
        .expect("read child");
    assert_eq!(line.as_deref(), Some("REGISTERED"));
    child
}

/// The instances `etcdctl` sees under `prefix`: id → lease.
fn stored(etcd: &EtcdServer, prefix: &str) -> BTreeMap<String, i64> {
    etcd.get_prefix(&format!("{prefix}/"))
        .expect("etcdctl get")
        .into_iter()
        .filter_map(|k| {
            let info = ServiceInfo::from_json(k.value.as_bytes()).ok()?;
            Some((info.id, k.lease))
        })
        .collect()
}

#[tokio::test]
async fn etcd_killed_child_with_an_instance_ttl_disappears_within_it() {
    let test = "etcd_killed_child_with_an_instance_ttl_disappears_within_it";
    let Some(etcd) = server(test).await else {
        return;
    };
    // The registry's TTL is long; the instance asks for 5 s of its own.
    let (registry_ttl, instance_ttl) = (60u64, 5u64);
    let cfg = config(&etcd.endpoint(), "child-ttl", registry_ttl);
    let observer = EtcdRegistry::connect(cfg.clone()).await.expect("observer");
    let mut watch = observer.watch_service("ttl-svc").await.expect("watch");
    let mut view = View::new();
    let mut child = spawn_registrant(vec![
        etcd.endpoint(),
        cfg.prefix.clone(),
        "ttl-svc".into(),
        "ttl-1".into(),
        registry_ttl.to_string(),
        instance_ttl.to_string(),
    ])
    .await;
    follow_until(&mut watch, &mut view, Duration::from_secs(5), |v| {
        v.contains_key("ttl-1")
    })
    .await
    .expect("observer sees the child's instance");
    let lease = stored(&etcd, &cfg.prefix)["ttl-1"];
    assert_eq!(
        etcd.lease_granted_ttl(lease).expect("timetolive"),
        Some(5),
        "the instance hangs on a lease with its own TTL"
    );
    // Alive past its TTL: its lease is kept alive.
    tokio::time::sleep(Duration::from_secs(instance_ttl + 1)).await;
    assert!(observer.get_service("ttl-1").await.is_ok(), "kept alive");

    child.start_kill().expect("SIGKILL");
    let killed = Instant::now();
    child.wait().await.expect("reap");
    follow_until(
        &mut watch,
        &mut view,
        Duration::from_secs(instance_ttl + 2),
        |v| v.is_empty(),
    )
    .await
    .expect("instance gone within its TTL + 2 s");
    let gone = killed.elapsed();
    eprintln!(
        "instance with a {instance_ttl} s TTL (registry TTL {registry_ttl} s) gone {gone:?} after SIGKILL"
    );
    assert!(gone <= Duration::from_secs(instance_ttl + 2));
    observer.close().await.expect("close");
}

#[tokio::test]
async fn etcd_instance_ttls_get_leases_of_their_own() {
    let test = "etcd_instance_ttls_get_leases_of_their_own";
    let Some(etcd) = server(test).await else {
        return;
    };
    let proxy = TcpProxy::start(etcd.client_port()).await.expect("proxy");
    let cfg = config(&proxy.endpoint(), "own-ttl", 30).with_request_timeout(Duration::from_secs(3));
    let p = cfg.prefix.clone();
    let registry = EtcdRegistry::connect(cfg).await.expect("connect");

    // Beyond etcd's longest lease: a clear error, nothing stored, no panic.
    for ttl in [
        Duration::MAX,
        waypost_registry_etcd::MAX_LEASE_TTL + Duration::from_secs(1),
    ] {
        let err = registry
            .register(&svc("ot", "too-long", 9000).with_ttl(ttl))
            .await
            .expect_err("a TTL beyond etcd's maximum is refused");
        assert!(
            matches!(err, Error::InvalidInstance(ref m) if m.contains("9000000000 s")),
            "{err}"
        );
    }
    assert!(stored(&etcd, &p).is_empty(), "nothing stored");

    let five = Duration::from_secs(5);
    for s in [
        svc("ot", "a", 9001).with_ttl(five),
        svc("ot", "b", 9002).with_ttl(five),
        svc("ot", "c", 9003),
        svc("ot", "d", 9004).with_ttl(Duration::from_millis(1500)),
        svc("ot", "z", 9005).with_ttl(Duration::ZERO),
    ] {
        registry.register(&s).await.expect("register");
    }
    let leases = stored(&etcd, &p);
    let default = registry.lease_id();
    assert_eq!(leases["c"], default, "no TTL: the registry's lease");
    assert_eq!(leases["z"], default, "a zero TTL means the registry's TTL");
    assert_eq!(leases["a"], leases["b"], "one lease per distinct TTL");
    assert_ne!(leases["a"], default);
    let granted = |id: &str| etcd.lease_granted_ttl(leases[id]).expect("timetolive");
    assert_eq!(granted("c"), Some(30));
    assert_eq!(granted("a"), Some(5));
    assert_eq!(granted("d"), Some(2), "1.5 s rounds up to etcd's 2 s");
    let a = registry.get_service("a").await.expect("get");
    assert_eq!(a.ttl, five, "the stored record keeps its TTL");

    // The 2 s lease is kept alive past its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(stored(&etcd, &p).contains_key("d"), "kept alive");

    // Cut off longer than 2 s: that lease expires in etcd; the others live on.
    proxy.set_open(false);
    wait_until("the 2 s lease expires", Duration::from_secs(6), || {
        let gone = !stored(&etcd, &p).contains_key("d");
        async move { gone }
    })
    .await
    .expect("expired while cut off");
    assert!(!registry.state().is_connected());
    proxy.set_open(true);
    wait_until(
        "every instance registered again",
        Duration::from_secs(10),
        || {
            let n = stored(&etcd, &p).len();
            let connected = registry.state().is_connected();
            async move { n == 5 && connected }
        },
    )
    .await
    .expect("the expired lease is granted again and its instance written again");
    let after = stored(&etcd, &p);
    assert_ne!(after["d"], leases["d"], "a new lease for the 2 s TTL");
    assert_eq!(etcd.lease_granted_ttl(after["d"]).expect("ttl"), Some(2));

    // A lease is released with its last instance; the registry's own lease stays.
    registry.deregister("a").await.expect("deregister");
    assert_eq!(
        etcd.lease_granted_ttl(after["b"]).expect("ttl"),
        Some(5),
        "b still uses it"
    );
    registry.deregister("b").await.expect("deregister");
    registry.deregister("d").await.expect("deregister");
    assert_eq!(etcd.lease_granted_ttl(after["b"]).expect("ttl"), None);
    assert_eq!(etcd.lease_granted_ttl(after["d"]).expect("ttl"), None);
    assert_eq!(etcd.leases().expect("lease list"), [registry.lease_id()]);
    registry.close().await.expect("close");
    assert!(etcd.leases().expect("lease list").is_empty());
}

#[tokio::test]
async fn etcd_wiped_server_that_caught_up_gets_a_reconnected_snapshot() {
    let test = "etcd_wiped_server_that_caught_up_gets_a_reconnected_snapshot";
    let Some(mut etcd) = server(test).await else {
        return;
    };
    let proxy = TcpProxy::start(etcd.client_port()).await.expect("proxy");
    let cfg = config(&proxy.endpoint(), "wipe", 30);
    let p = cfg.prefix.clone();
    let watcher = EtcdRegistry::connect(cfg.clone()).await.expect("watcher");
    let writer = EtcdRegistry::connect(cfg.clone().with_endpoints([etcd.endpoint()]))
        .await
        .expect("writer");
    for s in [svc("wp", "live-1", 9001), svc("wp", "live-2", 9002)] {
        writer.register(&s).await.expect("register");
    }
    // A record a tool wrote without a lease: after the wipe it is gone for good.
    let gone = svc("wp", "gone-1", 9003).to_json().expect("json");
    etcd.etcdctl(&["put", &format!("{p}/wp/gone-1"), &gone])
        .expect("put");
    // A service whose one instance comes back after the wipe, as it was: same count, other
    // history.
    writer
        .register(&svc("kept", "kept-1", 9004))
        .await
        .expect("register");
    for health in [Health::Unhealthy, Health::Healthy] {
        let mut k = svc("kept", "kept-1", 9004);
        k.health = health;
        writer.update(&k).await.expect("update");
    }
    let mut all = watcher.watch().await.expect("watch");
    let mut kept = watcher.watch_service("kept").await.expect("watch");
    let (mut all_view, mut kept_view) = (View::new(), View::new());
    follow_until(&mut all, &mut all_view, Duration::from_secs(5), |v| {
        v.len() == 4
    })
    .await
    .expect("initial view");
    follow_until(&mut kept, &mut kept_view, Duration::from_secs(5), |v| {
        v.len() == 1
    })
    .await
    .expect("initial view");
    for i in 0..5 {
        let live = svc("wp", "live-1", 9001).with_metadata("round", i.to_string());
        writer.update(&live).await.expect("update");
    }
    follow_until(&mut all, &mut all_view, Duration::from_secs(5), |v| {
        v["live-1"].metadata.get("round").map(String::as_str) == Some("4")
    })
    .await
    .expect("updates seen");
    let old_revision = etcd.revision().expect("revision");

    // The watcher is cut off; etcd is wiped and restarted on the same port; the writer's lease
    // is gone with the data, so it registers its instances again; then enough writes land for
    // the new revision to pass the old one, all before the watcher reconnects.
    proxy.set_open(false);
    etcd.wipe_and_restart().await.expect("wipe and restart");
    wait_until("writer registers again", Duration::from_secs(10), || {
        let n = stored(&etcd, &p).len();
        async move { n == 3 }
    })
    .await
    .expect("the writer's instances are back");
    let mut writes = 0;
    while writes < 20 || etcd.revision().expect("revision") <= old_revision + 5 {
        etcd.etcdctl(&["put", "/unrelated/counter", &writes.to_string()])
            .expect("put");
        writes += 1;
    }
    let new_revision = etcd.revision().expect("revision");
    assert!(new_revision > old_revision);
    proxy.set_open(true);
    let reconnected = Instant::now();

    let expected: Vec<String> = stored(&etcd, &p).into_keys().collect();
    assert_eq!(expected, ["kept-1", "live-1", "live-2"]);
    let reasons = follow_until(&mut all, &mut all_view, Duration::from_secs(5), |v| {
        v.keys().cloned().collect::<Vec<_>>() == expected
    })
    .await
    .expect("the watch view equals etcd's within 5 s");
    let took = reconnected.elapsed();
    assert!(
        reasons.contains(&SnapshotReason::Reconnected),
        "a wiped server must give Snapshot{{Reconnected}}, got {reasons:?}"
    );
    // The same number of instances, but not the same writes: found out too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut kept_reasons = Vec::new();
    while !kept_reasons.contains(&SnapshotReason::Reconnected) {
        match tokio::time::timeout_at(deadline, kept.next()).await {
            Ok(Some(ev)) => kept_reasons.extend(apply(&mut kept_view, ev)),
            other => panic!("no Reconnected snapshot for `kept`: {other:?}, {kept_reasons:?}"),
        }
    }
    assert_eq!(kept_view.keys().collect::<Vec<_>>(), ["kept-1"]);
    eprintln!(
        "wiped etcd (revision {old_revision} before, {new_revision} after {writes} writes): \
         watch view equal to etcd's {took:?} after reconnecting"
    );
    // And it follows the new history from there.
    writer
        .register(&svc("wp", "live-3", 9005))
        .await
        .expect("register");
    follow_until(&mut all, &mut all_view, Duration::from_secs(5), |v| {
        v.contains_key("live-3")
    })
    .await
    .expect("changes after the resync arrive");

    // Wiped again, now without catching up, and without cutting the watcher off: the revision
    // went back.
    etcd.etcdctl(&[
        "put",
        &format!("{p}/wp/gone-2"),
        &gone.replace("gone-1", "gone-2"),
    ])
    .expect("put");
    follow_until(&mut all, &mut all_view, Duration::from_secs(5), |v| {
        v.contains_key("gone-2")
    })
    .await
    .expect("seen");
    etcd.wipe_and_restart().await.expect("wipe and restart");
    wait_until("writer registers again", Duration::from_secs(10), || {
        let n = stored(&etcd, &p).len();
        async move { n == 4 }
    })
    .await
    .expect("the writer's instances are back");
    let expected: Vec<String> = stored(&etcd, &p).into_keys().collect();
    let reasons = follow_until(&mut all, &mut all_view, Duration::from_secs(5), |v| {
        v.keys().cloned().collect::<Vec<_>>() == expected
    })
    .await
    .expect("the watch view equals etcd's again");
    assert!(
        reasons.contains(&SnapshotReason::Reconnected),
        "{reasons:?}"
    );
    watcher.close().await.expect("close");
    writer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_instances_deleted_behind_our_back_are_put_back() {
    let test = "etcd_instances_deleted_behind_our_back_are_put_back";
    let Some(etcd) = server(test).await else {
        return;
    };
    let proxy = TcpProxy::start(etcd.client_port()).await.expect("proxy");
    let cfg = config(&proxy.endpoint(), "deleted", 15);
    let p = cfg.prefix.clone();
    let registry = Arc::new(EtcdRegistry::connect(cfg).await.expect("connect"));
    // Enough instances that putting them back takes a moment the test can see.
    const N: usize = 1_000;
    futures_util::stream::iter(0..N)
        .map(|i| {
            let registry = registry.clone();
            async move {
                let mut s = svc("dl", &format!("dl-{i}"), 9000 + i as u16);
                if i % 10 == 0 {
                    s = s.with_ttl(Duration::from_secs(5));
                }
                registry.register(&s).await.expect("register");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let before = stored(&etcd, &p);
    assert_eq!(before.len(), N);
    let default_lease = registry.lease_id();

    // 1. An operator deletes them all while the registry is connected.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (registry, stop) = (registry.clone(), stop.clone());
        tokio::spawn(async move {
            // Whether the registry said "instances missing", in the order seen, and when.
            let mut seen = vec![false];
            let mut at = vec![Instant::now()];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let missing = matches!(registry.state(), RegistryState::Recovering { last_error, .. }
                    if last_error.contains("missing"));
                if seen.last() != Some(&missing) {
                    seen.push(missing);
                    at.push(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (seen, at)
        })
    };
    etcd.etcdctl(&["del", &format!("{p}/"), "--prefix"])
        .expect("etcdctl del");
    let deleted = Instant::now();
    wait_until("instances put back", Duration::from_secs(10), || {
        let back = stored(&etcd, &p) == before && registry.state().is_connected();
        async move { back }
    })
    .await
    .expect("every deleted instance is back on its own lease within 10 s, and Connected");
    let back_after = deleted.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, at) = sampler.await.expect("sampler");
    assert_eq!(
        seen,
        [false, true, false],
        "Recovering (instances missing) while putting them back, Connected after"
    );
    eprintln!(
        "{N} deleted instances: Recovering {:?} after the `etcdctl del` returned, for {:?}",
        at[1].saturating_duration_since(deleted),
        at[2] - at[1]
    );
    assert_eq!(
        registry.lease_id(),
        default_lease,
        "put back, not re-registered"
    );
    eprintln!("{N} deleted instances back after {back_after:?}");

    // 2. Deleted while the registry is cut off: it must not say Connected until they are back.
    proxy.set_open(false);
    wait_until("cut off", Duration::from_secs(5), || {
        let connected = registry.state().is_connected();
        async move { !connected }
    })
    .await
    .expect("the registry notices the cut");
    etcd.etcdctl(&["del", &format!("{p}/dl/dl-1"), &format!("{p}/dl/dl-2")])
        .expect("etcdctl del");
    etcd.etcdctl(&["del", &format!("{p}/dl/dl-10")])
        .expect("etcdctl del");
    proxy.set_open(true);
    let reopened = Instant::now();
    loop {
        let connected_before = registry.state().is_connected();
        let now = stored(&etcd, &p);
        let connected_after = registry.state().is_connected();
        let complete = now == before;
        assert!(
            complete || !(connected_before && connected_after),
            "Connected while {} instances are missing",
            N - now.len()
        );
        if complete && connected_after {
            break;
        }
        assert!(
            reopened.elapsed() < Duration::from_secs(10),
            "not back within 10 s: {} missing, state {:?}",
            N - now.len(),
            registry.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "instances deleted during a cut-off back {:?} after reconnecting",
        reopened.elapsed()
    );
    registry.close().await.expect("close");
    assert!(stored(&etcd, &p).is_empty());
}

// Multi-threaded: the registry's tasks run while the test blocks on `etcdctl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restored_backup_without_our_instances_gets_them_back() {
    let test = "etcd_restored_backup_without_our_instances_gets_them_back";
    let Some(mut etcd) = server(test).await else {
        return;
    };
    let cfg = config(&etcd.endpoint(), "restore", 15);
    let p = cfg.prefix.clone();
    let registry = EtcdRegistry::connect(cfg).await.expect("connect");
    // The backup holds the registry's lease, but none of its instances.
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = dir.path().join("backup.db");
    etcd.snapshot_save(&backup).expect("snapshot save");
    registry
        .register(&svc("rb", "rb-1", 9001))
        .await
        .expect("register");
    registry
        .register(&svc("rb", "rb-2", 9002))
        .await
        .expect("register");
    // On a lease granted after the backup: lost with the restore, granted again.
    registry
        .register(&svc("rb", "rb-3", 9003).with_ttl(Duration::from_secs(5)))
        .await
        .expect("register");
    let default_lease = registry.lease_id();

    etcd.restore_and_restart(&backup)
        .await
        .expect("restore the backup");
    let restarted = Instant::now();
    assert!(
        etcd.lease_granted_ttl(default_lease)
            .expect("ttl")
            .is_some(),
        "the backup holds the registry's lease"
    );
    loop {
        let connected_before = registry.state().is_connected();
        let now = stored(&etcd, &p);
        let connected_after = registry.state().is_connected();
        let complete = now.len() == 3;
        assert!(
            complete || !(connected_before && connected_after),
            "Connected while instances are missing: {now:?}"
        );
        if complete && connected_after {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "not back within 10 s: {now:?}, state {:?}",
            registry.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "instances missing from a restored backup back {:?} after the restart",
        restarted.elapsed()
    );
    let now = stored(&etcd, &p);
    assert_eq!(
        now["rb-1"], default_lease,
        "put back on the lease that lived on"
    );
    assert_eq!(now["rb-2"], default_lease);
    registry.close().await.expect("close");
}

#[tokio::test]
async fn etcd_instance_registered_again_elsewhere_is_left_to_its_new_owner() {
    let test = "etcd_instance_registered_again_elsewhere_is_left_to_its_new_owner";
    let Some(etcd) = server(test).await else {
        return;
    };
    let cfg = config(&etcd.endpoint(), "takeover", 3);
    let p = cfg.prefix.clone();
    let first = EtcdRegistry::connect(cfg.clone()).await.expect("connect");
    let second = EtcdRegistry::connect(cfg).await.expect("connect");
    first
        .register(&svc("to", "to-1", 9001))
        .await
        .expect("register");
    second
        .register(&svc("to", "to-1", 9002))
        .await
        .expect("register the same id");
    // Two keep-alive rounds of the first registry (TTL 3 s: one a second), each with a check of
    // its keys: it must not take the instance back.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(
            stored(&etcd, &p).get("to-1"),
            Some(&second.lease_id()),
            "the instance stays with the registry that registered it last"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(first.state().is_connected(), "{:?}", first.state());
    // Nor after losing its lease: it writes again only what is still its own.
    etcd.etcdctl(&["lease", "revoke", &format!("{:x}", first.lease_id())])
        .expect("revoke");
    let revoked = first.lease_id();
    wait_until("a new lease", Duration::from_secs(10), || {
        let done = first.lease_id() != revoked && first.state().is_connected();
        async move { done }
    })
    .await
    .expect("the first registry recovers its lease");
    assert_eq!(stored(&etcd, &p).get("to-1"), Some(&second.lease_id()));
    assert_eq!(
        second.get_service("to-1").await.expect("get").port,
        9002,
        "the second registration's data"
    );
    first.close().await.expect("close");
    assert_eq!(stored(&etcd, &p).get("to-1"), Some(&second.lease_id()));
    second.close().await.expect("close");
}

#[tokio::test]
async fn etcd_restored_backup_with_the_same_count_gets_a_reconnected_snapshot() {
    let test = "etcd_restored_backup_with_the_same_count_gets_a_reconnected_snapshot";
    let Some(mut etcd) = server(test).await else {
        return;
    };
    let proxy = TcpProxy::start(etcd.client_port()).await.expect("proxy");
    let cfg = config(&proxy.endpoint(), "same-count", 30);
    let p = cfg.prefix.clone();
    let watcher = EtcdRegistry::connect(cfg).await.expect("watcher");
    let put = |id: &str| {
        let json = svc("sc", id, 9000).to_json().expect("json");
        etcd.etcdctl(&["put", &format!("{p}/sc/{id}"), &json])
            .expect("put");
    };
    put("a");
    put("b");
    put("k");
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = dir.path().join("backup.db");
    etcd.snapshot_save(&backup).expect("snapshot save");
    let mut watch = watcher.watch_service("sc").await.expect("watch");
    let mut view = View::new();
    etcd.etcdctl(&["del", &format!("{p}/sc/a")]).expect("del");
    follow_until(&mut watch, &mut view, Duration::from_secs(5), |v| {
        v.keys().cloned().collect::<Vec<_>>() == ["b", "k"]
    })
    .await
    .expect("view {b, k}");
    let old_revision = etcd.revision().expect("revision");

    // Restored to before `a` was deleted, then `b` deleted instead: as many keys as the watcher
    // saw, the last one written (`k`) the same, but {a, k} where the watcher has {b, k}.
    proxy.set_open(false);
    etcd.restore_and_restart(&backup).await.expect("restore");
    etcd.etcdctl(&["del", &format!("{p}/sc/b")]).expect("del");
    while etcd.revision().expect("revision") <= old_revision + 2 {
        etcd.etcdctl(&["put", "/unrelated/counter", "x"])
            .expect("put");
    }
    proxy.set_open(true);
    let reasons = follow_until(&mut watch, &mut view, Duration::from_secs(5), |v| {
        v.keys().cloned().collect::<Vec<_>>() == ["a", "k"]
    })
    .await
    .expect("the watch view equals etcd's within 5 s");
    assert!(
        reasons.contains(&SnapshotReason::Reconnected),
        "{reasons:?}"
    );
    watcher.close().await.expect("close");
}
