//! https against a local rustls server whose certificate comes from a test CA.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Pick, Reply, StaticDiscovery, TestServer};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use waypost_client::{HttpClient, ServiceClient};
use waypost_core_types::{Error, Health, Protocol, ServiceInfo};

struct TestPki {
    ca: CertificateDer<'static>,
    acceptor: tokio_rustls::TlsAcceptor,
}

fn pki() -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    TestPki {
        ca: ca_cert.der().clone(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
    }
}

fn https_instance(id: &str, port: u16) -> ServiceInfo {
    ServiceInfo::new(id, "svc", "localhost", port)
        .with_health(Health::Healthy)
        .with_protocol(Protocol::Https)
}

#[tokio::test]
async fn https_instance_is_called_over_tls() {
    let pki = pki();
    let server = TestServer::start_with(Reply::Status(200, "secret"), Some(pki.acceptor)).await;
    let d = StaticDiscovery::new(vec![https_instance("tls", server.addr.port())], Pick::First);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca).unwrap();
    let http = HttpClient::builder()
        .root_certificates(roots)
        .build()
        .unwrap();
    let client = ServiceClient::builder(d.clone())
        .http_client(http)
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
