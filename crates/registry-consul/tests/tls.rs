//! https to the agent, trusting a CA given in the configuration.

mod common;

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use waypost_core_types::{Error, ServiceInfo, ServiceRegistry};
use waypost_registry_consul::fake::{FakeConsul, FakeOptions};
use waypost_registry_consul::{ConsulConfig, ConsulRegistry};

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it.
fn pki() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_configured_ca_works_and_an_untrusted_server_is_refused() {
    let (ca, cert, key) = pki();
    let agent = FakeConsul::start(FakeOptions::default().with_tls(cert, key))
        .await
        .unwrap();
    assert!(agent.url().starts_with("https://"));

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let registry = ConsulRegistry::connect(common::fast_config(&agent).with_ca_file(&ca_file))
        .await
        .expect("https with the CA from ca_file");
    registry
        .register(&ServiceInfo::new("tls-1", "tls", "127.0.0.1", 443))
        .await
        .unwrap();
    assert_eq!(registry.list_instances("tls").await.unwrap().len(), 1);
    registry.close().await.unwrap();

    // A bare host:port with a CA means https.
    let bare = agent.url().trim_start_matches("https://").to_owned();
    let registry = ConsulRegistry::connect(
        common::fast_config(&agent)
            .with_address(bare)
            .with_ca_pem(ca.clone()),
    )
    .await
    .expect("https with the CA as PEM text");
    registry.close().await.unwrap();

    // Without our CA (web PKI roots), the server is not trusted.
    let err = ConsulRegistry::connect(
        ConsulConfig::default()
            .with_address(agent.url())
            .with_connect_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "expected a certificate error, got {err}"
    );

    // A CA file that holds no certificate is a configuration error.
    let err = ConsulRegistry::connect(common::fast_config(&agent).with_ca_pem("not a pem"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
}
