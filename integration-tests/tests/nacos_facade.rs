//! The `waypost` facade's `nacos` feature: a `nacos://` URL with the Laravel-Go module's fields
//! builds a working `NacosRegistry` against a Nacos-protocol server (rnacos in CI, or
//! `NACOS_ADDR`).

use waypost::{new_service_registry, Health, RegistryConfig, ServiceInfo};
use waypost_integration_tests::nacos::{start_rnacos, RnacosOptions};
use waypost_integration_tests::require;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rnacos_nacos_url_builds_a_working_registry() {
    let test = "rnacos_nacos_url_builds_a_working_registry";
    let opts = RnacosOptions {
        auth: Some(("waypost-admin".into(), "right-password-123".into())),
    };
    let Some(server) = require(test, start_rnacos(opts).await) else {
        return;
    };
    let group = format!("FACADE_{}", std::process::id());
    // The Laravel-Go module's config, as a URL: one port, never `host:8848:8848`.
    let url = format!(
        "nacos://waypost-admin:right-password-123@{}?namespace=public&group={group}&connect_timeout=5s",
        server.addr()
    );
    let config = RegistryConfig::from_url(&url).expect("parse");
    assert!(!format!("{config:?}").contains("right-password-123"));
    let registry = new_service_registry(&config)
        .await
        .expect("build from the URL");
    assert_eq!(registry.backend(), "nacos");
    let svc = ServiceInfo::new("facade-1", "facade", "127.0.0.1", 8080)
        .with_version("1.2.3")
        .with_health(Health::Healthy);
    registry.register(&svc).await.expect("register");
    let got = registry
        .get_service("facade-1")
        .await
        .expect("get by our id");
    assert_eq!((got.version.as_str(), got.port), ("1.2.3", 8080));
    registry.close().await.expect("close");

    let wrong = format!(
        "nacos://waypost-admin:wrong@{}?group={group}&connect_timeout=5s",
        server.addr()
    );
    match new_service_registry(&RegistryConfig::from_url(&wrong).expect("parse")).await {
        Err(waypost::Error::Auth { .. }) => {}
        other => panic!("expected Error::Auth, got {other:?}"),
    }
}
