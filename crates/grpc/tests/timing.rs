//! Reconnect backoff and outlier ejection timing, under tokio's paused clock.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{check, instance, responder, setup, Mode};
use tokio::net::TcpListener;
use tokio::time::{advance, Instant};
use tonic_health::pb::health_client::HealthClient;
use waypost_balancer::RoundRobin;
use waypost_client::OutlierConfig;
use waypost_core_types::CircuitState;
use waypost_grpc::Channel;

/// A port that accepts TCP connections and closes them at once (the HTTP/2 handshake fails),
/// counting them.
async fn refuser() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let a = accepts.clone();
    let task = tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            drop(io);
        }
    });
    (port, accepts, task)
}

#[tokio::test(start_paused = true)]
async fn a_failed_instance_is_tried_again_after_a_growing_backoff() {
    let good = responder(Mode::Serving).await;
    let (port, accepts, task) = refuser().await;
    let (_r, d) = setup(
        &[instance("good", good.addr.port()), instance("flaky", port)],
        Arc::new(RoundRobin::new()),
    )
    .await;
    // Backoff delays are jittered into the upper half: [0.5 s, 1 s], then [1 s, 2 s], …
    let channel = Channel::builder(d, "greeter")
        .reconnect_backoff(Duration::from_secs(1), Duration::from_secs(8))
        .no_outlier_detection()
        .sweep_interval(Duration::from_secs(24 * 3600))
        .build()
        .expect("channel");
    let mut client = HealthClient::new(channel);
    let calls = |client: &mut HealthClient<Channel>, n: usize| {
        let mut client = client.clone();
        async move {
            for _ in 0..n {
                client.check(check()).await.expect("failed over to good");
            }
        }
    };
    calls(&mut client, 2).await;
    assert_eq!(accepts.load(Ordering::SeqCst), 1, "flaky tried once");
    let t0 = Instant::now();

    advance(Duration::from_millis(450)).await;
    calls(&mut client, 4).await;
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        1,
        "within the first backoff"
    );

    advance(Duration::from_millis(600)).await; // t0 + 1.05 s
    calls(&mut client, 2).await;
    assert_eq!(accepts.load(Ordering::SeqCst), 2, "tried again after it");

    advance(Duration::from_millis(950)).await;
    calls(&mut client, 4).await;
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        2,
        "the second backoff is longer"
    );

    advance(Duration::from_millis(1100)).await; // t1 + 2.05 s
    calls(&mut client, 2).await;
    assert_eq!(accepts.load(Ordering::SeqCst), 3);

    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(3200),
        "the clock jumped: {took:?}"
    );
    assert_eq!(good.calls.load(Ordering::SeqCst), 14);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn an_ejected_instance_gets_one_probe_after_the_ejection_time() {
    let good = responder(Mode::Serving).await;
    let bad = responder(Mode::Unavailable).await;
    let (_r, d) = setup(
        &[
            instance("good", good.addr.port()),
            instance("bad", bad.addr.port()),
        ],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let channel = Channel::builder(d, "greeter")
        .outlier_detection(OutlierConfig::new(2, Duration::from_secs(10)))
        .sweep_interval(Duration::from_secs(24 * 3600))
        .build()
        .expect("channel");
    let mut client = HealthClient::new(channel.clone());
    let mut errors = 0;
    for _ in 0..4 {
        if client.check(check()).await.is_err() {
            errors += 1;
        }
    }
    assert_eq!(errors, 2);
    assert_eq!(bad.calls.load(Ordering::SeqCst), 2);
    assert_eq!(channel.instance_state("bad"), CircuitState::Open);
    let t0 = Instant::now();

    advance(Duration::from_millis(9_900)).await;
    for _ in 0..6 {
        client.check(check()).await.expect("only good is picked");
    }
    assert_eq!(bad.calls.load(Ordering::SeqCst), 2, "ejected for 10 s");

    advance(Duration::from_millis(200)).await;
    let mut errors = 0;
    for _ in 0..6 {
        if client.check(check()).await.is_err() {
            errors += 1;
        }
    }
    assert_eq!(bad.calls.load(Ordering::SeqCst), 3, "one probe");
    assert_eq!(errors, 1);
    assert_eq!(
        channel.instance_state("bad"),
        CircuitState::Open,
        "ejected again"
    );
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(10_500),
        "the clock jumped: {took:?}"
    );
}
