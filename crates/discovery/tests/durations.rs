//! Every public API of the discovery crate that takes a `Duration` accepts `Duration::ZERO` and
//! `Duration::MAX` without panicking: MAX means "no limit" (or "never"), zero a clear error or
//! the documented meaning. A panic hook catches panics in background tasks, which the runtime
//! would otherwise swallow.
#![allow(clippy::unwrap_used)] // tests

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use common::{closed_port, healthy, Flaky, Reply, TestServer};
use waypost_core_types::{Error, HealthChecker, ServiceDiscovery, ServiceRegistry};
use waypost_discovery::{CachedDiscovery, HealthMonitor, HttpHealthChecker, TcpHealthChecker};
use waypost_registry_memory::MemoryRegistry;

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Not the tests' own assertions: a panic in the code under test (or a library).
            if info
                .location()
                .is_some_and(|l| !l.file().contains("tests/"))
            {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

fn no_panic() {
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic happened");
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

#[tokio::test(start_paused = true)]
async fn refresh_interval_and_initial_timeout_zero_refused_max_never() {
    count_panics();
    let registry = Flaky::new(MemoryRegistry::new());
    registry.register(&healthy("a", "svc", 8001)).await.unwrap();
    for zero in [
        CachedDiscovery::builder(registry.clone()).refresh_interval(Duration::ZERO),
        CachedDiscovery::builder(registry.clone()).initial_timeout(Duration::ZERO),
    ] {
        let err = zero.build().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
    let d = CachedDiscovery::builder(registry.clone())
        .refresh_interval(Duration::MAX)
        .initial_timeout(Duration::MAX)
        .build()
        .unwrap();
    assert_eq!(d.discover_one("svc").await.unwrap().id, "a");
    // The watch ends: one poll, then never again; the cache keeps serving.
    registry.cut_watches();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let lists = registry.list_calls.load(Ordering::SeqCst);
    tokio::time::advance(10 * YEAR).await;
    tokio::task::yield_now().await;
    assert_eq!(registry.list_calls.load(Ordering::SeqCst), lists);
    assert_eq!(d.discover_one("svc").await.unwrap().id, "a");
    let stats = d.service_stats("svc").unwrap();
    assert!(!stats.watching);
    assert!(stats.stale_for.unwrap() >= 10 * YEAR);
    d.close().await.unwrap();
    no_panic();
}

#[tokio::test(start_paused = true)]
async fn monitor_interval_max_probes_once_check_timeout_max_is_no_limit() {
    count_panics();
    let registry = Arc::new(MemoryRegistry::new());
    registry.register(&healthy("a", "svc", 8001)).await.unwrap();
    let checker = Arc::new(TcpHealthChecker::new(Duration::from_secs(1)));
    for zero in [
        HealthMonitor::builder(registry.clone(), checker.clone())
            .service("svc")
            .interval(Duration::ZERO),
        HealthMonitor::builder(registry.clone(), checker.clone())
            .service("svc")
            .check_timeout(Duration::ZERO),
    ] {
        let err = zero.start().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
    let monitor = HealthMonitor::builder(registry.clone(), checker)
        .service("svc")
        .interval(Duration::MAX)
        .check_timeout(Duration::MAX)
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(monitor.rounds(), 1);
    tokio::time::advance(100 * YEAR).await;
    tokio::task::yield_now().await;
    assert_eq!(monitor.rounds(), 1, "Duration::MAX: no second round");
    assert!(monitor.is_running(), "the task did not panic");
    monitor.stop();
    no_panic();
}

/// A round that takes longer than the interval is followed by the next one an interval after it
/// ends (no burst of catch-up rounds).
#[tokio::test(start_paused = true)]
async fn monitor_rounds_follow_the_interval() {
    count_panics();
    let registry = Arc::new(MemoryRegistry::new());
    registry.register(&healthy("a", "svc", 8001)).await.unwrap();
    let checker = Arc::new(TcpHealthChecker::new(Duration::from_secs(1)));
    let monitor = HealthMonitor::builder(registry.clone(), checker)
        .service("svc")
        .interval(Duration::from_secs(10))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(monitor.rounds(), 4, "at 0, 10, 20, 30 s");
    monitor.stop();
    no_panic();
}

#[tokio::test]
async fn checker_timeouts_zero_fail_every_check_max_is_no_limit() {
    count_panics();
    let server = TestServer::start(vec![Reply {
        path: "/health",
        status: 200,
        delay: Duration::ZERO,
    }])
    .await;
    let up = healthy("up", "svc", server.port());
    HttpHealthChecker::new(Duration::MAX)
        .check(&up)
        .await
        .unwrap();
    TcpHealthChecker::new(Duration::MAX)
        .check(&up)
        .await
        .unwrap();
    for err in [
        HttpHealthChecker::new(Duration::ZERO).check(&up).await,
        TcpHealthChecker::new(Duration::ZERO).check(&up).await,
    ] {
        let err = err.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "zero sends no request"
    );
    let down = healthy("down", "svc", closed_port().await);
    assert!(HttpHealthChecker::new(Duration::MAX)
        .check(&down)
        .await
        .is_err());
    no_panic();
}
