//! Behaviour of the Consul backend against the fake agent: liveness, outages, watches, ACLs,
//! foreign data, limits.
//!
//! One idea in one file: the backend's behaviour against one fake agent, one test per promise.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use waypost_core_types::conformance::faults;
use waypost_core_types::{
    Error, Health, InstanceView, Protocol, RegistryState, Scope, ServiceEventType, ServiceInfo,
    ServiceRegistry, SnapshotReason, Timestamp, WatchEvent,
};
use waypost_registry_consul::fake::{FakeConsul, FakeOptions};
use waypost_registry_consul::{ConsulConfig, ConsulRegistry, ForeignServices};

use common::{connect, eventually, fake, fast_config, next, ConsulFixture};

fn inst(name: &str, id: &str, port: u16) -> ServiceInfo {
    ServiceInfo::new(id, name, "127.0.0.1", port)
        .with_version("1.0.0")
        .with_health(Health::Healthy)
}

fn waypost_meta(prefix: &str) -> serde_json::Value {
    json!({"wp-prefix": prefix, "wp-version": "3.0", "wp-protocol": "grpc", "wp-health": "healthy",
           "wp-created-at": "2024-01-01T00:00:00Z", "wp-updated-at": "2024-01-01T00:00:00Z",
           "wp-ttl": "0", "wp-weight": "100", "wpm-zone": "b"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_accepts_but_never_answers_fails_within_the_connect_timeout() {
    // (A port nobody listens on: `fault_suite_against_the_fake_agent`.)
    // A listener that accepts but never answers: the connect timeout bounds it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let started = Instant::now();
    let err = ConsulRegistry::connect(
        ConsulConfig::default()
            .with_address(format!("http://{addr}"))
            .with_connect_timeout(Duration::from_millis(400)),
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(390) && took < Duration::from_secs(2),
        "{took:?}"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite_against_the_fake_agent() {
    let mut fixture = ConsulFixture::start().await;
    let unreachable = faults::no_server_fails_fast(&fixture).await;
    assert!(
        matches!(unreachable.error, Error::Unavailable(_)),
        "{:?}",
        unreachable.error
    );
    assert!(
        unreachable.error.to_string().contains("unreachable"),
        "{}",
        unreachable.error
    );
    match faults::wrong_credentials_are_a_clear_auth_error(&mut fixture).await {
        Some(Error::Auth { backend, message }) => {
            assert_eq!(backend, "consul");
            assert!(message.contains("ACL not found"), "{message}");
        }
        other => panic!("Consul has ACL tokens: {other:?}"),
    }
    faults::dropped_registry_vanishes_promptly(&fixture).await;
    faults::close_is_idempotent_and_ends_streams(&fixture).await;
    nothing_left_on(&fixture);
}

// The outages, each on an agent of its own, so that they run side by side.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite_frozen_agent() {
    let mut fixture = ConsulFixture::start().await;
    faults::freeze_and_thaw_recovers(&mut fixture).await;
    nothing_left_on(&fixture);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite_agent_restarted_with_its_data() {
    let mut fixture = ConsulFixture::start().await;
    faults::kill_and_restart_recovers(&mut fixture).await;
    nothing_left_on(&fixture);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite_agent_restarted_without_its_data() {
    let mut fixture = ConsulFixture::start().await;
    fixture.forget_on_restart = true;
    faults::kill_and_restart_recovers(&mut fixture).await;
    nothing_left_on(&fixture);
}

fn nothing_left_on(fixture: &ConsulFixture) {
    assert!(
        fixture.agent.local_service_ids().is_empty(),
        "every registry closed or dropped: nothing left on the agent: {:?}",
        fixture.agent.local_service_ids()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_travels_in_the_header_and_never_in_debug_or_errors() {
    let secret = "b2c6f1c4-token-never-print-me";
    let agent = FakeConsul::start(FakeOptions::default().with_acl_token(secret))
        .await
        .unwrap();
    let registry = connect(fast_config(&agent).with_token(secret)).await;
    registry.register(&inst("tok", "tok-1", 80)).await.unwrap();
    assert_eq!(registry.list_instances("tok").await.unwrap().len(), 1);
    let seen = agent.requests();
    let with_acl: Vec<_> = seen
        .iter()
        .filter(|r| r.path != "/v1/status/leader")
        .collect();
    assert!(!with_acl.is_empty());
    for r in &seen {
        assert_eq!(
            r.token_header.as_deref(),
            Some(secret),
            "{r:?} lacks the token header"
        );
        assert!(
            !r.path.contains(secret),
            "the token must not travel in the URL: {r:?}"
        );
    }
    let dbg = format!("{registry:?} {:?}", registry.config());
    assert!(!dbg.contains(secret), "{dbg}");
    // An error while the token is in use does not contain it either.
    agent.fail_next(1, 500, "boom", "/v1/health/service/");
    let err = registry.list_instances("tok").await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains(secret));
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_is_a_clear_auth_error() {
    let agent = FakeConsul::start(FakeOptions::default().with_acl_token("right"))
        .await
        .unwrap();
    // No token: the anonymous token lacks service:write.
    let anon = connect(fast_config(&agent)).await;
    match anon.register(&inst("acl", "acl-1", 80)).await {
        Err(Error::Auth {
            backend: "consul",
            message,
        }) => {
            assert!(message.contains("Permission denied"), "{message}")
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    // Anonymous list reads are filtered (200, empty), as in Consul.
    assert!(anon.list_instances("acl").await.unwrap().is_empty());
    // A wrong token: `fault_suite_against_the_fake_agent`.
    assert!(agent.local_service_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_a_ttl_check_and_passes_it_well_inside_the_ttl() {
    let agent = fake().await;
    let registry = connect(fast_config(&agent)).await;
    let svc = inst("live", "live-1", 80).with_ttl(Duration::from_millis(900));
    registry.register(&svc).await.unwrap();
    let reg = agent
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT" && r.path.starts_with("/v1/agent/service/register"))
        .expect("a register request");
    assert!(reg.path.contains("replace-existing-checks"));
    assert_eq!(
        agent.check_status("service:live-1").as_deref(),
        Some("passing")
    );
    let before = agent.count("PUT", "/v1/agent/check/pass/service%3Alive-1");
    tokio::time::sleep(Duration::from_millis(2700)).await; // three TTLs
    assert_eq!(
        agent.check_status("service:live-1").as_deref(),
        Some("passing"),
        "the registry must pass the check before the TTL expires"
    );
    let passes = agent.count("PUT", "/v1/agent/check/pass/service%3Alive-1") - before;
    assert!(
        (6..=14).contains(&passes),
        "{passes} passes in 3 TTLs (expected ~1 per TTL/3)"
    );
    assert!(registry.state().is_connected());
    // renew = pass now.
    let before = agent.count("PUT", "/v1/agent/check/pass/service%3Alive-1");
    registry.renew("live-1").await.unwrap();
    assert_eq!(
        agent.count("PUT", "/v1/agent/check/pass/service%3Alive-1"),
        before + 1
    );
    registry.close().await.unwrap();
    assert!(agent.local_service_ids().is_empty(), "close deregisters");
}

/// A TTL of `Duration::MAX` ("no limit") is clamped to Consul's longest check TTL here (24 h):
/// the agent accepts the registration, the check passes, and the heartbeat loop keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_of_duration_max_is_clamped_not_a_panic() {
    let agent = fake().await;
    let registry = connect(fast_config(&agent)).await;
    let forever = inst("forever", "forever-1", 80).with_ttl(Duration::MAX);
    let short = inst("short", "short-1", 81).with_ttl(Duration::from_millis(600));
    registry.register(&forever).await.unwrap();
    registry.register(&short).await.unwrap();
    assert_eq!(
        agent.check_status("service:forever-1").as_deref(),
        Some("passing")
    );
    registry.renew("forever-1").await.unwrap();
    // The heartbeat loop (shared by both instances) still runs after seeing the huge TTL.
    let before = agent.count("PUT", "/v1/agent/check/pass/service%3Ashort-1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(agent.count("PUT", "/v1/agent/check/pass/service%3Ashort-1") > before);
    assert!(registry.state().is_connected());
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_process_goes_critical_then_is_reaped() {
    let agent = FakeConsul::start(
        FakeOptions::default().with_reaping(Duration::from_millis(800), Duration::from_millis(100)),
    )
    .await
    .unwrap();
    let observer = connect(fast_config(&agent)).await;
    let mut watch = observer.watch_service("mortal").await.unwrap();
    assert!(matches!(
        next(&mut watch, Duration::from_secs(5)).await,
        Some(WatchEvent::Snapshot { .. })
    ));
    // The process "dies": its runtime goes away with every task of the registry, so there is
    // no close, no deregistration, no more heartbeats. (A registry merely dropped on a live
    // runtime deregisters its instances; see `dropping_without_close_deregisters`.)
    let cfg = fast_config(&agent).with_deregister_critical_after(Duration::from_millis(800));
    let started = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dying = runtime.block_on(async {
            let dying = connect(cfg).await;
            dying
                .register(&inst("mortal", "mortal-1", 80).with_ttl(Duration::from_secs(1)))
                .await
                .unwrap();
            dying
        });
        let started = Instant::now();
        drop(runtime);
        drop(dying);
        started
    })
    .join()
    .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match next(&mut watch, Duration::from_secs(6)).await {
            Some(WatchEvent::Change(ev)) => {
                kinds.push((ev.kind, ev.service.health, started.elapsed()))
            }
            other => panic!("expected changes, got {other:?} after {kinds:?}"),
        }
    }
    assert_eq!(
        (kinds[0].0, kinds[0].1),
        (ServiceEventType::Created, Health::Healthy)
    );
    assert_eq!(
        (kinds[1].0, kinds[1].1),
        (ServiceEventType::Updated, Health::Unhealthy),
        "{kinds:?}"
    );
    assert!(
        kinds[1].2 >= Duration::from_millis(700),
        "critical only after the TTL: {kinds:?}"
    );
    assert_eq!(kinds[2].0, ServiceEventType::Deleted, "{kinds:?}");
    assert!(agent.local_service_ids().is_empty());
    observer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_that_forgets_registrations_leads_to_re_registration() {
    let agent = fake().await;
    let registry = connect(fast_config(&agent).with_ttl(Duration::from_millis(600))).await;
    registry
        .register(&inst("phoenix", "phoenix-1", 80))
        .await
        .unwrap();
    let original = registry.get_service("phoenix-1").await.unwrap();

    agent.stop();
    eventually(
        Duration::from_secs(5),
        "state Recovering while the agent is down",
        || async {
            matches!(registry.state(), RegistryState::Recovering { attempts, .. } if attempts >= 1)
        },
    )
    .await;
    if let RegistryState::Recovering { last_error, .. } = registry.state() {
        assert!(!last_error.is_empty());
    }
    agent.forget_everything();
    agent.resume().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "re-registered after the restart",
        || async {
            agent.local_service_ids() == vec!["phoenix-1".to_string()]
                && registry.state().is_connected()
        },
    )
    .await;
    assert_eq!(
        agent.check_status("service:phoenix-1").as_deref(),
        Some("passing")
    );
    let again = registry.get_service("phoenix-1").await.unwrap();
    assert_eq!(
        again.created_at, original.created_at,
        "the same registration comes back"
    );
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_back_off_and_recover() {
    let agent = fake().await;
    let registry = connect(
        fast_config(&agent)
            .with_ttl(Duration::from_millis(300))
            .with_retry_initial_backoff(Duration::from_millis(100))
            .with_retry_max_backoff(Duration::from_millis(400)),
    )
    .await;
    registry
        .register(&inst("flaky", "flaky-1", 80))
        .await
        .unwrap();
    agent.fail_next(
        u64::MAX,
        500,
        "rpc error making call: No cluster leader",
        "/v1/agent/check/",
    );
    let before = agent.count("PUT", "/v1/agent/check/");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tries = agent.count("PUT", "/v1/agent/check/") - before;
    match registry.state() {
        RegistryState::Recovering {
            attempts,
            last_error,
            ..
        } => {
            assert!(attempts >= 4, "{attempts}");
            assert!(last_error.contains("No cluster leader"), "{last_error}");
        }
        other => panic!("expected Recovering, got {other:?}"),
    }
    // Backoff, not a spin: capped at 400 ms (jittered down to 200 ms) → at most ~16 in 3 s.
    assert!(
        (4..=20).contains(&tries),
        "{tries} heartbeat attempts in 3 s"
    );
    agent.clear_failures();
    eventually(
        Duration::from_secs(3),
        "Connected after the errors stop",
        || async { registry.state().is_connected() },
    )
    .await;
    assert_eq!(
        agent.check_status("service:flaky-1").as_deref(),
        Some("passing")
    );
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_recovers_from_errors_with_a_reconnected_snapshot() {
    let agent = fake().await;
    let watcher = connect(fast_config(&agent)).await;
    let writer = connect(fast_config(&agent)).await;
    let mut watch = watcher.watch_service("bumpy").await.unwrap();
    assert!(matches!(
        next(&mut watch, Duration::from_secs(5)).await,
        Some(WatchEvent::Snapshot { .. })
    ));
    agent.fail_next(5, 500, "injected", "/v1/health/service/bumpy");
    writer
        .register(&inst("bumpy", "bumpy-1", 80))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut watch))
            .await
            .expect("a Reconnected snapshot after the errors")
            .expect("stream open");
        if let WatchEvent::Snapshot { services, reason } = ev {
            assert_eq!(reason, SnapshotReason::Reconnected);
            assert_eq!(services.len(), 1);
            assert_eq!(services[0].id, "bumpy-1");
            break;
        }
    }
    writer.close().await.unwrap();
    watcher.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_query_timeouts_bring_no_spurious_events_and_no_spinning() {
    let agent = fake().await;
    let registry = connect(fast_config(&agent).with_watch_wait(Duration::from_millis(400))).await;
    registry
        .register(&inst("quiet", "quiet-1", 80))
        .await
        .unwrap();
    let mut watch = registry.watch_service("quiet").await.unwrap();
    match next(&mut watch, Duration::from_secs(5)).await {
        Some(WatchEvent::Snapshot {
            services,
            reason: SnapshotReason::Initial,
        }) => {
            assert_eq!(services.len(), 1)
        }
        other => panic!("{other:?}"),
    }
    let before = agent.count("GET", "/v1/health/service/quiet?");
    // Heartbeats keep passing the check: same status, so no index change, no event.
    let got = next(&mut watch, Duration::from_secs(3)).await;
    assert!(got.is_none(), "no change, no event; got {got:?}");
    let queries = agent.count("GET", "/v1/health/service/quiet?") - before;
    assert!(
        (4..=10).contains(&queries),
        "{queries} blocking queries of 400 ms in 3 s"
    );
    let blocking = agent
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.starts_with("/v1/health/service/quiet?"))
        .unwrap();
    assert!(
        blocking.path.contains("index=") && blocking.path.contains("wait=400ms"),
        "{blocking:?}"
    );
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_going_backwards_resyncs_the_watch() {
    let agent = fake().await;
    let registry = connect(fast_config(&agent).with_watch_wait(Duration::from_millis(500))).await;
    agent.add_remote_service(
        "node-b",
        "10.0.0.2",
        json!({"ID": "gone-1", "Service": "gone", "Port": 81}),
        "passing",
    );
    let mut watch = registry.watch_service("gone").await.unwrap();
    match next(&mut watch, Duration::from_secs(5)).await {
        Some(WatchEvent::Snapshot { services, .. }) => assert_eq!(services.len(), 1),
        other => panic!("{other:?}"),
    }
    agent.forget_everything(); // the index drops from ~12 to 2
    match next(&mut watch, Duration::from_secs(5)).await {
        Some(WatchEvent::Snapshot {
            services,
            reason: SnapshotReason::Reconnected,
        }) => {
            assert!(services.is_empty(), "{services:?}")
        }
        other => panic!("expected a Reconnected snapshot, got {other:?}"),
    }
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_going_backwards_resyncs_a_whole_registry_watch() {
    let agent = fake().await;
    let registry = connect(fast_config(&agent).with_watch_wait(Duration::from_millis(500))).await;
    agent.add_remote_service(
        "node-b",
        "10.0.0.2",
        json!({"ID": "gone-1", "Service": "gone", "Port": 81}),
        "passing",
    );
    let mut watch = registry.watch().await.unwrap();
    let mut view = InstanceView::new();
    match next(&mut watch, Duration::from_secs(5)).await {
        Some(
            ev @ WatchEvent::Snapshot {
                reason: SnapshotReason::Initial,
                ..
            },
        ) => {
            view.apply_watch_event(&Scope::All, ev);
        }
        other => panic!("{other:?}"),
    }
    assert!(view.get("gone", "gone-1").is_some());
    agent.forget_everything(); // the catalog's and every name's index drop to 2
                               // Each loop that sees the reset resyncs the stream; the first one may still hold names
                               // whose own loops have not answered yet, the view is right once they all have.
    match next(&mut watch, Duration::from_secs(5)).await {
        Some(
            ev @ WatchEvent::Snapshot {
                reason: SnapshotReason::Reconnected,
                ..
            },
        ) => {
            view.apply_watch_event(&Scope::All, ev);
        }
        other => panic!("expected a Reconnected snapshot, got {other:?}"),
    }
    while view.get("gone", "gone-1").is_some() {
        match next(&mut watch, Duration::from_secs(5)).await {
            Some(
                ev @ (WatchEvent::Change(_)
                | WatchEvent::Snapshot {
                    reason: SnapshotReason::Reconnected,
                    ..
                }),
            ) => {
                view.apply_watch_event(&Scope::All, ev);
            }
            other => panic!("expected gone-1 to leave after the reset, got {other:?}"),
        }
    }
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_reads_the_cluster_not_only_the_local_agent() {
    let agent = fake().await;
    let registry = connect(fast_config(&agent)).await;
    registry
        .register(&inst("orders", "orders-local", 80))
        .await
        .unwrap();
    let mut meta = waypost_meta("laravel-go/services");
    meta["wp-health"] = json!("healthy");
    agent.add_remote_service(
        "node-b",
        "10.0.0.2",
        json!({"ID": "orders-remote", "Service": "orders", "Port": 8080, "Address": "",
               "Tags": ["b"], "Meta": meta}),
        "passing",
    );
    let mut all = registry.list_instances("orders").await.unwrap();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(all.len(), 2);
    let remote = &all[1];
    assert_eq!(remote.id, "orders-remote");
    assert_eq!(
        remote.address, "10.0.0.2",
        "empty service address = the node's"
    );
    assert_eq!(
        (remote.version.as_str(), remote.protocol),
        ("3.0", Protocol::Grpc)
    );
    assert_eq!(remote.metadata.get("zone").map(String::as_str), Some("b"));
    let got = registry.get_service("orders-remote").await.unwrap();
    assert_eq!(&got, remote, "get_service finds instances of other agents");
    assert!(registry
        .list_services()
        .await
        .unwrap()
        .iter()
        .any(|s| s.id == "orders-remote"));
    // An instance of another agent cannot be deregistered through this one.
    assert!(matches!(
        registry.deregister("orders-remote").await,
        Err(Error::NotFound(_))
    ));
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_corrupt_catalog_entries_never_panic() {
    let agent = fake().await;
    let add = |id: &str, svc: serde_json::Value, status: &str| {
        let mut svc = svc;
        svc["ID"] = json!(id);
        agent.add_remote_service("node-x", "10.0.0.9", svc, status);
    };
    add(
        "redis-1",
        json!({"Service": "redis", "Port": 6379, "Weights": {"Passing": 2, "Warning": 1}}),
        "warning",
    );
    add(
        "redis 2",
        json!({"Service": "redis", "Port": 6379}),
        "passing",
    ); // unusable id
    add("redis-3", json!({"Service": "redis"}), "passing"); // no port
    add(
        "redis-4",
        json!({"Service": "redis", "Port": 1, "Meta": {"wp-prefix": "other/ns"}}),
        "passing",
    );
    add(
        "redis-5",
        json!({"Service": "redis", "Port": 1,
        "Meta": {"wp-prefix": "laravel-go/services", "wp-ttl": "forever"}}),
        "passing",
    );
    add(
        "weird-1",
        json!({"Service": "bad name!", "Port": 1}),
        "passing",
    );

    let registry = connect(fast_config(&agent)).await;
    let redis = registry.list_instances("redis").await.unwrap();
    assert_eq!(redis.len(), 1, "{redis:?}");
    let r = &redis[0];
    assert_eq!(
        (r.id.as_str(), r.address.as_str(), r.port),
        ("redis-1", "10.0.0.9", 6379)
    );
    assert_eq!(r.health, Health::Unknown, "warning → unknown");
    assert_eq!(r.weight, 200, "Consul weight 2 → 200");
    assert!(r.version.is_empty() && r.protocol == Protocol::Http);
    let all = registry.list_services().await.unwrap();
    assert!(all.iter().any(|s| s.id == "redis-1"));
    assert!(!all
        .iter()
        .any(|s| s.id == "redis-4" || s.id == "redis-5" || s.name == "bad name!"));
    let mut watch = registry.watch().await.unwrap();
    match next(&mut watch, Duration::from_secs(5)).await {
        Some(WatchEvent::Snapshot { services, .. }) => {
            assert!(services.iter().any(|s| s.id == "redis-1"))
        }
        other => panic!("{other:?}"),
    }
    drop(watch);
    registry.close().await.unwrap();

    let strict = connect(fast_config(&agent).with_foreign_services(ForeignServices::Skip)).await;
    assert!(strict.list_instances("redis").await.unwrap().is_empty());
    strict.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_consul_loses_nothing() {
    let agent = fake().await;
    let registry = connect(fast_config(&agent)).await;
    let svc = ServiceInfo::new("rt-1", "rt", "rt.internal", 9000)
        .with_version("2.1.0-beta+7")
        .with_protocol(Protocol::Grpc)
        .with_health(Health::Unknown)
        .with_tag("b")
        .with_tag("a")
        .with_tag("a")
        .with_metadata("region/zone", "eu-west-1a")
        .with_metadata("-odd-", "")
        .with_metadata("ключ", "значение ✓")
        .with_ttl(Duration::from_secs(4))
        .with_weight(0);
    registry.register(&svc).await.unwrap();
    let got = registry.get_service("rt-1").await.unwrap();
    let mut want = svc.clone();
    want.created_at = got.created_at;
    want.updated_at = got.updated_at;
    want.last_check = got.last_check;
    assert_eq!(got, want);
    assert!(got.created_at > Timestamp::zero());
    assert_eq!(
        agent.check_status("service:rt-1").as_deref(),
        Some("warning"),
        "unknown → warning"
    );
    let sick = svc
        .clone()
        .with_health(Health::Unhealthy)
        .with_weight(70_000);
    registry.update(&sick).await.unwrap();
    let got = registry.get_service("rt-1").await.unwrap();
    assert_eq!((got.health, got.weight), (Health::Unhealthy, 70_000));
    assert_eq!(
        agent.check_status("service:rt-1").as_deref(),
        Some("warning"),
        "never critical"
    );
    let healthy = svc.clone().with_health(Health::Healthy);
    registry.update(&healthy).await.unwrap();
    assert_eq!(
        agent.check_status("service:rt-1").as_deref(),
        Some("passing")
    );
    assert_eq!(
        registry.get_service("rt-1").await.unwrap().health,
        Health::Healthy
    );
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_beyond_consul_limits_is_refused_before_any_request() {
    let agent = fake().await;
    let registry = connect(fast_config(&agent)).await;
    let mut svc = inst("big", "big-1", 80);
    for i in 0..57 {
        svc.metadata.insert(format!("k{i}"), "v".into());
    }
    let err = registry.register(&svc).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInstance(m) if m.contains("56")),
        "{err}"
    );
    let long = inst("big", "big-1", 80).with_metadata("k", "x".repeat(600));
    assert!(matches!(
        registry.register(&long).await,
        Err(Error::InvalidInstance(_))
    ));
    assert_eq!(agent.count("PUT", "/v1/agent/service/register"), 0);
    let ok = inst("big", "big-1", 80).with_metadata("k", "x".repeat(512));
    registry.register(&ok).await.unwrap();
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_are_size_limited() {
    let agent = fake().await;
    for i in 0..40 {
        agent.add_remote_service(
            "node-b",
            "10.0.0.2",
            json!({"ID": format!("wide-{i}"), "Service": "wide", "Port": 80}),
            "passing",
        );
    }
    let registry = connect(fast_config(&agent).with_max_response_bytes(8 * 1024)).await;
    match registry.list_instances("wide").await {
        Err(Error::BodyTooLarge { limit }) => assert_eq!(limit, 8 * 1024),
        other => panic!("expected BodyTooLarge, got {other:?}"),
    }
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_registry_watch_sees_services_registered_by_other_processes() {
    let agent = fake().await;
    let observer = connect(fast_config(&agent)).await;
    let writer = connect(fast_config(&agent)).await;
    let mut watch = observer.watch().await.unwrap();
    match next(&mut watch, Duration::from_secs(5)).await {
        Some(WatchEvent::Snapshot {
            reason: SnapshotReason::Initial,
            services,
        }) => {
            assert!(services.iter().all(|s| s.name == "consul"), "{services:?}")
        }
        other => panic!("{other:?}"),
    }
    // The observer learns the new name from its catalog blocking query, not from a local write.
    writer
        .register(&inst("elsewhere", "elsewhere-1", 80))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next(&mut watch, Duration::from_secs(8)).await {
            Some(WatchEvent::Change(ev)) if ev.service.name == "elsewhere" => {
                seen.push(ev.kind);
                if ev.kind == ServiceEventType::Created {
                    writer.deregister("elsewhere-1").await.unwrap();
                }
            }
            Some(WatchEvent::Change(_)) => {}
            other => panic!("expected changes of `elsewhere`, got {other:?} after {seen:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![ServiceEventType::Created, ServiceEventType::Deleted]
    );
    writer.close().await.unwrap();
    observer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_watch_stops_its_blocking_queries() {
    let agent = fake().await;
    let registry = connect(fast_config(&agent).with_watch_wait(Duration::from_millis(200))).await;
    let mut watch = registry.watch_service("dropme").await.unwrap();
    assert!(next(&mut watch, Duration::from_secs(5)).await.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        agent.count("GET", "/v1/health/service/dropme?") >= 2,
        "the watch polls while alive"
    );
    drop(watch);
    tokio::time::sleep(Duration::from_millis(300)).await; // an in-flight query may finish
    let after_drop = agent.count("GET", "/v1/health/service/dropme?");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        agent.count("GET", "/v1/health/service/dropme?"),
        after_drop,
        "no blocking queries after the stream is dropped"
    );
    registry.close().await.unwrap();
}
