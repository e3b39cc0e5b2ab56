//! The client's own HTTP/1.1 connection pool: connections are reused, limited, closed when idle
//! too long, and a connection the server closes costs no failed call.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{instance, Pick, Reply, StaticDiscovery, TestServer};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use waypost_client::{HttpClient, ServiceClient};
use waypost_core_types::Error;

fn client_for(addrs: &[SocketAddr], http: HttpClient) -> ServiceClient {
    let instances = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| instance(&format!("i{i}"), *a))
        .collect();
    ServiceClient::builder(StaticDiscovery::new(instances, Pick::RoundRobin))
        .http_client(http)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Waits until `f` holds, for at most five seconds.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn sequential_calls_reuse_one_connection_per_instance() {
    let a = TestServer::start(Reply::Status(200, "a")).await;
    let b = TestServer::start(Reply::Status(200, "b")).await;
    let client = client_for(&[a.addr, b.addr], HttpClient::new().unwrap());
    for _ in 0..20 {
        client.get("svc", "/").await.unwrap();
    }
    assert_eq!((a.hits(), b.hits()), (10, 10));
    assert_eq!(a.state.connections.load(Ordering::SeqCst), 1);
    assert_eq!(b.state.connections.load(Ordering::SeqCst), 1);
    // Error answers read whole give their connection back too.
    a.set(Reply::Status(404, "no such user"));
    b.set(Reply::Status(503, "busy"));
    for _ in 0..4 {
        let e = client
            .request(Method::GET, "svc", "/")
            .max_retries(0)
            .send()
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Http { .. }), "{e}");
    }
    assert_eq!(a.state.connections.load(Ordering::SeqCst), 1);
    assert_eq!(b.state.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_calls_open_connections_up_to_the_idle_limit() {
    let a = TestServer::start(Reply::Status(200, "a")).await;
    let http = HttpClient::builder()
        .pool_max_idle_per_host(2)
        .build()
        .unwrap();
    let client = client_for(&[a.addr], http);
    for _ in 0..3 {
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move { c.get("svc", "/").await.unwrap() })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap(), "a");
        }
    }
    let opened = a.state.connections.load(Ordering::SeqCst);
    // Each burst may open one connection per call, but only two wait between bursts.
    assert!((2..=8 + 6 + 6).contains(&opened), "{opened} connections");
    // Alone, calls take the kept ones.
    let before = a.state.connections.load(Ordering::SeqCst);
    for _ in 0..10 {
        client.get("svc", "/").await.unwrap();
    }
    assert_eq!(a.state.connections.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn zero_idle_keeps_no_connection() {
    let a = TestServer::start(Reply::Status(200, "a")).await;
    for http in [
        HttpClient::builder()
            .pool_idle_timeout(Duration::ZERO)
            .build()
            .unwrap(),
        HttpClient::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
    ] {
        let before = a.state.connections.load(Ordering::SeqCst);
        let client = client_for(&[a.addr], http);
        for _ in 0..5 {
            client.get("svc", "/").await.unwrap();
        }
        assert_eq!(a.state.connections.load(Ordering::SeqCst), before + 5);
    }
}

/// A server that counts its connections and the ones closed by the client, and answers every
/// request with `reply` (raw bytes), then, with `close_after_reply`, closes the connection
/// without saying so.
async fn raw_server(
    reply: &'static [u8],
    close_after_reply: bool,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (o, c) = (opened.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            o.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                        if close_after_reply {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, opened, closed)
}

#[tokio::test]
async fn a_connection_the_server_closes_is_not_reused() {
    // `Connection: close`: hyper closes the connection after the response.
    let (close_header, opened, _) = raw_server(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        false,
    )
    .await;
    let client = client_for(&[close_header], HttpClient::new().unwrap());
    for _ in 0..5 {
        assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    }
    assert_eq!(opened.load(Ordering::SeqCst), 5);

    // Closed silently after each response: the client sees the end of the connection before it
    // needs it again (the calls are sequential), or sends on it, has it fail, and retries.
    let (silent, opened, _) =
        raw_server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
    let client = client_for(&[silent], HttpClient::new().unwrap());
    for _ in 0..5 {
        assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
        // Give the connection's task the time to see the server's close.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(opened.load(Ordering::SeqCst), 5);
    // Back to back, a call may find the connection before its task saw the close.
    for _ in 0..20 {
        assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    }
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let (addr, opened, closed) =
        raw_server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
    let http = HttpClient::builder()
        .pool_idle_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let client = client_for(&[addr], http);
    assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    assert_eq!(opened.load(Ordering::SeqCst), 1, "reused while fresh");
    // No call comes: the pool's timer closes the idle connection.
    until("the idle connection is closed", || {
        closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    assert_eq!(opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_partly_read_response_closes_its_connection() {
    // A body over the limit is not read to its end: its connection cannot carry another request.
    let a = TestServer::start(Reply::Sized(64 * 1024)).await;
    let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
    let client = ServiceClient::builder(d)
        .body_limit(1024)
        .retry(0, Duration::from_millis(1))
        .build()
        .unwrap();
    for _ in 0..3 {
        let e = client.get("svc", "/").await.unwrap_err();
        assert!(matches!(e, Error::BodyTooLarge { .. }), "{e}");
    }
    assert_eq!(a.state.connections.load(Ordering::SeqCst), 3);
    a.set(Reply::Status(200, "ok"));
    assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    assert_eq!(a.state.connections.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let dead = common::dead_addr().await;
    let client = client_for(&[dead], HttpClient::new().unwrap());
    let e = client
        .request(Method::POST, "svc", "/")
        .max_retries(0)
        .send()
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("client error (Connect)"), "{text}");
    assert!(e.is_retryable(), "{text}");
}
