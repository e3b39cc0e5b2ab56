//! Timing of the keep-alive task under tokio's paused clock: minutes of TTL heartbeats and
//! outage backoff run in milliseconds of real time, against the fake agent on loopback.

mod common;

use std::time::Duration;

use waypost_core_types::{Health, RegistryState, ServiceInfo, ServiceRegistry};

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn heartbeats_run_at_a_third_of_the_ttl() {
    let agent = common::fake().await;
    let registry = common::connect(
        common::fast_config(&agent)
            .with_ttl(Duration::from_secs(30))
            .with_request_timeout(Duration::from_secs(600)),
    )
    .await;
    registry
        .register(&ServiceInfo::new("slow-1", "slow", "127.0.0.1", 80).with_health(Health::Healthy))
        .await
        .unwrap();
    let before = agent.count("PUT", "/v1/agent/check/pass/service%3Aslow-1");
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(95)).await;
    let passes = agent.count("PUT", "/v1/agent/check/pass/service%3Aslow-1") - before;
    assert!(started.elapsed() >= Duration::from_secs(95));
    assert!(
        (8..=10).contains(&passes),
        "{passes} passes in 95 s with a 30 s TTL (every 10 s)"
    );
    assert_eq!(
        agent.check_status("service:slow-1").as_deref(),
        Some("passing")
    );
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_idle_keep_alive_waits_for_a_registration_not_a_timer() {
    let agent = common::fake().await;
    let registry = common::connect(
        common::fast_config(&agent)
            .with_ttl(Duration::from_secs(3))
            .with_request_timeout(Duration::from_secs(600)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        agent.count("PUT", "/v1/agent/check/"),
        0,
        "nothing registered, nothing to pass"
    );
    registry
        .register(&ServiceInfo::new("late-1", "late", "127.0.0.1", 80).with_health(Health::Healthy))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let passes = agent.count("PUT", "/v1/agent/check/pass/service%3Alate-1");
    assert!(
        (3..=4).contains(&passes),
        "{passes} passes in 3.5 s with a 3 s TTL (every 1 s) right after registering"
    );
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn outage_backoff_is_capped_and_retries_forever() {
    let agent = common::fake().await;
    let registry = common::connect(
        common::fast_config(&agent)
            .with_ttl(Duration::from_secs(3))
            .with_request_timeout(Duration::from_secs(600))
            .with_retry_initial_backoff(Duration::from_secs(1))
            .with_retry_max_backoff(Duration::from_secs(30)),
    )
    .await;
    registry
        .register(&ServiceInfo::new("out-1", "out", "127.0.0.1", 80).with_health(Health::Healthy))
        .await
        .unwrap();
    agent.fail_next(u64::MAX, 500, "No cluster leader", "/v1/agent/check/");
    let before = agent.count("PUT", "/v1/agent/check/");
    // One hour of outage: delays grow 1, 2, 4, 8, 16 s, then stay in [15, 30] s.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let tries = agent.count("PUT", "/v1/agent/check/") - before;
    assert!(
        (115..=245).contains(&tries),
        "{tries} attempts in an hour (cap 30 s, jitter ≥ 15 s)"
    );
    match registry.state() {
        RegistryState::Recovering { attempts, .. } => assert!(attempts as usize + 1 >= tries),
        other => panic!("expected Recovering, got {other:?}"),
    }
    agent.clear_failures();
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(
        registry.state().is_connected(),
        "recovers on the next attempt"
    );
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn dead_instance_is_reaped_on_consuls_real_schedule() {
    use waypost_core_types::{ServiceEventType, WatchEvent};
    // Consul's defaults: DeregisterCriticalServiceAfter floor 1 min, reaper every 30 s.
    let agent = common::fake().await;
    let observer =
        common::connect(common::fast_config(&agent).with_request_timeout(Duration::from_secs(600)))
            .await;
    let mut watch = observer.watch_service("doomed").await.unwrap();
    assert!(common::next(&mut watch, Duration::from_secs(5))
        .await
        .is_some());
    let dying = common::connect(
        common::fast_config(&agent)
            .with_ttl(Duration::from_secs(30))
            .with_request_timeout(Duration::from_secs(600)),
    )
    .await;
    dying
        .register(
            &ServiceInfo::new("doomed-1", "doomed", "127.0.0.1", 80).with_health(Health::Healthy),
        )
        .await
        .unwrap();
    // The process "dies": no more heartbeats, and its deregistration never reaches the agent
    // (a registry dropped on a live runtime would deregister at once).
    agent.fail_next(
        u64::MAX,
        500,
        "unreachable",
        "/v1/agent/service/deregister/",
    );
    let died = tokio::time::Instant::now();
    drop(dying);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match common::next(&mut watch, Duration::from_secs(300)).await {
            Some(WatchEvent::Change(ev)) => seen.push((ev.kind, ev.service.health, died.elapsed())),
            other => panic!("{other:?} after {seen:?}"),
        }
    }
    assert_eq!(seen[0].0, ServiceEventType::Created);
    let (kind, health, at) = seen[1];
    assert_eq!(
        (kind, health),
        (ServiceEventType::Updated, Health::Unhealthy)
    );
    assert!(
        at >= Duration::from_secs(29) && at <= Duration::from_secs(33),
        "critical at {at:?}"
    );
    let (kind, _, at) = seen[2];
    assert_eq!(kind, ServiceEventType::Deleted);
    // TTL 30 s + max(DCSA 60 s, 1 min) + up to one 30 s reaper period.
    assert!(
        at >= Duration::from_secs(90) && at <= Duration::from_secs(125),
        "reaped at {at:?}"
    );
    observer.close().await.unwrap();
}
