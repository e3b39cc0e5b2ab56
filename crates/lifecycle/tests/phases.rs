//! The announcer's phase order and timeouts, on the in-memory registry with tokio's paused
//! clock: drain delay, in-flight deadline, readiness, keep-alive, and a server that stops by
//! itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use waypost_core_types::{Error, Health, ServiceRegistry};
use waypost_lifecycle::{Announcer, Phase, Stop};
use waypost_registry_memory::MemoryRegistry;

const ADDR: &str = "10.0.0.5:8080";

/// Every phase the announcer entered, with the (paused) time it entered it.
fn record(mut phases: watch::Receiver<Phase>) -> tokio::task::JoinHandle<Vec<(Phase, Duration)>> {
    let start = Instant::now();
    tokio::spawn(async move {
        let mut seen = vec![(*phases.borrow_and_update(), start.elapsed())];
        while phases.changed().await.is_ok() {
            seen.push((*phases.borrow_and_update(), start.elapsed()));
        }
        seen
    })
}

fn announcer(registry: &MemoryRegistry, stop: oneshot::Receiver<()>) -> Announcer {
    Announcer::new(Arc::new(registry.clone()), "users").with_shutdown(async move {
        let _ = stop.await;
    })
}

/// A server that, once told to stop, finishes its in-flight work in `finish` (or never).
async fn server(
    stop: Stop,
    finish: Option<Duration>,
    stopped: Arc<AtomicBool>,
) -> std::io::Result<()> {
    stop.await;
    stopped.store(true, Ordering::SeqCst);
    match finish {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn deregister_then_drain_then_stop_accepting_then_close() {
    let registry = MemoryRegistry::new();
    let (tx, rx) = oneshot::channel();
    let a = announcer(&registry, rx)
        .with_drain_delay(Duration::from_secs(5))
        .with_advertise_addr(ADDR);
    let phases = record(a.phases());
    let stopped = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stopped);
    let run = tokio::spawn(a.serve(ADDR.parse().unwrap(), move |stop| {
        server(stop, Some(Duration::from_secs(2)), s)
    }));

    tokio::time::sleep(Duration::from_secs(60)).await;
    let listed = registry.list_instances("users").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].id.as_str(),
            listed[0].address.as_str(),
            listed[0].port
        ),
        ("users-10.0.0.5-8080", "10.0.0.5", 8080)
    );
    assert_eq!(listed[0].health, Health::Healthy);

    tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Draining: gone from the registry, still serving.
    assert!(registry.list_instances("users").await.unwrap().is_empty());
    assert!(
        !stopped.load(Ordering::SeqCst),
        "the server must keep serving while draining"
    );
    tokio::time::sleep(Duration::from_secs(4) + Duration::from_millis(10)).await;
    assert!(
        stopped.load(Ordering::SeqCst),
        "stop accepting after the drain delay"
    );

    run.await.unwrap().unwrap();
    assert!(
        matches!(registry.list_instances("users").await, Err(Error::Closed)),
        "the registry is closed"
    );
    let seen = phases.await.unwrap();
    // A watch shows the latest phase, so a phase that passes without waiting (deregistering
    // on the in-memory registry) may not be seen; what is seen only moves forward.
    let order: Vec<Phase> = seen.iter().map(|(p, _)| *p).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    for phase in [
        Phase::Serving,
        Phase::Draining,
        Phase::Stopping,
        Phase::Closing,
        Phase::Stopped,
    ] {
        assert!(order.contains(&phase), "{phase} missing from {order:?}");
    }
    let at = |phase| seen.iter().find(|(p, _)| *p == phase).unwrap().1;
    assert_eq!(
        at(Phase::Stopping) - at(Phase::Draining),
        Duration::from_secs(5)
    );
    assert_eq!(
        at(Phase::Closing) - at(Phase::Stopping),
        Duration::from_secs(2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_that_does_not_finish_is_stopped_at_the_deadline() {
    let registry = MemoryRegistry::new();
    let (tx, rx) = oneshot::channel();
    let a = announcer(&registry, rx)
        .with_drain_delay(Duration::from_secs(1))
        .with_stop_deadline(Duration::from_secs(3))
        .with_advertise_addr(ADDR);
    let stopped = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stopped);
    let run = tokio::spawn(a.serve(ADDR.parse().unwrap(), move |stop| server(stop, None, s)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    tx.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(4),
        "drain 1 s + deadline 3 s"
    );
    assert!(stopped.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn zero_drain_and_max_deadline() {
    let registry = MemoryRegistry::new();
    let (tx, rx) = oneshot::channel();
    let a = announcer(&registry, rx)
        .with_drain_delay(Duration::ZERO)
        .with_stop_deadline(Duration::MAX)
        .with_advertise_addr(ADDR);
    let stopped = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stopped);
    let run = tokio::spawn(a.serve(ADDR.parse().unwrap(), move |stop| {
        server(stop, Some(Duration::from_secs(3600)), s)
    }));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    tx.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3600),
        "no drain; the server takes its hour"
    );
}

/// With a readiness check: `Unhealthy` until it passes, then the health given by `with_health`
/// (`Healthy` when none is).
#[tokio::test(start_paused = true)]
async fn readiness_holds_the_instance_unhealthy_until_it_passes() {
    for (given, serving) in [
        (None, Health::Healthy),
        (Some(Health::Unknown), Health::Unknown),
    ] {
        let registry = MemoryRegistry::new();
        let (tx, rx) = oneshot::channel();
        let ready = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ready);
        let mut a = announcer(&registry, rx)
            .with_advertise_addr(ADDR)
            .with_readiness(Duration::from_millis(500), move || {
                let r = Arc::clone(&r);
                async move { r.load(Ordering::SeqCst) }
            });
        if let Some(health) = given {
            a = a.with_health(health);
        }
        let mut phases = a.phases();
        let stopped = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stopped);
        let run = tokio::spawn(a.serve(ADDR.parse().unwrap(), move |stop| {
            server(stop, Some(Duration::ZERO), s)
        }));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*phases.borrow_and_update(), Phase::WaitingReady);
        assert_eq!(
            registry.list_instances("users").await.unwrap()[0].health,
            Health::Unhealthy
        );
        ready.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(501)).await;
        assert_eq!(*phases.borrow_and_update(), Phase::Serving);
        assert_eq!(
            registry.list_instances("users").await.unwrap()[0].health,
            serving,
            "with_health({given:?})"
        );
        tx.send(()).unwrap();
        run.await.unwrap().unwrap();
    }
}

/// Without a readiness check: registered with the health given by `with_health` straight away.
#[tokio::test(start_paused = true)]
async fn with_health_is_the_health_registered_once_serving() {
    let registry = MemoryRegistry::new();
    let (tx, rx) = oneshot::channel();
    let a = announcer(&registry, rx)
        .with_advertise_addr(ADDR)
        .with_health(Health::Unknown)
        .with_drain_delay(Duration::ZERO);
    let mut phases = a.phases();
    let stopped = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stopped);
    let run = tokio::spawn(a.serve(ADDR.parse().unwrap(), move |stop| {
        server(stop, Some(Duration::ZERO), s)
    }));
    phases.wait_for(|p| *p == Phase::Serving).await.unwrap();
    assert_eq!(
        registry.list_instances("users").await.unwrap()[0].health,
        Health::Unknown
    );
    tx.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn keeps_the_registration_alive_and_puts_it_back() {
    let registry = MemoryRegistry::builder()
        .default_ttl(Some(Duration::from_secs(3)))
        .cleanup_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let (tx, rx) = oneshot::channel();
    let a = announcer(&registry, rx)
        .with_advertise_addr(ADDR)
        .close_registry(false);
    let stopped = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stopped);
    let run = tokio::spawn(a.serve(ADDR.parse().unwrap(), move |stop| {
        server(stop, Some(Duration::ZERO), s)
    }));
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(registry.len(), 1, "renewed at a third of the 3 s TTL");
    // Removed behind its back (an operator, a registry restart): back within one interval.
    registry.deregister("users-10.0.0.5-8080").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(registry.len(), 1, "registered again");
    tx.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(registry.len(), 0, "deregistered");
    registry
        .list_instances("users")
        .await
        .expect("not closed: close_registry(false)");
}

#[derive(Debug)]
struct Crashed;
impl std::fmt::Display for Crashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("listener failed")
    }
}
impl std::error::Error for Crashed {}

#[tokio::test(start_paused = true)]
async fn a_server_that_fails_is_deregistered_at_once_and_its_error_returned() {
    let registry = MemoryRegistry::new();
    let (_tx, rx) = oneshot::channel();
    let a = announcer(&registry, rx)
        .with_advertise_addr(ADDR)
        .close_registry(false);
    let observer = registry.clone();
    let run = tokio::spawn(a.serve(ADDR.parse().unwrap(), move |_stop| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(observer.len(), 1, "registered while it ran");
        Err::<(), _>(Crashed)
    }));
    let err = run.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Backend {
                backend: "server",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("listener failed"), "{err}");
    assert_eq!(registry.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn nothing_starts_without_an_address_or_with_an_invalid_instance() {
    let registry = MemoryRegistry::new();
    let started = Arc::new(AtomicBool::new(false));
    for (a, bound) in [
        // Bound to loopback only, no permission to advertise it.
        (
            Announcer::new(Arc::new(registry.clone()), "users"),
            "127.0.0.1:8080",
        ),
        (Announcer::new(Arc::new(registry.clone()), "bad name"), ADDR),
        (
            Announcer::new(Arc::new(registry.clone()), "users").with_advertise_addr("0.0.0.0"),
            "0.0.0.0:80",
        ),
    ] {
        let s = Arc::clone(&started);
        let err = a
            .serve(bound.parse().unwrap(), move |_stop| async move {
                s.store(true, Ordering::SeqCst);
                Ok::<(), std::io::Error>(())
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig(_) | Error::InvalidInstance(_)),
            "{err:?}"
        );
    }
    assert!(!started.load(Ordering::SeqCst));
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_second_request_stops_at_once_during_the_drain_and_during_the_stop() {
    for second_after in [Duration::from_secs(2), Duration::from_secs(12)] {
        let registry = MemoryRegistry::new();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let a = Announcer::new(Arc::new(registry.clone()), "users")
            .with_advertise_addr(ADDR)
            .with_drain_delay(Duration::from_secs(10))
            .with_stop_deadline(Duration::from_secs(60))
            .with_shutdown_requests(tokio_stream_from(rx));
        let mut phases = a.phases();
        let stopped = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stopped);
        // The server never finishes once stopped: only the second request ends it early.
        let run = tokio::spawn(a.serve(ADDR.parse().unwrap(), move |stop| server(stop, None, s)));
        phases.wait_for(|p| *p == Phase::Serving).await.unwrap();
        let start = Instant::now();
        tx.send(()).unwrap();
        tokio::time::sleep(second_after).await;
        tx.send(()).unwrap();
        run.await.unwrap().unwrap();
        assert_eq!(
            start.elapsed(),
            second_after,
            "stopped at the second request"
        );
        assert_eq!(*phases.borrow(), Phase::Stopped);
        assert!(registry.is_empty(), "deregistered first");
    }
}

/// An unbounded receiver as a stream of requests.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<()>,
) -> impl futures_util::Stream<Item = ()> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
