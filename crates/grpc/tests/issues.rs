//! The problems of tonic's balance channel, each reproduced against this channel: real gRPC
//! servers (tonic-health's server, or the raw HTTP/2 responder of `common`) on loopback
//! ports, registered in a `MemoryRegistry`, found with `CachedDiscovery`.
//!
//! The issues: hyperium/tonic #643 and #1552 (a dead endpoint keeps getting requests, errors
//! do not name it), #1147 (lazy connections keep failing after the server starts), #1581
//! (discovery changes not applied between infrequent requests), #1476 (no per-endpoint TLS in
//! balance channels), influxdata/influxdb_iox #6508 (an endpoint whose connection failed once
//! is never used again).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    check, dead_port, health_server_on, instance, responder, responder_on, setup, wait_until, Mode,
};
use tokio::net::TcpListener;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use waypost_balancer::{ConsistentHash, RoundRobin};
use waypost_core_types::{ServiceDiscovery, ServiceRegistry};
use waypost_grpc::{Channel, HashKey, RetryPolicy};

async fn health_server() -> (
    u16,
    tonic_health::server::HealthReporter,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (reporter, task) = health_server_on(listener).await;
    (port, reporter, task)
}

/// (a) One of three instances is dead from the start (registered, its port closed): 1,000
/// unary calls, 32 at a time, and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_dead_instance_of_three_costs_no_call() {
    let (p1, _r1, s1) = health_server().await;
    let (p2, _r2, s2) = health_server().await;
    let dead = dead_port().await;
    let (_r, d) = setup(
        &[
            instance("live-1", p1),
            instance("dead", dead),
            instance("live-2", p2),
        ],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let channel = waypost_grpc::channel(d, "greeter").expect("channel");
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (channel, failures) = (channel.clone(), failures.clone());
        tasks.spawn(async move {
            let mut client = HealthClient::new(channel);
            for _ in 0..1000 / 32 + 1 {
                if let Err(e) = client.check(check()).await {
                    eprintln!("{e}");
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert_eq!(channel.connected_instances(), ["live-1", "live-2"]);
    s1.abort();
    s2.abort();
}

/// (b) An instance killed under load: the calls that fail are the ones running on it at the
/// kill, at most; with the method retryable, none fails.
#[tokio::test]
async fn b_an_instance_killed_mid_load_fails_only_its_calls_in_flight() {
    for retryable in [false, true] {
        let servers: Vec<_> = [0, 1, 2]
            .iter()
            .map(|_| responder(Mode::Slow(Duration::from_millis(30))))
            .collect();
        let mut servers = futures_join(servers).await;
        let ids = ["k-0", "k-1", "k-2"];
        let instances: Vec<_> = servers
            .iter()
            .zip(ids)
            .map(|(s, id)| instance(id, s.addr.port()))
            .collect();
        let (_r, d) = setup(&instances, Arc::new(RoundRobin::new())).await;
        let mut builder = Channel::builder(d, "greeter");
        if retryable {
            builder = builder.retry_method(
                "grpc.health.v1.Health",
                "Check",
                RetryPolicy::new(3).with_backoff(
                    Duration::from_millis(1),
                    Duration::from_millis(5),
                    2.0,
                ),
            );
        }
        let channel = builder.build().expect("channel");
        let hold = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let messages = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let (channel, hold, stop) = (channel.clone(), hold.clone(), stop.clone());
            let (ok, failed, messages) = (ok.clone(), failed.clone(), messages.clone());
            tasks.spawn(async move {
                let mut client = HealthClient::new(channel);
                while !stop.load(Ordering::SeqCst) {
                    if hold.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    match client.check(check()).await {
                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            messages.lock().push(e.message().to_owned());
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            });
        }
        wait_until("calls ran", 10, || ok.load(Ordering::SeqCst) >= 60).await;
        // No call starts while the victim is killed, so that the calls running on it are
        // known; the others keep running.
        hold.store(true, Ordering::SeqCst);
        wait_until("a call runs on the victim", 5, || {
            channel.in_flight("k-1") > 0
        })
        .await;
        let in_flight = channel.in_flight("k-1");
        let victim = servers.remove(1);
        drop(victim);
        tokio::time::sleep(Duration::from_millis(50)).await;
        hold.store(false, Ordering::SeqCst);
        let after = ok.load(Ordering::SeqCst);
        wait_until("calls ran after the kill", 10, || {
            ok.load(Ordering::SeqCst) >= after + 60
        })
        .await;
        stop.store(true, Ordering::SeqCst);
        while tasks.join_next().await.is_some() {}
        let failed = failed.load(Ordering::SeqCst);
        if retryable {
            assert_eq!(failed, 0, "{:?}", messages.lock());
        } else {
            assert!(failed >= 1, "the calls running on the victim were cut");
            assert!(
                failed <= in_flight,
                "{failed} failures, {in_flight} calls in flight on the victim: {:?}",
                messages.lock()
            );
            for m in messages.lock().iter() {
                assert!(m.contains("instance `k-1`"), "{m}");
            }
        }
        assert!(servers.iter().all(|s| s.calls.load(Ordering::SeqCst) > 20));
    }
}

async fn futures_join<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await);
    }
    out
}

/// (c) An instance that starts after the first failed connection is used by the next call.
#[tokio::test]
async fn c_an_instance_started_after_a_failed_connect_is_used_by_the_next_call() {
    let port = dead_port().await;
    let (_r, d) = setup(&[instance("late", port)], Arc::new(RoundRobin::new())).await;
    let mut client = HealthClient::new(waypost_grpc::channel(d, "greeter").expect("channel"));
    let err = client.check(check()).await.expect_err("not started");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("instance `late`"),
        "{}",
        err.message()
    );
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind");
    let (_reporter, server) = health_server_on(listener).await;
    let reply = client.check(check()).await.expect("the next call");
    assert_eq!(reply.into_inner().status, 1);
    server.abort();
}

/// (d) A hundred discovery updates between two calls an hour apart (paused clock): the second
/// call reaches only live instances, at once (no failover allowed).
#[tokio::test(start_paused = true)]
async fn d_discovery_updates_between_infrequent_calls_are_applied() {
    let first = responder(Mode::Serving).await;
    let (r, d) = setup(
        &[instance("first", first.addr.port())],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let channel = Channel::builder(d.clone(), "greeter")
        .max_failovers(0)
        .build()
        .expect("channel");
    let mut client = HealthClient::new(channel.clone());
    client.check(check()).await.expect("first call");

    let second = responder(Mode::Serving).await;
    let third = responder(Mode::Serving).await;
    let dead = dead_port().await;
    for n in 0..96 {
        let id = format!("gone-{n}");
        if n % 2 == 0 {
            r.register(&instance(&id, dead)).await.expect("register");
        } else {
            r.deregister(&format!("gone-{}", n - 1))
                .await
                .expect("deregister");
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    r.register(&instance("second", second.addr.port()))
        .await
        .expect("register");
    r.register(&instance("third", third.addr.port()))
        .await
        .expect("register");
    r.deregister("first").await.expect("deregister");
    drop(first);
    r.register(&instance("third", third.addr.port()).with_metadata("zone", "b"))
        .await
        .expect("update");
    tokio::time::sleep(Duration::from_secs(3600)).await;

    let mut live: Vec<_> = d
        .discover("greeter")
        .await
        .expect("discover")
        .iter()
        .map(|i| i.id.clone())
        .collect();
    live.sort();
    assert_eq!(live, ["second", "third"]);
    for _ in 0..4 {
        client.check(check()).await.expect("an hour later");
    }
    assert_eq!(second.calls.load(Ordering::SeqCst), 2);
    assert_eq!(third.calls.load(Ordering::SeqCst), 2);
    assert_eq!(channel.connected_instances(), ["second", "third"]);
}

/// (e) A TLS instance (tonic's server with a self-signed certificate for 127.0.0.1) and a
/// plaintext one behind the same service name; the channel trusts that certificate.
#[tokio::test]
async fn e_tls_and_plaintext_instances_of_one_service() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
    let identity =
        tonic::transport::Identity::from_pem(cert.cert.pem(), cert.signing_key.serialize_pem());
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tls_port = listener.local_addr().expect("addr").port();
    let tls_server = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .expect("server TLS")
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let plain = responder(Mode::Serving).await;
    let (_r, d) = setup(
        &[
            instance("tls", tls_port).with_metadata("tls", "true"),
            instance("plain", plain.addr.port()),
        ],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let channel = Channel::builder(d.clone(), "greeter")
        .root_certificates(roots)
        .no_outlier_detection()
        .build()
        .expect("channel");
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..10 {
        client.check(check()).await.expect("check");
    }
    assert_eq!(
        plain.calls.load(Ordering::SeqCst),
        5,
        "the other 5 went over TLS"
    );
    assert_eq!(channel.connected_instances(), ["plain", "tls"]);

    // Without the root, the TLS instance fails its handshake and is failed over, naming it.
    let untrusting = Channel::builder(d, "greeter")
        .no_outlier_detection()
        .max_failovers(0)
        .build()
        .expect("channel");
    let mut client = HealthClient::new(untrusting);
    let mut errors = Vec::new();
    for _ in 0..2 {
        if let Err(e) = client.check(check()).await {
            errors.push(e);
        }
    }
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].message().contains("instance `tls`") && errors[0].message().contains("TLS"),
        "{}",
        errors[0].message()
    );
    tls_server.abort();
}

/// (f) An instance killed and started again on the same port is used again.
#[tokio::test]
async fn f_an_instance_back_on_its_port_is_used_again() {
    let other = responder(Mode::Serving).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let phoenix = responder_on(listener, Mode::Serving).await;
    let (_r, d) = setup(
        &[
            instance("phoenix", port),
            instance("other", other.addr.port()),
        ],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let channel = waypost_grpc::channel(d, "greeter").expect("channel");
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..4 {
        client.check(check()).await.expect("check");
    }
    assert_eq!(phoenix.calls.load(Ordering::SeqCst), 2);
    drop(phoenix);
    for _ in 0..4 {
        client.check(check()).await.expect("failed over");
    }
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind");
    let back = responder_on(listener, Mode::Serving).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while back.calls.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "phoenix not used again"
        );
        client.check(check()).await.expect("check");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Back in the rotation: it gets its share again.
    let before = back.calls.load(Ordering::SeqCst);
    for _ in 0..10 {
        client.check(check()).await.expect("check");
    }
    assert_eq!(back.calls.load(Ordering::SeqCst) - before, 5);
}

/// (g) Consistent hashing sends a key to the same instance on every call, whether the key is
/// in a header or a `HashKey` extension, and different keys spread.
#[tokio::test]
async fn g_consistent_hash_keeps_a_key_on_one_instance() {
    let servers = futures_join(vec![
        responder(Mode::Serving),
        responder(Mode::Serving),
        responder(Mode::Serving),
    ])
    .await;
    let instances: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(n, s)| instance(&format!("h-{n}"), s.addr.port()))
        .collect();
    let (_r, d) = setup(&instances, Arc::new(ConsistentHash::new())).await;
    let channel = Channel::builder(d, "greeter")
        .hash_key_header("x-user-id")
        .build()
        .expect("channel");
    let mut client = HealthClient::new(channel);
    let counts = |servers: &[common::Responder]| -> Vec<usize> {
        servers
            .iter()
            .map(|s| s.calls.load(Ordering::SeqCst))
            .collect()
    };
    let mut targets = std::collections::HashSet::new();
    for key in 0..12 {
        let key = format!("user-{key}");
        let mut by_mode = Vec::new();
        for by_header in [true, false] {
            let before = counts(&servers);
            for _ in 0..5 {
                let mut req = tonic::Request::new(check());
                if by_header {
                    req.metadata_mut()
                        .insert("x-user-id", key.parse().expect("value"));
                } else {
                    req.extensions_mut().insert(HashKey::from(key.as_str()));
                }
                client.check(req).await.expect("check");
            }
            let grew: Vec<usize> = counts(&servers)
                .iter()
                .zip(before)
                .map(|(a, b)| a - b)
                .collect();
            let target = grew.iter().position(|n| *n == 5);
            assert!(target.is_some(), "{key} spread: {grew:?}");
            targets.insert(target);
            by_mode.push(target);
        }
        assert_eq!(by_mode[0], by_mode[1], "{key}: header and extension agree");
    }
    assert!(targets.len() > 1, "twelve keys all on one instance");
}
