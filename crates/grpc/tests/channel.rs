//! The channel against local gRPC servers registered in a `MemoryRegistry` and discovered with
//! `CachedDiscovery`: tonic-health's generated client calls tonic-health's server, and a raw
//! HTTP/2 responder (for statuses and delays on demand, and for counting).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{check, dead_port, instance, responder, responder_on, setup, Mode};
use tokio::net::TcpListener;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use waypost_balancer::{ConsistentHash, RoundRobin};
use waypost_client::{OutlierConfig, RetryBudget};
use waypost_core_types::{CircuitState, ServiceRegistry};
use waypost_grpc::{Channel, RetryPolicy};

#[tokio::test]
async fn tonic_health_client_reaches_tonic_health_servers() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (_r, d) = setup(&[instance("g-1", addr.port())], Arc::new(RoundRobin::new())).await;
    let mut client = HealthClient::new(waypost_grpc::channel(d, "greeter").expect("channel"));
    let reply = client.check(check()).await.expect("check").into_inner();
    assert_eq!(reply.status, 1, "SERVING");
    let err = client
        .check(HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), Code::NotFound);
    server.abort();
}

#[tokio::test]
async fn round_robin_spreads_and_consistent_hash_sticks() {
    let servers = [
        responder(Mode::Serving).await,
        responder(Mode::Serving).await,
        responder(Mode::Serving).await,
    ];
    let instances: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(n, s)| instance(&format!("g-{n}"), s.addr.port()))
        .collect();
    let (_r, d) = setup(&instances, Arc::new(RoundRobin::new())).await;
    let channel = waypost_grpc::channel(d, "greeter").expect("channel");
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..9 {
        client.check(check()).await.expect("check");
    }
    let counts: Vec<_> = servers
        .iter()
        .map(|s| s.calls.load(Ordering::SeqCst))
        .collect();
    assert_eq!(counts, [3, 3, 3]);
    assert_eq!(channel.connected_instances(), ["g-0", "g-1", "g-2"]);

    let (_r, d) = setup(&instances, Arc::new(ConsistentHash::new())).await;
    let channel = Channel::builder(d, "greeter")
        .hash_key_header("x-user-id")
        .build()
        .expect("channel");
    let mut client = HealthClient::new(channel);
    let before: Vec<_> = servers
        .iter()
        .map(|s| s.calls.load(Ordering::SeqCst))
        .collect();
    for _ in 0..12 {
        let mut req = tonic::Request::new(check());
        req.metadata_mut()
            .insert("x-user-id", "user-42".parse().expect("value"));
        client.check(req).await.expect("check");
    }
    let grew: Vec<_> = servers
        .iter()
        .zip(before)
        .map(|(s, b)| s.calls.load(Ordering::SeqCst) - b)
        .collect();
    assert_eq!(grew.iter().filter(|n| **n == 12).count(), 1, "{grew:?}");
    assert_eq!(grew.iter().sum::<usize>(), 12);
}

#[tokio::test]
async fn a_dead_instance_is_failed_over_and_ejected() {
    let live = responder(Mode::Serving).await;
    let dead = dead_port().await;
    let (_r, d) = setup(
        &[instance("live", live.addr.port()), instance("dead", dead)],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let channel = Channel::builder(d, "greeter")
        .outlier_detection(OutlierConfig::new(2, Duration::from_secs(60)))
        // Tried again at once, so that its failures count up to an ejection.
        .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(1))
        .build()
        .expect("channel");
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..10 {
        client
            .check(check())
            .await
            .expect("the caller sees no error");
    }
    assert_eq!(live.calls.load(Ordering::SeqCst), 10);
    assert_eq!(channel.instance_state("dead"), CircuitState::Open);
}

#[tokio::test]
async fn an_instance_that_starts_after_registration_is_used_once_up() {
    let listener_port = dead_port().await;
    let (_r, d) = setup(
        &[instance("late", listener_port)],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let channel = Channel::builder(d, "greeter")
        .reconnect_backoff(Duration::from_secs(30), Duration::from_secs(30))
        .no_outlier_detection()
        .build()
        .expect("channel");
    let mut client = HealthClient::new(channel);
    let err = client
        .check(check())
        .await
        .expect_err("nothing listens yet");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message()
            .contains("service `greeter`, instance `late` (127.0.0.1:"),
        "{}",
        err.message()
    );
    let listener = TcpListener::bind(("127.0.0.1", listener_port))
        .await
        .expect("rebind");
    let server = responder_on(listener, Mode::Serving).await;
    // Within the reconnect backoff, but the only instance: tried at once, and every call works.
    for _ in 0..5 {
        client.check(check()).await.expect("up now");
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_removed_instance_gets_no_calls_and_its_connection_closes() {
    let a = responder(Mode::Serving).await;
    let b = responder(Mode::Serving).await;
    let (r, d) = setup(
        &[instance("a", a.addr.port()), instance("b", b.addr.port())],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let channel = Channel::builder(d, "greeter")
        .sweep_interval(Duration::from_millis(50))
        .build()
        .expect("channel");
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..4 {
        client.check(check()).await.expect("check");
    }
    assert_eq!(b.open.load(Ordering::SeqCst), 1);
    r.deregister("b").await.expect("deregister");
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.open.load(Ordering::SeqCst) != 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "b's connection still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = b.calls.load(Ordering::SeqCst);
    for _ in 0..6 {
        client.check(check()).await.expect("check");
    }
    assert_eq!(b.calls.load(Ordering::SeqCst), before);
    assert_eq!(channel.connected_instances(), ["a"]);
}

#[tokio::test]
async fn a_killed_server_is_failed_over_and_the_last_error_names_the_instance() {
    let a = responder(Mode::Serving).await;
    let b = responder(Mode::Serving).await;
    let (_r, d) = setup(
        &[instance("a", a.addr.port()), instance("b", b.addr.port())],
        Arc::new(RoundRobin::new()),
    )
    .await;
    // A request in flight when its server dies may have been received: only a retryable
    // method is sent again.
    let channel = Channel::builder(d, "greeter")
        .retry_method(
            "grpc.health.v1.Health",
            "Check",
            RetryPolicy::new(3).with_backoff(
                Duration::from_millis(1),
                Duration::from_millis(5),
                2.0,
            ),
        )
        .no_outlier_detection()
        .build()
        .expect("channel");
    let mut client = HealthClient::new(channel);
    for _ in 0..4 {
        client.check(check()).await.expect("check");
    }
    drop(a);
    for _ in 0..6 {
        client.check(check()).await.expect("failed over to b");
    }
    drop(b);
    let err = client.check(check()).await.expect_err("all down");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().starts_with("service `greeter`, instance `"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn unavailable_is_retried_for_retryable_methods_only_and_within_the_budget() {
    let down = responder(Mode::Unavailable).await;
    let up = responder(Mode::Serving).await;
    let instances = [
        instance("down", down.addr.port()),
        instance("up", up.addr.port()),
    ];
    let policy =
        RetryPolicy::new(3).with_backoff(Duration::from_millis(1), Duration::from_millis(5), 2.0);

    // Not retryable: the status comes back.
    let (_r, d) = setup(&instances, Arc::new(RoundRobin::new())).await;
    let mut plain = HealthClient::new(
        Channel::builder(d, "greeter")
            .no_outlier_detection()
            .build()
            .expect("channel"),
    );
    let mut unavailable = 0;
    for _ in 0..4 {
        if let Err(s) = plain.check(check()).await {
            assert_eq!(s.code(), Code::Unavailable);
            unavailable += 1;
        }
    }
    assert_eq!(unavailable, 2, "round robin sends half to `down`");

    // Retryable: every call succeeds.
    let (_r, d) = setup(&instances, Arc::new(RoundRobin::new())).await;
    let mut retried = HealthClient::new(
        Channel::builder(d, "greeter")
            .retry_method("grpc.health.v1.Health", "Check", policy.clone())
            .no_outlier_detection()
            .build()
            .expect("channel"),
    );
    for _ in 0..4 {
        retried.check(check()).await.expect("retried on `up`");
    }

    // Only `down` and an empty budget: no retry.
    let (_r, d) = setup(&instances[..1], Arc::new(RoundRobin::new())).await;
    let budget = Arc::new(RetryBudget::new(Duration::from_secs(10), 0, 0.0));
    let mut broke = HealthClient::new(
        Channel::builder(d, "greeter")
            .retry_service("grpc.health.v1.Health", policy)
            .retry_budget(budget)
            .no_outlier_detection()
            .build()
            .expect("channel"),
    );
    let before = down.calls.load(Ordering::SeqCst);
    let err = broke.check(check()).await.expect_err("no budget");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        down.calls.load(Ordering::SeqCst) - before,
        1,
        "one attempt, no retry"
    );
}

#[tokio::test]
async fn the_callers_deadline_is_sent_and_bounds_the_call() {
    let slow = responder(Mode::Slow(Duration::from_secs(5))).await;
    let (_r, d) = setup(
        &[instance("slow", slow.addr.port())],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let mut client = HealthClient::new(waypost_grpc::channel(d, "greeter").expect("channel"));
    let mut req = tonic::Request::new(check());
    req.set_timeout(Duration::from_millis(100));
    let t0 = std::time::Instant::now();
    let err = client.check(req).await.expect_err("too slow");
    let took = t0.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        err.message().contains("service `greeter`, instance `slow`"),
        "{}",
        err.message()
    );
    let seen = slow.timeouts.lock().clone();
    assert_eq!(seen.len(), 1);
    let sent = &seen[0];
    assert!(
        sent.ends_with('u') || sent.ends_with('n') || sent.ends_with('m'),
        "{sent}"
    );
}

#[tokio::test]
async fn a_removed_instance_finishes_its_calls_in_flight_then_its_connection_closes() {
    let slow = responder(Mode::Slow(Duration::from_millis(700))).await;
    let fast = responder(Mode::Serving).await;
    let (r, d) = setup(
        &[instance("slow", slow.addr.port())],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let channel = Channel::builder(d.clone(), "greeter")
        .sweep_interval(Duration::from_millis(20))
        .build()
        .expect("channel");
    let mut client = HealthClient::new(channel.clone());
    let in_flight = tokio::spawn(async move { client.check(check()).await });
    common::wait_until("the slow call reached its server", 5, || {
        slow.running.load(Ordering::SeqCst) == 1
    })
    .await;
    r.register(&instance("fast", fast.addr.port()))
        .await
        .expect("register");
    r.deregister("slow").await.expect("deregister");
    common::wait_discovered(&d, &["fast"]).await;
    // Swept: the connection is draining, not closed.
    common::wait_until("slow is draining", 5, || {
        channel.draining_instances() == ["slow"]
    })
    .await;
    assert_eq!(slow.open.load(Ordering::SeqCst), 1);

    let mut client = HealthClient::new(channel.clone());
    client.check(check()).await.expect("a new call");
    assert_eq!(
        fast.calls.load(Ordering::SeqCst),
        1,
        "the new call went to fast"
    );
    assert_eq!(slow.calls.load(Ordering::SeqCst), 1);

    let reply = in_flight
        .await
        .expect("task")
        .expect("the call in flight on the removed instance completes");
    assert_eq!(reply.into_inner().status, 1, "SERVING");
    common::wait_until("slow's connection closed", 5, || {
        slow.open.load(Ordering::SeqCst) == 0
    })
    .await;
    assert!(channel.draining_instances().is_empty());
    assert_eq!(channel.connected_instances(), ["fast"]);
}

#[tokio::test]
async fn a_draining_connection_is_closed_at_the_drain_bound() {
    let slow = responder(Mode::Slow(Duration::from_secs(30))).await;
    let (r, d) = setup(
        &[instance("slow", slow.addr.port())],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let channel = Channel::builder(d.clone(), "greeter")
        .sweep_interval(Duration::from_millis(20))
        .drain_timeout(Duration::from_millis(200))
        .build()
        .expect("channel");
    let mut client = HealthClient::new(channel.clone());
    let in_flight = tokio::spawn(async move { client.check(check()).await });
    common::wait_until("the call reached its server", 5, || {
        slow.running.load(Ordering::SeqCst) == 1
    })
    .await;
    let t0 = std::time::Instant::now();
    r.deregister("slow").await.expect("deregister");
    let err = in_flight
        .await
        .expect("task")
        .expect_err("cut at the drain bound");
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .starts_with("service `greeter`, instance `slow` (127.0.0.1:"),
        "{}",
        err.message()
    );
    common::wait_until("slow's connection closed", 5, || {
        slow.open.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn a_status_passed_on_after_the_retries_names_service_and_instance() {
    let down = responder(Mode::Unavailable).await;
    let (_r, d) = setup(
        &[instance("down", down.addr.port())],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let policy =
        RetryPolicy::new(2).with_backoff(Duration::from_millis(1), Duration::from_millis(5), 2.0);
    let mut client = HealthClient::new(
        Channel::builder(d.clone(), "greeter")
            .retry_all(policy)
            .no_retry_budget()
            .no_outlier_detection()
            .build()
            .expect("channel"),
    );
    let err = client.check(check()).await.expect_err("down");
    assert_eq!(down.calls.load(Ordering::SeqCst), 2, "retried once");
    assert_eq!(err.code(), Code::Unavailable);
    let expected = format!(
        "down (service `greeter`, instance `down` (127.0.0.1:{}))",
        down.addr.port()
    );
    assert_eq!(err.message(), expected);

    // Not retryable: the same.
    let mut client = HealthClient::new(waypost_grpc::channel(d, "greeter").expect("channel"));
    let err = client.check(check()).await.expect_err("down");
    assert_eq!(err.message(), expected);
}
