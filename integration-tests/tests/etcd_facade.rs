//! The `waypost` facade's `etcd` feature: an `etcd://` URL builds a working `EtcdRegistry`
//! against a real etcd, including credentials from the URL.

use std::time::Duration;

use waypost::{new_service_registry, RegistryConfig, ServiceInfo};
use waypost_core_types::Error;
use waypost_integration_tests::etcd::{etcd_available, EtcdServer};
use waypost_integration_tests::require;

#[tokio::test]
async fn etcd_url_builds_a_working_registry() {
    let test = "etcd_url_builds_a_working_registry";
    if require(test, etcd_available()).is_none() {
        return;
    }
    let etcd = EtcdServer::start().await.expect("start etcd");
    let prefix = format!("/waypost-facade/{}", std::process::id());
    let url = format!(
        "etcd://127.0.0.1:{}{prefix}?ttl=5s&connect_timeout=2s",
        etcd.client_port()
    );
    let config = RegistryConfig::from_url(&url).expect("parse the etcd URL");
    let registry = new_service_registry(&config)
        .await
        .expect("build from the URL");
    assert_eq!(registry.backend(), "etcd");
    assert_eq!(registry.default_ttl(), Some(Duration::from_secs(5)));

    registry
        .register(&ServiceInfo::new("facade-1", "facade", "127.0.0.1", 8080))
        .await
        .expect("register");
    let raw = etcd
        .etcdctl(&[
            "get",
            &format!("{prefix}/facade/facade-1"),
            "--print-value-only",
        ])
        .expect("etcdctl get");
    assert!(
        raw.contains(r#""id":"facade-1""#),
        "stored under the URL's prefix: {raw}"
    );
    assert_eq!(
        registry.list_instances("facade").await.expect("list").len(),
        1
    );
    registry.close().await.expect("close");

    // Credentials in the URL reach etcd: wrong ones are an authentication error.
    etcd.enable_auth("pw").expect("enable auth");
    let bad = RegistryConfig::from_url(&format!(
        "etcd://root:nope@127.0.0.1:{}{prefix}",
        etcd.client_port()
    ))
    .expect("parse");
    match new_service_registry(&bad).await {
        Err(Error::Auth { .. }) => {}
        other => panic!("expected Error::Auth, got {other:?}"),
    }
    let good = RegistryConfig::from_url(&format!(
        "etcd://root:pw@127.0.0.1:{}{prefix}",
        etcd.client_port()
    ))
    .expect("parse");
    let registry = new_service_registry(&good)
        .await
        .expect("right credentials");
    assert!(registry.list_services().await.expect("list").is_empty());
    registry.close().await.expect("close");

    // The Laravel-Go module's config file reaches the same etcd, credentials included; saving
    // the config writes the password as a placeholder.
    let file = format!(
        r#"{{"type":"etcd","etcd":{{"endpoints":["127.0.0.1:{}"],"username":"root",
            "password":"pw","prefix":"{prefix}","ttl":"5s"}}}}"#,
        etcd.client_port()
    );
    let from_file: RegistryConfig = serde_json::from_str(&file).expect("read the config file");
    let saved = serde_json::to_string(&from_file).expect("save");
    assert!(
        saved.contains(r#""password":"[redacted]""#) && !saved.contains(r#""pw""#),
        "{saved}"
    );
    let registry = new_service_registry(&from_file)
        .await
        .expect("build from the config file");
    assert!(registry.list_services().await.expect("list").is_empty());
    registry.close().await.expect("close");
}
