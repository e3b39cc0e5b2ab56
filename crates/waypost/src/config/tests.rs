//! Tests of `RegistryConfig`.

use super::*;

fn read(json: &str) -> RegistryConfig {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn read_err(json: &str) -> String {
    match serde_json::from_str::<RegistryConfig>(json) {
        Err(e) => e.to_string(),
        Ok(c) => panic!("{json}: accepted as {c:?}"),
    }
}

/// Serializes, checks the tagged shape, reads back and compares.
fn round_trip(config: RegistryConfig, kind: &str) -> String {
    let json = serde_json::to_string(&config).unwrap();
    assert!(
        json.starts_with(&format!(r#"{{"type":"{kind}","#)),
        "{json}"
    );
    assert_eq!(read(&json), config, "{json}");
    json
}

#[cfg(feature = "memory")]
#[test]
fn memory_round_trip_and_defaults() {
    let c: RegistryConfig = "memory://?cleanup_interval=250ms&default_ttl=30s&watch_buffer=8"
        .parse()
        .unwrap();
    round_trip(c, "memory");
    assert_eq!(
        read("{}"),
        RegistryConfig::default(),
        "no type means memory"
    );
    assert_eq!(
        read(r#"{"type":"memory","memory":null}"#),
        RegistryConfig::default()
    );
    assert_eq!(read(r#"{"type":"MEM"}"#).kind(), RegistryType::Memory);
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_round_trip_and_laravel_go_shape() {
    let c: RegistryConfig = "etcd://h1:2379,h2/svc?ttl=15s&connect_timeout=2s\
         &request_timeout=1500ms&max_backoff=3s&watch_buffer=64&ca_file=/ca.pem\
         &cert_file=/c.pem&key_file=/k.pem&domain_name=etcd.local"
        .parse()
        .unwrap();
    round_trip(c, "etcd");
    // The Laravel-Go module's EtcdConfig: Endpoints, Username, Password, Prefix, TTL.
    let go = read(
        r#"{"type":"etcd","etcd":{"endpoints":["localhost:2379","localhost:2380"],
            "username":"admin","password":"password","prefix":"/laravel-go/services",
            "ttl":30000000000}}"#,
    );
    let RegistryConfig::Etcd(e) = &go else {
        panic!("{go:?}")
    };
    assert_eq!(e.endpoints, ["localhost:2379", "localhost:2380"]);
    assert_eq!(e.username.as_deref(), Some("admin"));
    assert_eq!(e.password.as_ref().map(|p| p.expose()), Some("password"));
    assert_eq!(e.ttl, std::time::Duration::from_secs(30));
    go.validate().unwrap();
    let defaults = read(r#"{"type":"etcd"}"#);
    assert_eq!(defaults, RegistryConfig::Etcd(EtcdConfig::default()));
    assert_eq!(read(r#"{"type":"etcd","etcd":{}}"#), defaults);
}

#[cfg(feature = "consul")]
#[test]
fn consul_round_trip_and_laravel_go_shape() {
    let c: RegistryConfig = "consul://agent:8501/team?scheme=https&datacenter=dc2\
         &ca_file=/ca.pem&ca_pem=PEM&max_response_bytes=4096&watch_buffer=8\
         &foreign_services=skip&ttl=10s&deregister_critical_after=2m&connect_timeout=1s\
         &request_timeout=2s&watch_wait=30s&watch_min_interval=250ms\
         &retry_initial_backoff=100ms&retry_max_backoff=5s"
        .parse()
        .unwrap();
    round_trip(c, "consul");
    // Address, Token, Datacenter, Prefix, TTL.
    let go = read(
        r#"{"type":"consul","consul":{"address":"localhost:8500","token":"consul-token",
            "datacenter":"dc1","prefix":"laravel-go/services","ttl":"30s"}}"#,
    );
    let RegistryConfig::Consul(c) = &go else {
        panic!("{go:?}")
    };
    assert_eq!(c.token.as_ref().map(|t| t.expose()), Some("consul-token"));
    assert_eq!(c.datacenter.as_deref(), Some("dc1"));
    go.validate().unwrap();
}

#[cfg(feature = "nacos")]
#[test]
fn nacos_round_trip_and_laravel_go_shape() {
    let c: RegistryConfig = "nacos://n1,n2:9848?namespace=dev&group=G&cluster=C1\
         &app_name=orders&cache_dir=/tmp/nacos&grpc_port=9999&watch_buffer=8&ttl=45s\
         &connect_timeout=2s&probe_interval=250ms&service_poll_interval=3s"
        .parse()
        .unwrap();
    round_trip(c, "nacos");
    // ServerAddr, Namespace, Group, Username, Password, TTL.
    let go = read(
        r#"{"type":"nacos","nacos":{"server_addr":"localhost:8848","namespace":"public",
            "group":"DEFAULT_GROUP","username":"nacos","password":"nacos","ttl":"30s"}}"#,
    );
    let RegistryConfig::Nacos(n) = &go else {
        panic!("{go:?}")
    };
    assert_eq!(n.server_addr, "localhost:8848");
    assert_eq!(n.password.as_ref().map(|p| p.expose()), Some("nacos"));
    go.validate().unwrap();
}

#[cfg(feature = "zookeeper")]
#[test]
fn zookeeper_round_trip_and_laravel_go_shape() {
    let c: RegistryConfig = "zk://z1,z2:2182/svc?session_timeout=4s&ttl=20s\
         &connect_timeout=3s&max_backoff=2s&chroot=/app&watch_buffer=32"
        .parse()
        .unwrap();
    round_trip(c, "zookeeper");
    // Servers, Prefix, TTL, SessionTimeout; `zk` as the type and as the section name.
    let body = r#"{"servers":["localhost:2181","localhost:2182"],
        "prefix":"/laravel-go/services","ttl":"30s","session_timeout":"10s"}"#;
    let go = read(&format!(r#"{{"type":"zookeeper","zookeeper":{body}}}"#));
    assert_eq!(read(&format!(r#"{{"type":"zk","zookeeper":{body}}}"#)), go);
    assert_eq!(read(&format!(r#"{{"type":"zk","zk":{body}}}"#)), go);
    let RegistryConfig::Zookeeper(z) = &go else {
        panic!("{go:?}")
    };
    assert_eq!(z.session_timeout, std::time::Duration::from_secs(10));
    assert_eq!(z.servers.len(), 2);
    go.validate().unwrap();
    let both = format!(r#"{{"type":"zk","zk":{body},"zookeeper":{body}}}"#);
    assert!(read_err(&both).contains("once"));
}

#[cfg(feature = "full")]
#[test]
fn the_laravel_go_config_with_every_section_uses_the_chosen_one() {
    let c = read(
        r#"{"type":"memory","memory":{"cleanup_interval":"200ms"},
            "etcd":{"endpoints":["localhost:2379"],"password":"etcd-pw"},
            "consul":{"token":"consul-token"},"nacos":null,
            "zookeeper":{"servers":["localhost:2181"]}}"#,
    );
    let RegistryConfig::Memory(m) = &c else {
        panic!("{c:?}")
    };
    assert_eq!(m.cleanup_interval, std::time::Duration::from_millis(200));
    let saved = serde_json::to_string(&c).unwrap();
    assert!(
        !saved.contains("etcd") && !saved.contains("consul"),
        "{saved}"
    );
}

#[cfg(feature = "full")]
#[test]
fn a_saved_config_never_contains_a_secret() {
    for url in [
        "etcd://admin:SeCrEt-1@h:2379",
        "consul://:SeCrEt-1@h:8500",
        "consul://h:8500?token=SeCrEt-1",
        "nacos://nacos:SeCrEt-1@h:8848",
        "zk://alice:SeCrEt-1@h:2181",
    ] {
        let c = RegistryConfig::from_url(url).unwrap();
        let saved = serde_json::to_string(&c).unwrap();
        assert!(!saved.contains("SeCrEt"), "{url}: {saved}");
        assert!(saved.contains(r#""[redacted]""#), "{url}: {saved}");
        assert!(!format!("{c:?}").contains("SeCrEt"), "{url}");
        // Read back, the secret is the placeholder, not the value: give it again.
        let back = read(&saved);
        assert!(!format!("{:?}", serde_json::to_value(&back)).contains("SeCrEt"));
    }
}

#[cfg(feature = "full")]
#[test]
fn urls_dispatch_on_the_scheme() {
    for (url, kind) in [
        ("memory://", RegistryType::Memory),
        ("mem://", RegistryType::Memory),
        ("etcd://h", RegistryType::Etcd),
        ("consul://h", RegistryType::Consul),
        ("nacos://h", RegistryType::Nacos),
        ("zookeeper://h", RegistryType::Zookeeper),
        ("ZK://h", RegistryType::Zookeeper),
    ] {
        assert_eq!(url.parse::<RegistryConfig>().unwrap().kind(), kind, "{url}");
    }
}

#[test]
fn url_errors_never_show_the_password_or_the_url() {
    let unknown = RegistryConfig::from_url("etdc://admin:PASSWORD@h:2379").unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "invalid configuration: registry URL: unknown scheme `etdc` (expected memory, \
         etcd, consul, nacos or zookeeper)"
    );
    #[cfg(feature = "etcd")]
    for url in [
        "etcd:/admin:PASSWORD@h:2379",
        "etcd//admin:PASSWORD@h",
        "admin:PASSWORD@h:2379",
        "etcd://admin:PASSWORD/x@h:2379",
        "etcd://admin:Qz7k/x@h:2379",
        "memory://admin:PASSWORD@",
    ] {
        let e = RegistryConfig::from_url(url).unwrap_err().to_string();
        assert!(
            !e.contains("PASSWORD") && !e.contains("Qz7k") && !e.contains("admin"),
            "{url}: {e}"
        );
        assert!(e.contains("registry URL: "), "{url}: {e}");
    }
    let e = RegistryConfig::from_url("etcd:/admin:PASSWORD@h:2379").unwrap_err();
    assert!(e.to_string().contains("no `scheme://`"), "{e}");
}

#[cfg(feature = "memory")]
#[test]
fn invalid_shapes_are_errors() {
    for (json, want) in [
        (r#"{"type":"redis"}"#, "unknown variant `redis`"),
        (r#"{"type":7}"#, "`type` must be a string"),
        (
            r#"{"type":"memory","colour":"blue"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"type":"memory","default_ttl":"1s","memory":{"cleanup_interval":"1s"}}"#,
            "not both",
        ),
        (r#"{"type":"memory","memory":[1]}"#, "must be a map"),
        (
            r#"{"type":"memory","cleanup_interval":"soon"}"#,
            "invalid duration",
        ),
    ] {
        let e = read_err(json);
        assert!(e.contains(want), "{json}: {e}");
    }
}

/// The Deserialize is not tied to JSON: here a plain map of strings, as serde's own
/// `MapDeserializer` gives it (the shape of an environment or a flat key-value store).
#[cfg(feature = "memory")]
#[test]
fn reads_from_a_non_json_format() {
    use serde::de::value::{Error as ValueError, MapDeserializer};
    let entries = [("type", "memory"), ("default_ttl", "30s")];
    let de = MapDeserializer::<_, ValueError>::new(entries.into_iter());
    let c = RegistryConfig::deserialize(de).unwrap();
    assert_eq!(c, "memory://?default_ttl=30s".parse().unwrap());
}

#[cfg(feature = "full")]
#[test]
fn urls_and_files_choose_a_record_format_and_its_prefix() {
    use waypost_core_types::record::RecordFormat;
    let etcd = |url: &str| match url.parse::<RegistryConfig>().unwrap() {
        RegistryConfig::Etcd(c) => (c.format, c.prefix),
        other => panic!("{url}: {other:?}"),
    };
    let zk = |url: &str| match url.parse::<RegistryConfig>().unwrap() {
        RegistryConfig::Zookeeper(c) => (c.format, c.prefix),
        other => panic!("{url}: {other:?}"),
    };
    assert_eq!(
        etcd("etcd://h:2379?format=kratos"),
        (RecordFormat::Kratos, "/microservices".to_owned())
    );
    assert_eq!(
        etcd("etcd://h:2379/laravel-go/services?format=kratos"),
        (RecordFormat::Kratos, "/laravel-go/services".to_owned())
    );
    assert_eq!(
        etcd("etcd://h:2379?format=go-zero"),
        (RecordFormat::GoZero, String::new())
    );
    assert_eq!(
        zk("zk://h:2181?format=curator"),
        (RecordFormat::Curator, "/services".to_owned())
    );
    assert_eq!(
        zk("zk://h:2181/spring?format=curator"),
        (RecordFormat::Curator, "/spring".to_owned())
    );
    // A config file without a prefix gets the format's default, too.
    match read(r#"{"type":"zookeeper","zookeeper":{"format":"curator"}}"#) {
        RegistryConfig::Zookeeper(c) => assert_eq!(c.prefix, "/services"),
        other => panic!("{other:?}"),
    }
    // Each backend takes only its own formats.
    for bad in ["etcd://h?format=curator", "zk://h?format=kratos"] {
        let err = bad
            .parse::<RegistryConfig>()
            .and_then(|c| c.validate().map(|()| c));
        assert!(err.is_err(), "{bad} was accepted");
    }
}
