//! Every public API of the client that takes a `Duration` accepts `Duration::ZERO` and
//! `Duration::MAX` without panicking: MAX means "no limit", zero a clear error or the documented
//! meaning. Panics in background tasks (hyper's pool) are caught by a panic hook, since the
//! runtime would otherwise swallow them.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use common::{instance, Pick, Reply, StaticDiscovery, TestServer};
use waypost_client::{
    HttpClient, OutlierConfig, RetryBudget, RetryPolicy, ServiceClient, ServiceClientBuilder,
};
use waypost_core_types::{CircuitState, Error};

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic in this test binary, on any thread or task.
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

fn builder(d: &Arc<StaticDiscovery>) -> ServiceClientBuilder {
    ServiceClient::builder(d.clone())
}

#[tokio::test]
async fn builder_timeout_and_deadline_max_mean_no_limit_zero_is_refused() {
    count_panics();
    let a = TestServer::start(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
    let client = builder(&d)
        .timeout(Duration::MAX)
        .deadline(Duration::MAX)
        .build()
        .unwrap();
    assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    for b in [
        builder(&d).timeout(Duration::ZERO),
        builder(&d).deadline(Duration::ZERO),
    ] {
        let err = b.build().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
        assert!(err.to_string().contains("above zero"), "{err}");
    }
    no_panic();
}

#[tokio::test]
async fn per_call_timeout_and_deadline_max_mean_no_limit_zero_is_refused() {
    count_panics();
    let a = TestServer::start(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
    let client = builder(&d).build().unwrap();
    let resp = client
        .request(http::Method::GET, "svc", "/")
        .timeout(Duration::MAX)
        .deadline(Duration::MAX)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.body, "ok");
    for zero in [
        client
            .request(http::Method::GET, "svc", "/")
            .timeout(Duration::ZERO),
        client
            .request(http::Method::GET, "svc", "/")
            .deadline(Duration::ZERO),
    ] {
        let err = zero.send().await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
    assert_eq!(a.hits(), 1, "a refused call sends nothing");
    no_panic();
}

/// No per-attempt limit, yet the deadline still holds (paused time: the server stalls).
#[tokio::test(start_paused = true)]
async fn timeout_max_under_a_deadline_times_out_at_the_deadline() {
    count_panics();
    let a = TestServer::start(Reply::Stall).await;
    let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
    let client = builder(&d)
        .timeout(Duration::MAX)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let err = client.get("svc", "/").await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // And per call: a deadline of MAX with a 1 s attempt timeout, no retry.
    let err = client
        .request(http::Method::GET, "svc", "/")
        .timeout(Duration::from_secs(1))
        .deadline(Duration::MAX)
        .max_retries(0)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    no_panic();
}

/// `retry(n, MAX)`: the first backoff would end past the deadline, so the call gives up with the
/// attempt's error at once; `retry(n, ZERO)` retries without waiting.
#[tokio::test(start_paused = true)]
async fn retry_base_delay_zero_and_max() {
    count_panics();
    let a = TestServer::start(Reply::Status(503, "down")).await;
    let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
    let client = builder(&d)
        .retry(2, Duration::MAX)
        .deadline(Duration::from_secs(60))
        .no_retry_budget()
        .no_outlier_detection()
        .build()
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let err = client.get("svc", "/").await.unwrap_err();
    assert!(matches!(err, Error::Http { status: 503, .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(a.hits(), 1);

    let client = builder(&d)
        .retry(2, Duration::ZERO)
        .no_retry_budget()
        .no_outlier_detection()
        .build()
        .unwrap();
    let t0 = tokio::time::Instant::now();
    assert!(client.get("svc", "/").await.is_err());
    assert_eq!(a.hits(), 4, "two retries, at once");
    assert!(t0.elapsed() < Duration::from_millis(1));

    let p = RetryPolicy::new(3, Duration::MAX);
    assert_eq!(p.max_backoff, Duration::MAX);
    for n in [1, 2, 31, 32, u32::MAX] {
        assert!(p.backoff(n) <= Duration::from_nanos(u64::MAX));
    }
    assert_eq!(
        RetryPolicy::new(3, Duration::ZERO).backoff(5),
        Duration::ZERO
    );
    no_panic();
}

#[tokio::test(start_paused = true)]
async fn retry_budget_ttl_zero_is_raised_max_never_slides() {
    count_panics();
    // Zero: raised to 10 ms; withdrawals are forgotten 10 ms later.
    let b = RetryBudget::new(Duration::ZERO, 0, 1.0);
    b.deposit();
    assert!(b.try_withdraw());
    assert!(!b.try_withdraw());
    tokio::time::advance(Duration::from_millis(11)).await;
    b.deposit();
    assert!(b.try_withdraw());

    // MAX: the window never slides, so what was spent stays spent.
    let b = RetryBudget::new(Duration::MAX, 0, 0.5);
    for _ in 0..4 {
        b.deposit();
    }
    assert!(b.try_withdraw() && b.try_withdraw());
    assert!(!b.try_withdraw());
    tokio::time::advance(Duration::from_secs(400 * 24 * 3600)).await;
    assert!(!b.try_withdraw());
    assert!(format!("{b:?}").contains("RetryBudget"));
    // With a reserve, MAX never refuses.
    let b = RetryBudget::new(Duration::MAX, 1, 0.0);
    assert!((0..10_000).all(|_| b.try_withdraw()));
    no_panic();
}

#[tokio::test(start_paused = true)]
async fn outlier_ejection_time_zero_probes_at_once_max_ejects_for_good() {
    count_panics();
    let a = TestServer::start(Reply::Status(503, "sick")).await;
    let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
    let forever = builder(&d)
        .retry(0, Duration::ZERO)
        .outlier_detection(OutlierConfig::new(1, Duration::MAX))
        .build()
        .unwrap();
    assert!(matches!(
        forever.get("svc", "/").await,
        Err(Error::Http { status: 503, .. })
    ));
    assert_eq!(forever.instance_state("a"), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
    assert!(matches!(
        forever.get("svc", "/").await,
        Err(Error::CircuitOpen)
    ));
    assert_eq!(a.hits(), 1);

    let at_once = builder(&d)
        .retry(0, Duration::ZERO)
        .outlier_detection(OutlierConfig::new(1, Duration::ZERO))
        .build()
        .unwrap();
    assert!(at_once.get("svc", "/").await.is_err());
    a.set(Reply::Status(200, "ok"));
    assert_eq!(at_once.get("svc", "/").await.unwrap(), "ok");
    assert_eq!(at_once.instance_state("a"), CircuitState::Closed);
    no_panic();
}

#[tokio::test]
async fn http_client_timeouts_zero_and_max() {
    count_panics();
    let a = TestServer::start(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
    let err = HttpClient::builder()
        .connect_timeout(Some(Duration::ZERO))
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    for (connect, idle) in [
        (Some(Duration::MAX), Duration::MAX),
        (None, Duration::ZERO),
        (Some(Duration::from_secs(1)), Duration::MAX),
    ] {
        let http = HttpClient::builder()
            .connect_timeout(connect)
            .pool_idle_timeout(idle)
            .build()
            .unwrap();
        let client = builder(&d).http_client(http).build().unwrap();
        for _ in 0..3 {
            assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
            // Let the pool's idle task (spawned for the first idle connection) run.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    no_panic();
}
