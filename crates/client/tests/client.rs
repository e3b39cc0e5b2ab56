//! The service client against loopback hyper servers that answer 5xx, drop connections, stall
//! and send huge bodies. Every test runs three times (`in_every_mode!`): over HTTP/1.1, over h2c
//! (prior knowledge) and over h2 chosen by ALPN on TLS; the servers refuse, and the test fails
//! on, a request that comes in another HTTP version than the mode's.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{dead_addr, Mode, Pick, Reply, StaticDiscovery};
use http::Method;
use waypost_client::{OutlierConfig, RetryBudget, ServiceClientBuilder};
use waypost_core_types::{CircuitState, Error, Outcome};

fn builder(m: Mode, d: &Arc<StaticDiscovery>) -> ServiceClientBuilder {
    m.builder(d.clone())
        .timeout(Duration::from_secs(5))
        .retry(3, Duration::from_millis(1))
}

in_every_mode!(
    #[tokio::test]
    get_returns_the_body_and_reports_success
);
async fn get_returns_the_body_and_reports_success(m: Mode) {
    let a = m.server(Reply::Status(200, "hello")).await;
    let d = StaticDiscovery::new(vec![m.instance("a", a.addr)], Pick::First);
    let client = builder(m, &d).build().unwrap();
    assert_eq!(client.get("svc", "/hello?x=1").await.unwrap(), "hello");
    assert_eq!(a.state.requests.lock()[0].1, "/hello?x=1");
    assert_eq!(
        *d.outcomes.0.lock(),
        vec![("a".to_string(), Outcome::Success)]
    );
    let err = client.get("nope", "/").await.unwrap_err();
    assert!(matches!(err, Error::ServiceNotFound(_)), "{err}");
}

in_every_mode!(
    #[tokio::test]
    every_request_goes_to_its_own_path
);
/// More distinct paths than a thread keeps parsed, each sent twice, with and without a query
/// string, shorter and longer than the longest path kept: every request reaches the server with
/// its own path.
async fn every_request_goes_to_its_own_path(m: Mode) {
    let a = m.server(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(vec![m.instance("a", a.addr)], Pick::First);
    let client = builder(m, &d).build().unwrap();
    let mut sent = Vec::new();
    for round in 0..2 {
        for i in 0..12 {
            let path = match i % 3 {
                0 => format!("/users/{i}"),
                1 => format!("/users/{i}?round={round}"),
                _ => format!("/{}", "p".repeat(120 + i)),
            };
            client.get("svc", &path).await.unwrap();
            sent.push(path);
        }
    }
    let seen: Vec<String> = a
        .state
        .requests
        .lock()
        .iter()
        .map(|r| r.1.clone())
        .collect();
    assert_eq!(seen, sent);
}

in_every_mode!(
    #[tokio::test]
    host_is_the_instance_authority_or_the_callers
);
/// HTTP/1.1 requests carry one `Host` header, the instance's address and port (as hyper writes
/// it), or the caller's own; HTTP/2 requests name the instance in `:authority` and carry no
/// `host` header of the client's.
async fn host_is_the_instance_authority_or_the_callers(m: Mode) {
    let a = m.server(Reply::Host).await;
    let d = StaticDiscovery::new(vec![m.instance("a", a.addr)], Pick::First);
    let client = builder(m, &d).build().unwrap();
    let authority = a.addr.to_string();
    // Twice: the second request takes the header from the client's per-thread cache.
    for _ in 0..2 {
        let seen = client.get("svc", "/").await.unwrap();
        let expected = match m {
            Mode::Http1 => format!("host=[{authority}] authority=-"),
            Mode::H2c | Mode::H2Tls => format!("host=[] authority={authority}"),
        };
        assert_eq!(seen, expected);
    }
    let seen = client
        .request(Method::GET, "svc", "/")
        .header("host", "api.example.test")
        .send()
        .await
        .unwrap()
        .body;
    let expected = match m {
        Mode::Http1 => "host=[api.example.test] authority=-".to_string(),
        Mode::H2c | Mode::H2Tls => format!("host=[api.example.test] authority={authority}"),
    };
    assert_eq!(seen, expected);
}

in_every_mode!(
    #[tokio::test]
    status_4xx_is_an_error_with_the_body_and_is_not_retried
);
async fn status_4xx_is_an_error_with_the_body_and_is_not_retried(m: Mode) {
    let a = m.server(Reply::Status(404, "no such user")).await;
    let b = m.server(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(
        vec![m.instance("a", a.addr), m.instance("b", b.addr)],
        Pick::First,
    );
    let client = builder(m, &d).build().unwrap();
    let err = client.get("svc", "/users/9").await.unwrap_err();
    match err {
        Error::Http { status, body } => {
            assert_eq!(status, 404);
            assert_eq!(body, "no such user");
        }
        other => panic!("{other}"),
    }
    assert_eq!((a.hits(), b.hits()), (1, 0));
}

in_every_mode!(
    #[tokio::test]
    get_is_retried_on_5xx_on_another_instance
);
async fn get_is_retried_on_5xx_on_another_instance(m: Mode) {
    let a = m.server(Reply::Status(503, "down")).await;
    let b = m.server(Reply::Status(200, "ok")).await;
    // `First` always returns instance a unless it is avoided: the retry reaching b proves the
    // client passes the failed instance in `avoid`.
    let d = StaticDiscovery::new(
        vec![m.instance("a", a.addr), m.instance("b", b.addr)],
        Pick::First,
    );
    let client = builder(m, &d).build().unwrap();
    let resp = client
        .request(Method::GET, "svc", "/")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.body, "ok");
    assert_eq!(resp.attempts, 2);
    assert_eq!(resp.instance.id, "b");
    assert_eq!((a.hits(), b.hits()), (1, 1));
    assert_eq!(
        *d.outcomes.0.lock(),
        vec![
            ("a".into(), Outcome::Failure),
            ("b".into(), Outcome::Success)
        ]
    );
}

in_every_mode!(
    #[tokio::test]
    post_is_not_retried_on_5xx_unless_opted_in
);
async fn post_is_not_retried_on_5xx_unless_opted_in(m: Mode) {
    let a = m.server(Reply::Status(500, "boom")).await;
    let b = m.server(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(
        vec![m.instance("a", a.addr), m.instance("b", b.addr)],
        Pick::First,
    );
    let client = builder(m, &d).build().unwrap();
    let err = client.post("svc", "/orders", "{}").await.unwrap_err();
    assert!(matches!(err, Error::Http { status: 500, .. }), "{err}");
    assert_eq!((a.hits(), b.hits()), (1, 0));

    // Per call.
    let resp = client
        .request(Method::POST, "svc", "/orders")
        .body("{}")
        .retry_non_idempotent(true)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.attempts, 2);
    // For the whole client.
    let client = builder(m, &d).retry_non_idempotent(true).build().unwrap();
    assert_eq!(client.post("svc", "/orders", "{}").await.unwrap(), "ok");
    assert_eq!((a.hits(), b.hits()), (3, 2));
}

in_every_mode!(
    #[tokio::test]
    request_body_is_replayed_byte_for_byte
);
async fn request_body_is_replayed_byte_for_byte(m: Mode) {
    let a = m.server(Reply::Status(502, "bad gateway")).await;
    let b = m.server(Reply::Status(503, "unavailable")).await;
    let c = m.server(Reply::Status(201, "created")).await;
    let d = StaticDiscovery::new(
        vec![
            m.instance("a", a.addr),
            m.instance("b", b.addr),
            m.instance("c", c.addr),
        ],
        Pick::First,
    );
    let client = builder(m, &d).build().unwrap();
    let body: Bytes = (0..70_000u32)
        .map(|i| (i * 7 % 256) as u8)
        .collect::<Vec<_>>()
        .into();
    let resp = client
        .request(Method::POST, "svc", "/upload")
        .body(body.clone())
        .retry_non_idempotent(true)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.attempts, 3);
    for s in [&a, &b, &c] {
        assert_eq!(s.bodies(), vec![body.clone()]);
    }
}

in_every_mode!(
    #[tokio::test]
    connection_refused_is_retried_for_every_method
);
async fn connection_refused_is_retried_for_every_method(m: Mode) {
    let dead = dead_addr().await;
    let b = m.server(Reply::Echo).await;
    let d = StaticDiscovery::new(
        vec![m.instance("dead", dead), m.instance("b", b.addr)],
        Pick::First,
    );
    let client = builder(m, &d).build().unwrap();
    let resp = client
        .request(Method::POST, "svc", "/")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.body, "payload");
    assert_eq!(resp.attempts, 2);
}

in_every_mode!(
    #[tokio::test]
    dropped_connection_is_retried_for_get_but_not_post
);
async fn dropped_connection_is_retried_for_get_but_not_post(m: Mode) {
    let a = m.server(Reply::Close).await;
    let b = m.server(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(
        vec![m.instance("a", a.addr), m.instance("b", b.addr)],
        Pick::First,
    );
    let client = builder(m, &d).build().unwrap();
    assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    // The POST reached a server that may have acted on it: not retried.
    let err = client.post("svc", "/", "x").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Backend {
                backend: "http",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!((a.hits(), b.hits()), (2, 1));
}

/// A loopback server that answers every connection with `answer` (not HTTP) and closes it;
/// counts connections. It reads what the client sends until the client closes, so closing
/// never resets the connection (a reset would be a transient failure, not an undecodable answer:
/// an HTTP/2 client sends its preface, settings and request in several writes).
async fn not_http_server(answer: &'static [u8]) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(answer).await;
            let _ = stream.shutdown().await;
            while let Ok(1..) = stream.read(&mut request).await {}
        }
    });
    (addr, hits)
}

in_every_mode!(
    #[tokio::test]
    undecodable_responses_are_not_retried
);
async fn undecodable_responses_are_not_retried(m: Mode) {
    // An answer that is not HTTP: the attempt fails, and no other instance is tried.
    let (garbage, garbage_hits) = not_http_server(b"SSH-2.0-OpenSSH_9.6\r\n").await;
    let b = m.server(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(
        vec![m.instance("garbage", garbage), m.instance("b", b.addr)],
        Pick::First,
    );
    let client = builder(m, &d).build().unwrap();
    let err = client.get("svc", "/").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Backend {
                backend: "http",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable(), "{err}");
    assert_eq!((garbage_hits.load(Ordering::SeqCst), b.hits()), (1, 0));
    assert_eq!(d.outcomes.0.lock().len(), 1, "one attempt");

    // A 200 whose body is not the expected JSON: the exchange succeeded once, decoding failed.
    let a = m.server(Reply::Status(200, "<html>not json</html>")).await;
    let d = StaticDiscovery::new(vec![m.instance("a", a.addr)], Pick::First);
    let client = builder(m, &d).build().unwrap();
    let err = client
        .get_json::<serde_json::Value>("svc", "/")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Codec(_)), "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(a.hits(), 1);
}

in_every_mode!(
    #[tokio::test]
    attempt_timeout_moves_on_to_another_instance
);
async fn attempt_timeout_moves_on_to_another_instance(m: Mode) {
    let a = m.server(Reply::Stall).await;
    let b = m.server(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(
        vec![m.instance("a", a.addr), m.instance("b", b.addr)],
        Pick::First,
    );
    let client = builder(m, &d)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let t0 = Instant::now();
    assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // A stalled POST times out and is not retried.
    let err = client.post("svc", "/", "x").await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert_eq!(b.hits(), 1);
}

in_every_mode!(
    #[tokio::test]
    overall_deadline_holds
);
async fn overall_deadline_holds(m: Mode) {
    const TOLERANCE: Duration = Duration::from_millis(100);
    // Every instance stalls; each attempt could wait 10 s.
    let a = m.server(Reply::Stall).await;
    let b = m.server(Reply::Stall).await;
    let d = StaticDiscovery::new(
        vec![m.instance("a", a.addr), m.instance("b", b.addr)],
        Pick::RoundRobin,
    );
    let deadline = Duration::from_millis(300);
    let client = builder(m, &d)
        .timeout(Duration::from_secs(10))
        .deadline(deadline)
        .no_retry_budget()
        .build()
        .unwrap();
    let t0 = Instant::now();
    let err = client.get("svc", "/").await.unwrap_err();
    let took = t0.elapsed();
    assert!(
        matches!(err, Error::Timeout { after, .. } if after == deadline),
        "{err}"
    );
    assert!(took >= deadline - Duration::from_millis(5), "{took:?}");
    assert!(took <= deadline + TOLERANCE, "took {took:?}");

    // Short attempts and long backoffs: the deadline also caps the sleeps.
    for s in [&a, &b] {
        s.set(Reply::Status(503, "down"));
    }
    let client = builder(m, &d)
        .retry(50, Duration::from_millis(100))
        .deadline(deadline)
        .no_retry_budget()
        .no_outlier_detection()
        .build()
        .unwrap();
    let t0 = Instant::now();
    let err = client.get("svc", "/").await.unwrap_err();
    let took = t0.elapsed();
    assert!(
        matches!(err, Error::Http { status: 503, .. } | Error::Timeout { .. }),
        "{err}"
    );
    assert!(took <= deadline + TOLERANCE, "took {took:?}");
}

in_every_mode!(
    #[tokio::test]
    oversized_bodies_are_refused
);
async fn oversized_bodies_are_refused(m: Mode) {
    let big = m.server(Reply::Sized(10 * 1024 * 1024 + 1)).await;
    let d = StaticDiscovery::new(vec![m.instance("big", big.addr)], Pick::First);
    let client = builder(m, &d).build().unwrap();
    let err = client.get("svc", "/").await.unwrap_err();
    assert!(
        matches!(err, Error::BodyTooLarge { limit } if limit == 10 * 1024 * 1024),
        "{err}"
    );
    assert_eq!(big.hits(), 1, "a too-large body is not retried");

    // Exactly at the limit is fine.
    big.set(Reply::Sized(1024));
    let client = builder(m, &d).body_limit(1024).build().unwrap();
    assert_eq!(client.get("svc", "/").await.unwrap().len(), 1024);
    big.set(Reply::Sized(1025));
    assert!(matches!(
        client.get("svc", "/").await.unwrap_err(),
        Error::BodyTooLarge { limit: 1024 }
    ));

    // A declared length above the limit fails before any byte of the body is awaited (this
    // body never comes: without the Content-Length check the attempt would time out).
    big.set(Reply::Declared(1 << 30));
    let client = builder(m, &d)
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let err = client.get("svc", "/").await.unwrap_err();
    assert!(matches!(err, Error::BodyTooLarge { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(1));

    // No Content-Length and a body that never ends: counted while streaming, stops at the limit.
    big.set(Reply::Endless);
    let client = builder(m, &d).body_limit(1024 * 1024).build().unwrap();
    let t0 = Instant::now();
    let err = client.get("svc", "/").await.unwrap_err();
    assert!(
        matches!(err, Error::BodyTooLarge { limit: 1_048_576 }),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
}

in_every_mode!(
    #[tokio::test]
    failing_instance_is_ejected_then_probed_back
);
async fn failing_instance_is_ejected_then_probed_back(m: Mode) {
    let a = m.server(Reply::Status(503, "sick")).await;
    let b = m.server(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(
        vec![m.instance("a", a.addr), m.instance("b", b.addr)],
        Pick::First,
    );
    let client = builder(m, &d)
        .outlier_detection(OutlierConfig::new(3, Duration::from_millis(300)))
        .no_retry_budget()
        .build()
        .unwrap();
    for _ in 0..20 {
        assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    }
    // `First` prefers a whenever it is not avoided: only ejection keeps it from the traffic.
    assert_eq!(a.hits(), 3, "ejected after 3 consecutive failures");
    assert_eq!(b.hits(), 20);
    assert_eq!(client.instance_state("a"), CircuitState::Open);

    // It recovers; after the ejection time one probe goes to it and brings it back.
    a.set(Reply::Status(200, "ok again"));
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..5 {
        assert_eq!(client.get("svc", "/").await.unwrap(), "ok again");
    }
    assert_eq!(a.hits(), 8);
    assert_eq!(client.instance_state("a"), CircuitState::Closed);
}

in_every_mode!(
    #[tokio::test]
    every_instance_ejected_fails_fast
);
async fn every_instance_ejected_fails_fast(m: Mode) {
    let a = m.server(Reply::Status(503, "sick")).await;
    let d = StaticDiscovery::new(vec![m.instance("a", a.addr)], Pick::First);
    let client = builder(m, &d)
        .retry(0, Duration::ZERO)
        .outlier_detection(OutlierConfig::new(2, Duration::from_secs(60)))
        .build()
        .unwrap();
    for _ in 0..2 {
        assert!(matches!(
            client.get("svc", "/").await,
            Err(Error::Http { status: 503, .. })
        ));
    }
    assert!(matches!(
        client.get("svc", "/").await,
        Err(Error::CircuitOpen)
    ));
    assert_eq!(a.hits(), 2);
}

in_every_mode!(
    #[tokio::test]
    retry_budget_caps_retries_in_an_outage
);
async fn retry_budget_caps_retries_in_an_outage(m: Mode) {
    let a = m.server(Reply::Status(503, "down")).await;
    let b = m.server(Reply::Status(503, "down")).await;
    let d = StaticDiscovery::new(
        vec![m.instance("a", a.addr), m.instance("b", b.addr)],
        Pick::RoundRobin,
    );
    let client = builder(m, &d)
        .retry(3, Duration::ZERO)
        .retry_budget(RetryBudget::new(Duration::from_secs(10), 0, 0.1))
        .no_outlier_detection()
        .build()
        .unwrap();
    for _ in 0..50 {
        assert!(client.get("svc", "/").await.is_err());
    }
    let sent = a.hits() + b.hits();
    // Without the budget: 50 × 4 = 200 requests. With 10 %: 50 + 5.
    assert_eq!(sent, 55, "a={} b={}", a.hits(), b.hits());
}

in_every_mode!(
    #[tokio::test]
    json_helpers
);
async fn json_helpers(m: Mode) {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct User {
        name: String,
        email: String,
    }
    let a = m.server(Reply::Echo).await;
    let d = StaticDiscovery::new(vec![m.instance("a", a.addr)], Pick::First);
    let client = builder(m, &d).build().unwrap();
    let u = User {
        name: "张三".into(),
        email: "zhangsan@example.com".into(),
    };
    let back: User = client.post_json("svc", "/users", &u).await.unwrap();
    assert_eq!(back, u);
    let back: User = client
        .call_json("svc", Method::PUT, "/users/1", Some(&u))
        .await
        .unwrap();
    assert_eq!(back, u);
    let nothing: Option<User> = client.get_json("svc", "/users").await.unwrap();
    assert_eq!(nothing, None);
    let err = client.get_json::<User>("svc", "/users").await.unwrap_err();
    assert!(matches!(err, Error::Codec(_)), "{err}");
}

in_every_mode!(
    #[tokio::test]
    tower_service_form
);
async fn tower_service_form(m: Mode) {
    use tower::ServiceExt;
    let a = m.server(Reply::Echo).await;
    let d = StaticDiscovery::new(vec![m.instance("a", a.addr)], Pick::First);
    let client = builder(m, &d).build().unwrap();
    let req = http::Request::post("http://svc/echo?q=1")
        .header("x-trace", "7")
        .body(Bytes::from_static(b"{\"a\":1}"))
        .unwrap();
    let resp = client.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body(), &Bytes::from_static(b"{\"a\":1}"));
    assert_eq!(a.state.requests.lock()[0].1, "/echo?q=1");
    a.set(Reply::Status(409, "conflict"));
    let req = http::Request::get("http://svc/x")
        .body(Bytes::new())
        .unwrap();
    assert!(matches!(
        client.oneshot(req).await,
        Err(Error::Http { status: 409, .. })
    ));
}

in_every_mode!(
    #[tokio::test]
    unsupported_protocol_is_refused
);
async fn unsupported_protocol_is_refused(m: Mode) {
    let a = m.server(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(
        vec![m
            .instance("a", a.addr)
            .with_protocol(waypost_core_types::Protocol::Grpc)],
        Pick::First,
    );
    let client = builder(m, &d).build().unwrap();
    assert!(matches!(
        client.get("svc", "/").await,
        Err(Error::Unsupported(_))
    ));
    assert_eq!(a.hits(), 0);
}

in_every_mode!(
    #[tokio::test(start_paused = true)]
    first_retry_to_another_instance_does_not_wait_for_the_backoff
);
/// The first retry to another instance goes out at once; one to an instance that already failed
/// (here the only one) waits its backoff; `immediate_failover = false` waits before every retry.
/// Paused time: a backoff shows as virtual time passing, the loopback exchanges take none.
async fn first_retry_to_another_instance_does_not_wait_for_the_backoff(m: Mode) {
    let a = m.server(Reply::Status(503, "down")).await;
    let b = m.server(Reply::Status(200, "ok")).await;
    let two = StaticDiscovery::new(
        vec![m.instance("a", a.addr), m.instance("b", b.addr)],
        Pick::First,
    );
    let client = m
        .builder(two.clone())
        .retry(2, Duration::from_secs(1))
        .build()
        .unwrap();
    for _ in 0..3 {
        let t0 = tokio::time::Instant::now();
        let resp = client
            .request(Method::GET, "svc", "/")
            .send()
            .await
            .unwrap();
        assert_eq!((resp.instance.id.as_str(), resp.attempts), ("b", 2));
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "no backoff before failing over"
        );
    }
    assert_eq!((a.hits(), b.hits()), (3, 3));
    // The balancer saw one outcome per attempt: the picks that were sent.
    assert_eq!(two.outcomes.0.lock().len(), 6);

    // One instance: the retry goes to the instance that just failed, after its backoff.
    let one = StaticDiscovery::new(vec![m.instance("a", a.addr)], Pick::First);
    let client = m
        .builder(one.clone())
        .retry(1, Duration::from_secs(1))
        .no_outlier_detection()
        .build()
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let err = client.get("svc", "/").await.unwrap_err();
    assert!(matches!(err, Error::Http { status: 503, .. }), "{err}");
    let waited = t0.elapsed();
    assert!(
        waited > Duration::ZERO && waited <= Duration::from_secs(1),
        "full jitter up to 1 s: {waited:?}"
    );
    assert_eq!(a.hits(), 3 + 2);
    // The pick given back before the wait reports `Ignored`, the attempts their failures.
    assert_eq!(
        *one.outcomes.0.lock(),
        vec![
            ("a".into(), Outcome::Failure),
            ("a".into(), Outcome::Ignored),
            ("a".into(), Outcome::Failure)
        ]
    );

    // Opted out: the failover waits too.
    let mut policy = waypost_client::RetryPolicy::new(2, Duration::from_secs(1));
    policy.immediate_failover = false;
    let client = m.builder(two.clone()).retry_policy(policy).build().unwrap();
    let t0 = tokio::time::Instant::now();
    assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    assert!(t0.elapsed() > Duration::ZERO);
}

in_every_mode!(
    #[tokio::test(start_paused = true)]
    second_retry_waits_its_backoff
);
/// Later retries keep their exponential backoff, even to an instance that has not failed.
async fn second_retry_waits_its_backoff(m: Mode) {
    let a = m.server(Reply::Status(503, "down")).await;
    let b = m.server(Reply::Status(503, "down")).await;
    let c = m.server(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(
        vec![
            m.instance("a", a.addr),
            m.instance("b", b.addr),
            m.instance("c", c.addr),
        ],
        Pick::First,
    );
    let client = m
        .builder(d)
        .retry(2, Duration::from_secs(1))
        .no_outlier_detection()
        .build()
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let resp = client
        .request(Method::GET, "svc", "/")
        .send()
        .await
        .unwrap();
    assert_eq!((resp.instance.id.as_str(), resp.attempts), ("c", 3));
    let waited = t0.elapsed();
    // Retry 1 to b at once, retry 2 to c after up to 2 s.
    assert!(
        waited > Duration::ZERO && waited <= Duration::from_secs(2),
        "{waited:?}"
    );
}
