//! The facade: configs, URLs and the builder produce working registries or clear errors.

use std::time::Duration;

use futures_util::StreamExt;
use waypost::{
    new_service_registry, Error, Health, RegistryBuilder, RegistryConfig, RegistryType,
    ServiceInfo, WatchEvent,
};

#[tokio::test]
async fn memory_from_url_registers_discovers_and_watches() {
    let registry = RegistryBuilder::from_url("memory://?cleanup_interval=50ms")
        .build()
        .await
        .unwrap();
    let mut watch = registry.watch_service("orders").await.unwrap();
    assert!(matches!(
        watch.next().await,
        Some(WatchEvent::Snapshot { .. })
    ));
    let svc =
        ServiceInfo::new("orders-1", "orders", "127.0.0.1", 9000).with_health(Health::Healthy);
    registry.register(&svc).await.unwrap();
    assert_eq!(registry.list_instances("orders").await.unwrap().len(), 1);
    match watch.next().await {
        Some(WatchEvent::Change(ev)) => assert_eq!(ev.service.id, "orders-1"),
        other => panic!("{other:?}"),
    }
    registry.close().await.unwrap();
    assert!(matches!(registry.list_services().await, Err(Error::Closed)));
}

#[tokio::test(start_paused = true)]
async fn memory_default_ttl_from_the_builder_applies() {
    let registry = RegistryBuilder::new()
        .with_type(RegistryType::Memory)
        .with_default_ttl(Duration::from_secs(1))
        .with_cleanup_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    assert_eq!(registry.default_ttl(), Some(Duration::from_secs(1)));
    registry
        .register(&ServiceInfo::new("a", "svc", "h", 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(registry.list_services().await.unwrap().is_empty());
}

/// The Laravel-Go module's config carries a section per backend; the chosen one is used, the
/// others are ignored (and not kept: a saved config holds one backend).
#[tokio::test]
async fn config_file_with_laravel_go_fields() {
    let json = r#"{
        "type": "memory",
        "memory": { "cleanup_interval": "200ms" },
        "etcd": { "endpoints": ["localhost:2379", "localhost:2380"], "username": "admin",
                  "password": "password", "prefix": "/laravel-go/services", "ttl": 30000000000 },
        "consul": { "address": "localhost:8500", "token": "consul-token", "datacenter": "dc1",
                    "prefix": "laravel-go/services", "ttl": "30s" },
        "nacos": { "server_addr": "localhost:8848", "namespace": "public", "group": "DEFAULT_GROUP",
                   "username": "nacos", "password": "nacos-pw", "ttl": "30s" },
        "zookeeper": { "servers": ["localhost:2181", "localhost:2182"], "prefix": "/laravel-go/services",
                       "ttl": "30s", "session_timeout": "10s" }
    }"#;
    let config: RegistryConfig = serde_json::from_str(json).unwrap();
    config.validate().unwrap();
    let RegistryConfig::Memory(memory) = &config else {
        panic!("{config:?}")
    };
    assert_eq!(memory.cleanup_interval, Duration::from_millis(200));
    let registry = new_service_registry(&config).await.unwrap();
    assert_eq!(registry.backend(), "memory");
    let debug = format!("{config:?}");
    let saved = serde_json::to_string(&config).unwrap();
    for secret in ["password", "consul-token", "nacos-pw"] {
        assert!(!debug.contains(secret), "{secret} leaked in {debug}");
        assert!(!saved.contains(secret), "{secret} leaked in {saved}");
    }
}

#[cfg(feature = "full")]
#[test]
fn malformed_configs_are_clear_errors() {
    let cases = [
        (r#"{"type":"redis"}"#, "unknown variant"),
        (
            r#"{"type":"etcd","etcd":{"endpoints":[]}}"#,
            "at least one endpoint",
        ),
        (
            r#"{"type":"etcd","etcd":{"endpoints":["h:0"]}}"#,
            "invalid port",
        ),
        (
            r#"{"type":"etcd","etcd":{"prefix":"no-slash"}}"#,
            "must start with `/`",
        ),
        (
            r#"{"type":"etcd","etcd":{"ttl":"forever"}}"#,
            "invalid duration",
        ),
        (
            r#"{"type":"nacos","nacos":{"server_addr":"localhost:8848:8848"}}"#,
            "more than one `:`",
        ),
        (
            r#"{"type":"zookeeper","zookeeper":{"session_timeout":"0s"}}"#,
            "session_timeout",
        ),
        (r#"{"type":"consul","consul":{"prefix":""}}"#, "prefix"),
        (
            r#"{"type":"memory","memory":{"cleanup_interval":"0s"}}"#,
            "cleanup_interval",
        ),
        (r#"{"type":"memory","colour":"blue"}"#, "unknown field"),
        (
            r#"{"type":"etcd","endpoints":["h:2379"],"etcd":{"prefix":"/x"}}"#,
            "not both",
        ),
    ];
    for (json, want) in cases {
        let msg = match serde_json::from_str::<RegistryConfig>(json) {
            Err(e) => e.to_string(),
            Ok(c) => match c.validate() {
                Err(Error::InvalidConfig(m)) => m,
                other => panic!("{json}: expected an error, got {other:?}"),
            },
        };
        assert!(
            msg.contains(want),
            "{json}: `{msg}` should mention `{want}`"
        );
    }
}

#[cfg(feature = "etcd")]
#[tokio::test]
async fn misapplied_builder_setters_fail_at_build() {
    let err = RegistryBuilder::new()
        .with_etcd(["localhost:2379"], "/laravel-go/services")
        .with_token("t")
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("with_token applies to consul"),
        "{err}"
    );
    let err = RegistryBuilder::from_url("etcd://h:99999")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}

#[test]
fn builder_debug_never_shows_a_url_or_a_secret() {
    // A URL that fails to parse is kept as its parse error only.
    let b = RegistryBuilder::from_url("etcd://admin:Qz7k/x@h:2379");
    let debug = format!("{b:?}");
    assert!(
        !debug.contains("Qz7k") && !debug.contains("admin"),
        "{debug}"
    );
    let err = b.config().unwrap_err().to_string();
    assert!(!err.contains("Qz7k"), "{err}");
    let b = RegistryBuilder::from_url("memory://?default_ttl=30s");
    assert!(!format!("{b:?}").contains("memory://"));
    #[cfg(feature = "etcd")]
    {
        let b = RegistryBuilder::from_url("etcd://admin:s3cret@h:2379")
            .with_credentials("root", "hunter2");
        let debug = format!("{b:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("hunter2"),
            "{debug}"
        );
    }
}

#[cfg(not(feature = "etcd"))]
#[tokio::test]
async fn a_backend_not_compiled_in_is_unsupported() {
    let err = RegistryBuilder::new()
        .with_etcd(["localhost:2379"], "/laravel-go/services")
        .build()
        .await
        .unwrap_err();
    match err {
        Error::Unsupported(msg) => assert!(msg.contains("`etcd` feature"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[cfg(feature = "full")]
#[test]
fn laravel_go_builder_chains_produce_the_laravel_go_configs() {
    let c = RegistryBuilder::new()
        .with_type(RegistryType::Nacos)
        .with_nacos("localhost:8848", "public", "DEFAULT_GROUP")
        .with_credentials("nacos", "nacos")
        .config()
        .unwrap();
    let RegistryConfig::Nacos(n) = c else {
        panic!("{c:?}")
    };
    assert_eq!(n.server_addr, "localhost:8848");
    assert_eq!(n.password.as_ref().map(|p| p.expose()), Some("nacos"));
    let c = RegistryBuilder::new()
        .with_type(RegistryType::Consul)
        .with_consul("localhost:8500", "laravel-go/services")
        .with_token("consul-token")
        .with_datacenter("dc1")
        .config()
        .unwrap();
    let RegistryConfig::Consul(consul) = c else {
        panic!("{c:?}")
    };
    assert_eq!(consul.datacenter.as_deref(), Some("dc1"));
    let c = RegistryBuilder::new()
        .with_zookeeper(["localhost:2181"], "/laravel-go/services")
        .with_session_timeout(Duration::from_secs(4))
        .with_connect_timeout(Duration::from_secs(2))
        .config()
        .unwrap();
    assert_eq!(c.kind(), RegistryType::Zookeeper);
    // Choosing the type again keeps what was set; choosing another starts from its defaults.
    let c = RegistryBuilder::new()
        .with_etcd(["h:2379"], "/svc")
        .with_type(RegistryType::Etcd)
        .config()
        .unwrap();
    let RegistryConfig::Etcd(e) = c else {
        panic!("{c:?}")
    };
    assert_eq!((e.endpoints.len(), e.prefix.as_str()), (1, "/svc"));
    let err = RegistryBuilder::new()
        .with_ttl(Duration::from_secs(1))
        .config()
        .unwrap_err();
    assert!(err.to_string().contains("use with_default_ttl"), "{err}");
}
