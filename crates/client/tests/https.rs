//! https against local rustls servers whose certificate comes from a test CA: HTTP/2 when the
//! server picks `h2` in ALPN, HTTP/1.1 when it offers only `http/1.1` or no ALPN at all.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{pki, trusting_client, Pick, Reply, StaticDiscovery, TestServer};
use http::{Method, Version};
use waypost_client::{HttpClient, ServiceClient};
use waypost_core_types::{Error, Health, Protocol, ServiceInfo};

fn https_instance(id: &str, port: u16) -> ServiceInfo {
    ServiceInfo::new(id, "svc", "localhost", port)
        .with_health(Health::Healthy)
        .with_protocol(Protocol::Https)
}

/// A TLS server offering `alpn` that accepts only requests in `version`.
async fn tls_server(reply: Reply, alpn: &[&[u8]], version: Version) -> TestServer {
    TestServer::serve(reply, Some(pki().acceptor(alpn)), Some(version)).await
}

#[tokio::test]
async fn https_instance_is_called_over_tls() {
    let server = tls_server(
        Reply::Status(200, "secret"),
        &[b"h2", b"http/1.1"],
        Version::HTTP_2,
    )
    .await;
    let d = StaticDiscovery::new(vec![https_instance("tls", server.addr.port())], Pick::First);

    let client = ServiceClient::builder(d.clone())
        .http_client(trusting_client())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert_eq!(client.get("svc", "/").await.unwrap(), "secret");

    // Without the test CA the certificate is not trusted: not a transient failure, so it is not
    // retried (the handshake fails before any request, so only the attempts count).
    let untrusting = ServiceClient::builder(d.clone())
        .retry(3, Duration::from_millis(1))
        .build()
        .unwrap();
    let attempts_before = d.outcomes.0.lock().len();
    let err = untrusting.get("svc", "/").await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(
        d.outcomes.0.lock().len() - attempts_before,
        1,
        "one attempt"
    );
    assert_eq!(server.hits(), 1);
}

/// ALPN `h2`: concurrent calls share one multiplexed connection.
#[tokio::test]
async fn alpn_h2_multiplexes_one_connection_per_instance() {
    let server = tls_server(Reply::Echo, &[b"h2", b"http/1.1"], Version::HTTP_2).await;
    let d = StaticDiscovery::new(vec![https_instance("tls", server.addr.port())], Pick::First);
    let client = ServiceClient::builder(d)
        .http_client(trusting_client())
        .build()
        .unwrap();
    // The first call opens the connection; the next 32 go on it at once.
    assert_eq!(client.post("svc", "/", "0").await.unwrap(), "0");
    let calls: Vec<_> = (1..=32)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.post("svc", "/", i.to_string()).await })
        })
        .collect();
    for (i, call) in (1..=32).zip(calls) {
        assert_eq!(call.await.unwrap().unwrap(), i.to_string());
    }
    assert_eq!(server.hits(), 33);
    assert_eq!(
        server
            .state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// A server that offers only `http/1.1` in ALPN, or no ALPN at all, gets HTTP/1.1 (and the
/// server refuses any other version, so the call would fail over HTTP/2).
#[tokio::test]
async fn https_server_without_h2_gets_http1() {
    for alpn in [&[b"http/1.1".as_slice()][..], &[]] {
        let server = tls_server(Reply::Echo, alpn, Version::HTTP_11).await;
        let d = StaticDiscovery::new(vec![https_instance("tls", server.addr.port())], Pick::First);
        let client = ServiceClient::builder(d)
            .http_client(trusting_client())
            .build()
            .unwrap();
        let resp = client
            .request(Method::PUT, "svc", "/x")
            .body("over http/1.1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.body, "over http/1.1");
        assert_eq!(server.hits(), 1);
    }
}

/// Prior knowledge is for plain http only: an https instance still negotiates by ALPN.
#[tokio::test]
async fn prior_knowledge_leaves_https_to_alpn() {
    let server = tls_server(Reply::Status(200, "ok"), &[b"http/1.1"], Version::HTTP_11).await;
    let d = StaticDiscovery::new(vec![https_instance("tls", server.addr.port())], Pick::First);
    let client = ServiceClient::builder(d)
        .http_client(trusting_client())
        .http2_prior_knowledge(true)
        .build()
        .unwrap();
    assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
}

/// A rustls configuration that brings its own ALPN list is refused with an error (hyper-rustls
/// would panic on it): the client sets ALPN itself.
#[test]
fn tls_config_with_its_own_alpn_is_refused() {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki().roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let err = HttpClient::builder()
        .tls_config(config.clone())
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    assert!(err.to_string().contains("alpn"), "{err}");
    config.alpn_protocols.clear();
    assert!(HttpClient::builder().tls_config(config).build().is_ok());
}
