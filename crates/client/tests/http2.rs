//! HTTP/2 specifics: h2c chosen per instance by metadata next to HTTP/1.1 instances, one
//! multiplexed connection per instance, and how a server's REFUSED_STREAM and GOAWAY are
//! classified (RFC 9113 §8.7 and §6.8).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{instance, Pick, Reply, StaticDiscovery, TestServer};
use http::{Method, Version};
use tokio::net::TcpListener;
use waypost_client::{HttpClient, ServiceClient, HTTP2_METADATA_KEY};
use waypost_core_types::{Error, Outcome};

async fn server(version: Version) -> TestServer {
    TestServer::serve(Reply::Echo, None, Some(version)).await
}

/// One service, two instances: one asks for h2c in its metadata, the other says nothing. Each
/// server refuses the other version, so every call must go on its instance's wire.
#[tokio::test]
async fn metadata_h2c_instance_next_to_an_http1_instance() {
    let h2 = server(Version::HTTP_2).await;
    let h1 = server(Version::HTTP_11).await;
    let d = StaticDiscovery::new(
        vec![
            instance("h2", h2.addr).with_metadata(HTTP2_METADATA_KEY, "prior-knowledge"),
            instance("h1", h1.addr),
        ],
        Pick::RoundRobin,
    );
    let client = ServiceClient::new(d.clone()).unwrap();
    for i in 0..10 {
        let resp = client
            .request(Method::POST, "svc", "/")
            .body(i.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.body, i.to_string());
        assert_eq!(resp.attempts, 1);
    }
    assert_eq!((h2.hits(), h1.hits()), (5, 5));
    assert!(d
        .outcomes
        .0
        .lock()
        .iter()
        .all(|(_, o)| *o == Outcome::Success));
}

/// `off` keeps an instance on HTTP/1.1 under a client that uses prior knowledge; values are
/// read ignoring case and surrounding spaces.
#[tokio::test]
async fn metadata_off_overrides_client_prior_knowledge() {
    let h2 = server(Version::HTTP_2).await;
    let h1 = server(Version::HTTP_11).await;
    let d = StaticDiscovery::new(
        vec![
            instance("h2", h2.addr),
            instance("h1", h1.addr).with_metadata(HTTP2_METADATA_KEY, " OFF "),
        ],
        Pick::RoundRobin,
    );
    for client in [
        ServiceClient::builder(d.clone())
            .http2_prior_knowledge(true)
            .build()
            .unwrap(),
        // The same through the lower-level client.
        ServiceClient::builder(d.clone())
            .http_client(
                HttpClient::builder()
                    .http2_prior_knowledge(true)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap(),
    ] {
        for _ in 0..4 {
            client.get("svc", "/").await.unwrap();
        }
    }
    assert_eq!((h2.hits(), h1.hits()), (4, 4));
}

/// A value the client does not know is ignored: the instance gets the client's setting
/// (HTTP/1.1 here) and stays callable.
#[tokio::test]
async fn unknown_metadata_value_is_ignored() {
    let h1 = server(Version::HTTP_11).await;
    let d = StaticDiscovery::new(
        vec![instance("h1", h1.addr).with_metadata(HTTP2_METADATA_KEY, "yes\u{1b}[31m please")],
        Pick::First,
    );
    let client = ServiceClient::new(d).unwrap();
    client.get("svc", "/").await.unwrap();
    assert_eq!(h1.hits(), 1);
}

/// The builder's setting wins over the given HTTP client's, both ways, sharing its pools.
#[tokio::test]
async fn builder_setting_overrides_the_given_http_client() {
    let h1 = server(Version::HTTP_11).await;
    let d = StaticDiscovery::new(vec![instance("h1", h1.addr)], Pick::First);
    let http = HttpClient::builder()
        .http2_prior_knowledge(true)
        .build()
        .unwrap();
    assert!(http.http2_prior_knowledge());
    let client = ServiceClient::builder(d)
        .http_client(http.clone())
        .http2_prior_knowledge(false)
        .build()
        .unwrap();
    client.get("svc", "/").await.unwrap();
    assert_eq!(h1.hits(), 1);
    assert!(
        http.http2_prior_knowledge(),
        "the given client is unchanged"
    );
}

/// h2c: 32 concurrent calls from a cold start share one connection.
#[tokio::test]
async fn h2c_multiplexes_one_connection_per_instance() {
    let h2 = server(Version::HTTP_2).await;
    let d = StaticDiscovery::new(vec![instance("h2", h2.addr)], Pick::First);
    let client = ServiceClient::builder(d)
        .http2_prior_knowledge(true)
        .build()
        .unwrap();
    let calls: Vec<_> = (0..32)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.post("svc", "/", i.to_string()).await })
        })
        .collect();
    for (i, call) in (0..32).zip(calls) {
        assert_eq!(call.await.unwrap().unwrap(), i.to_string());
    }
    assert_eq!(h2.hits(), 32);
    assert_eq!(h2.state.connections.load(Ordering::SeqCst), 1);
}

/// h2c to a server that speaks only HTTP/1.1 and says so (an HTTP/1.1 400): its answer is not
/// HTTP/2, which is not a transient failure: not retried on the other instance. (A server that
/// closes the connection without a word, as hyper's HTTP/1-only server does, looks like a
/// dropped connection: retried for idempotent methods.)
#[tokio::test]
async fn h2c_to_an_http1_only_server_is_not_retried() {
    let (h1_only, h1_hits) = http1_only_server().await;
    let other = server(Version::HTTP_2).await;
    let d = StaticDiscovery::new(
        vec![
            instance("h1-only", h1_only).with_metadata(HTTP2_METADATA_KEY, "prior-knowledge"),
            instance("other", other.addr).with_metadata(HTTP2_METADATA_KEY, "prior-knowledge"),
        ],
        Pick::First,
    );
    let client = ServiceClient::builder(d.clone())
        .retry(3, Duration::from_millis(1))
        .build()
        .unwrap();
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
    assert_eq!((h1_hits.load(Ordering::SeqCst), other.hits()), (1, 0));
    assert_eq!(d.outcomes.0.lock().len(), 1, "one attempt");
}

/// A server that speaks only HTTP/1.1 and answers what it cannot parse (here: the HTTP/2
/// preface) with a 400 and closes, as nginx does; counts connections.
async fn http1_only_server() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            let _ = stream.shutdown().await;
            // Read until the client closes, so closing never resets the connection.
            while let Ok(1..) = stream.read(&mut buf).await {}
        }
    });
    (addr, hits)
}

/// A raw HTTP/2 server (the h2 crate's) that counts requests and ends each as `end` says.
async fn raw_h2_server(
    end: fn(
        &mut h2::server::Connection<tokio::net::TcpStream, bytes::Bytes>,
        h2::server::SendResponse<bytes::Bytes>,
    ),
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_req, respond))) = conn.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    end(&mut conn, respond);
                }
            });
        }
    });
    (addr, hits)
}

/// RST_STREAM REFUSED_STREAM: the server did not process the request, so even a POST is
/// retried on another instance; alone, the failure is a retryable one.
#[tokio::test]
async fn refused_stream_is_retried_for_every_method() {
    let (refuser, refused) = raw_h2_server(|_, mut respond| {
        respond.send_reset(h2::Reason::REFUSED_STREAM);
    })
    .await;
    let b = server(Version::HTTP_2).await;
    let d = StaticDiscovery::new(
        vec![instance("refuser", refuser), instance("b", b.addr)],
        Pick::First,
    );
    let client = ServiceClient::builder(d.clone())
        .http2_prior_knowledge(true)
        .retry(3, Duration::from_millis(1))
        .build()
        .unwrap();
    let resp = client
        .request(Method::POST, "svc", "/orders")
        .body("once")
        .send()
        .await
        .unwrap();
    assert_eq!((resp.instance.id.as_str(), resp.attempts), ("b", 2));
    assert_eq!(refused.load(Ordering::SeqCst), 1);
    assert_eq!(b.bodies(), vec![bytes::Bytes::from_static(b"once")]);
    assert_eq!(
        *d.outcomes.0.lock(),
        vec![
            ("refuser".into(), Outcome::Failure),
            ("b".into(), Outcome::Success)
        ]
    );

    let alone = StaticDiscovery::new(vec![instance("refuser", refuser)], Pick::First);
    let client = ServiceClient::builder(alone)
        .http2_prior_knowledge(true)
        .retry(0, Duration::ZERO)
        .build()
        .unwrap();
    let err = client.post("svc", "/orders", "x").await.unwrap_err();
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
    assert!(err.is_retryable(), "{err}");
}

/// A GOAWAY that ends the connection under a request the server took: it may have been
/// processed, so it is a dropped connection: GET is retried, POST is not (and its error says it
/// may succeed on another try).
#[tokio::test]
async fn goaway_is_a_dropped_connection() {
    let (quitter, quit) = raw_h2_server(|conn, respond| {
        conn.abrupt_shutdown(h2::Reason::INTERNAL_ERROR);
        drop(respond);
    })
    .await;
    let b = server(Version::HTTP_2).await;
    let d = StaticDiscovery::new(
        vec![instance("quitter", quitter), instance("b", b.addr)],
        Pick::First,
    );
    let client = ServiceClient::builder(d)
        .http2_prior_knowledge(true)
        .retry(3, Duration::from_millis(1))
        .no_outlier_detection()
        .build()
        .unwrap();
    let resp = client
        .request(Method::GET, "svc", "/")
        .send()
        .await
        .unwrap();
    assert_eq!((resp.instance.id.as_str(), resp.attempts), ("b", 2));
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
    assert!(err.is_retryable(), "{err}");
    assert_eq!(quit.load(Ordering::SeqCst), 2);
    assert_eq!(b.hits(), 1);
}
