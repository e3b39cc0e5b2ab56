//! go-kratos and go-zero services in etcd, against a real etcd 3.4: records written with the
//! real `etcdctl` in each framework's exact bytes are listed, watched and called through
//! waypost; records waypost writes decode by the framework's own rules; the conformance suite
//! runs with `format=kratos`, `format=go-zero` and `format=auto`.
//!
//! The byte formats come from the frameworks' sources:
//! - go-kratos: `go-kratos/kratos` `contrib/registry/etcd/registry.go` (key
//!   `<namespace>/<name>/<id>`, namespace `/microservices`, a lease), `contrib/registry/etcd/service.go`
//!   (`json.Marshal` of `registry.ServiceInstance`, `registry/registry.go`: `id`, `name`,
//!   `version`, `metadata`, `endpoints`), `internal/endpoint/endpoint.go` (`ParseEndpoint`:
//!   the host of the first endpoint whose scheme is the one asked for).
//! - go-zero: `zeromicro/go-zero` `core/discov/publisher.go` (the value is the listen address,
//!   put under a lease), `core/discov/clients.go` (`makeEtcdKey`: `<key>/<id>` with the lease id
//!   in decimal), `core/discov/internal/registry.go` and `core/discov/subscriber.go` (every
//!   value under `<key>/` is an address to dial).
//!
//! Every test starts its own etcd on free loopback ports. Without etcd installed they print
//! `SKIPPED` (or fail with `CI=true`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use waypost::{CachedDiscovery, RegistryBuilder, RoundRobin, ServiceClient, ServiceDiscovery};
use waypost_core_types::conformance::{self, ConformanceOptions, KeptFields};
use waypost_core_types::record::{RecordFormat, FORMAT_KEY};
use waypost_core_types::{
    Error, Health, Protocol, RegistryState, ServiceEventType, ServiceInfo, ServiceRegistry,
    SnapshotReason, WatchEvent, WatchStream,
};
use waypost_integration_tests::etcd::{etcd_available, EtcdServer};
use waypost_integration_tests::require;
use waypost_registry_etcd::{EtcdConfig, EtcdRegistry};

const WAIT: Duration = Duration::from_secs(10);

async fn server(test: &str) -> Option<EtcdServer> {
    require(test, etcd_available())?;
    Some(EtcdServer::start().await.expect("start etcd"))
}

/// A registry through the facade, from an `etcd://` URL.
async fn facade(etcd: &EtcdServer, path_and_query: &str) -> Arc<dyn ServiceRegistry> {
    let url = format!("etcd://127.0.0.1:{}{path_and_query}", etcd.client_port());
    RegistryBuilder::from_url(&url)
        .build()
        .await
        .expect("registry from the URL")
}

/// An HTTP server on a free loopback port answering `GET /hello` with `body`.
async fn http_server(body: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("bound").port();
    let app = axum::Router::new().route("/hello", axum::routing::get(move || async move { body }));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, task)
}

/// `etcdctl lease grant <ttl>`: the lease id (etcdctl prints it in hex).
fn grant(etcd: &EtcdServer, ttl: u32) -> i64 {
    let out = etcd
        .etcdctl(&["lease", "grant", &ttl.to_string()])
        .expect("lease grant");
    // "lease 694d7b2a1ccb8f0a granted with TTL(30s)"
    let hex = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected etcdctl output: {out}"));
    i64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("lease id {hex:?}: {e}"))
}

async fn initial_snapshot(watch: &mut WatchStream) -> Vec<ServiceInfo> {
    match tokio::time::timeout(WAIT, watch.next()).await {
        Ok(Some(WatchEvent::Snapshot {
            services,
            reason: SnapshotReason::Initial,
        })) => services,
        other => panic!("expected the initial snapshot, got {other:?}"),
    }
}

async fn next_change(watch: &mut WatchStream) -> (ServiceEventType, ServiceInfo) {
    match tokio::time::timeout(WAIT, watch.next()).await {
        Ok(Some(WatchEvent::Change(ev))) => (ev.kind, ev.service),
        other => panic!("expected a change, got {other:?}"),
    }
}

/// `registry.ServiceInstance` as go-kratos declares it (`registry/registry.go`).
#[derive(Debug)]
struct KratosInstance {
    id: String,
    name: String,
    version: String,
    metadata: Option<BTreeMap<String, String>>,
    endpoints: Option<Vec<String>>,
}

/// `json.Unmarshal` into `registry.ServiceInstance`, strictly: exactly kratos' five fields
/// (nothing of ours in the wrong place), each of its Go type.
fn kratos_unmarshal(raw: &str) -> KratosInstance {
    let v: serde_json::Value = serde_json::from_str(raw).expect("JSON");
    let obj = v.as_object().expect("an object");
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["endpoints", "id", "metadata", "name", "version"]);
    let text = |k: &str| {
        obj[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k}: string"))
            .to_owned()
    };
    KratosInstance {
        id: text("id"),
        name: text("name"),
        version: text("version"),
        metadata: obj["metadata"].as_object().map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string value").to_owned()))
                .collect()
        }),
        endpoints: obj["endpoints"].as_array().map(|a| {
            a.iter()
                .map(|e| e.as_str().expect("string endpoint").to_owned())
                .collect()
        }),
    }
}

/// kratos' `endpoint.ParseEndpoint`: the host (`host:port`) of the first endpoint with
/// `scheme`.
fn kratos_parse_endpoint(endpoints: &[String], scheme: &str) -> Option<String> {
    endpoints.iter().find_map(|e| {
        let (s, rest) = e.split_once("://")?;
        (s == scheme).then(|| rest.split(['/', '?']).next().unwrap_or(rest).to_owned())
    })
}

#[tokio::test]
async fn kratos_records_from_etcdctl_are_listed_watched_and_called() {
    let Some(etcd) = server("kratos_records_from_etcdctl_are_listed_watched_and_called").await
    else {
        return;
    };
    let (http_port, http_task) = http_server("hello from kratos").await;
    // No prefix in the URL: kratos' default namespace, `/microservices`.
    let registry = facade(&etcd, "?format=kratos&ttl=5s").await;
    let mut watch = registry.watch().await.expect("watch");
    assert!(initial_snapshot(&mut watch).await.is_empty());

    // What kratos' etcd registry puts for an app with an HTTP and a gRPC server.
    let id = "0b5f3f0e-7a4c-11ef-9d1a-0242ac120002";
    let key = format!("/microservices/users/{id}");
    let value = format!(
        r#"{{"id":"{id}","name":"users","version":"v1.3.0","metadata":{{"region":"local","team":"accounts"}},"endpoints":["http://127.0.0.1:{http_port}","grpc://127.0.0.1:9000"]}}"#
    );
    let lease = grant(&etcd, 30);
    etcd.etcdctl(&["put", &key, &value, &format!("--lease={lease:x}")])
        .expect("put the kratos record");
    // A gRPC-only kratos app.
    let grpc_value = r#"{"id":"orders-1","name":"orders","version":"v0.9.0","metadata":null,"endpoints":["grpc://127.0.0.1:9001"]}"#;
    etcd.etcdctl(&["put", "/microservices/orders/orders-1", grpc_value])
        .expect("put the gRPC record");
    // Garbage in kratos' namespace is skipped.
    for (k, v) in [
        ("/microservices/users/broken-1", "not json"),
        (
            "/microservices/users/broken-2",
            r#"{"id":"broken-2","name":"users","endpoints":["http://127.0.0.1"]}"#,
        ),
        (
            "/microservices/users/broken-3",
            r#"{"id":"x","name":"users","endpoints":["http://h:1"]}"#,
        ),
    ] {
        etcd.etcdctl(&["put", k, v]).expect("put garbage");
    }

    let (kind, created) = next_change(&mut watch).await;
    assert_eq!(kind, ServiceEventType::Created);
    assert_eq!(created.id, id);
    let (kind, orders) = next_change(&mut watch).await;
    assert_eq!(
        (kind, orders.id.as_str()),
        (ServiceEventType::Created, "orders-1")
    );
    assert_eq!(
        (orders.address.as_str(), orders.port, orders.protocol),
        ("127.0.0.1", 9001, Protocol::Grpc)
    );

    let listed = registry.list_instances("users").await.expect("list");
    assert_eq!(listed.len(), 1, "garbage skipped: {listed:?}");
    let users = &listed[0];
    assert_eq!(users, &created, "watch and list agree");
    assert_eq!((users.id.as_str(), users.name.as_str()), (id, "users"));
    assert_eq!(
        (users.address.as_str(), users.port, users.protocol),
        ("127.0.0.1", http_port, Protocol::Http)
    );
    assert_eq!(users.version, "v1.3.0");
    assert_eq!(users.health, Health::Unknown);
    let metadata: Vec<(&str, &str)> = users
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let endpoints = format!(r#"["http://127.0.0.1:{http_port}","grpc://127.0.0.1:9000"]"#);
    assert_eq!(
        metadata,
        [
            ("kratos.endpoints", endpoints.as_str()),
            ("region", "local"),
            ("team", "accounts")
        ]
    );
    assert_eq!(registry.get_service(id).await.expect("get_service"), *users);
    assert_eq!(registry.list_services().await.expect("list all").len(), 2);

    // A ServiceClient built on the facade's registry calls the kratos instance.
    let discovery = Arc::new(CachedDiscovery::new(
        Arc::clone(&registry),
        Arc::new(RoundRobin::new()),
    ));
    let client = ServiceClient::builder(discovery as Arc<dyn ServiceDiscovery>)
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let body = client.get("users", "/hello").await.expect("call users");
    assert_eq!(&body[..], b"hello from kratos");

    // kratos deregisters by deleting the key (or the lease expires): Deleted.
    etcd.etcdctl(&["lease", "revoke", &format!("{lease:x}")])
        .expect("revoke");
    let (kind, gone) = next_change(&mut watch).await;
    assert_eq!((kind, gone.id.as_str()), (ServiceEventType::Deleted, id));
    registry.close().await.expect("close");
    http_task.abort();
}

#[tokio::test]
async fn kratos_records_waypost_writes_decode_by_kratos_rules() {
    let Some(etcd) = server("kratos_records_waypost_writes_decode_by_kratos_rules").await else {
        return;
    };
    let registry = facade(&etcd, "?format=kratos&ttl=10s").await;
    let info = ServiceInfo::new("users-w1", "users", "127.0.0.1", 8080)
        .with_version("v2.0.0")
        .with_health(Health::Healthy)
        .with_metadata("team", "core")
        .with_tag("api");
    registry.register(&info).await.expect("register");

    let stored = etcd.get_prefix("/microservices/").expect("etcdctl get");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].key, "/microservices/users/users-w1");
    assert_ne!(stored[0].lease, 0, "kept alive by a lease, as kratos does");
    let raw = &stored[0].value;

    // Decoded as kratos decodes it (json.Unmarshal into registry.ServiceInstance).
    let si = kratos_unmarshal(raw);
    assert_eq!((si.id.as_str(), si.name.as_str()), ("users-w1", "users"));
    assert_eq!(si.version, "v2.0.0");
    let endpoints = si.endpoints.expect("endpoints");
    assert_eq!(endpoints, ["http://127.0.0.1:8080"]);
    assert_eq!(
        kratos_parse_endpoint(&endpoints, "http").as_deref(),
        Some("127.0.0.1:8080"),
        "kratos' HTTP resolver finds the endpoint"
    );
    assert_eq!(kratos_parse_endpoint(&endpoints, "grpc"), None);
    let md = si.metadata.expect("metadata");
    // The exact bytes: field order as json.Marshal writes the struct, map keys sorted.
    let t = |k: &str| {
        md.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{k} in {md:?}"))
    };
    let expected = format!(
        r#"{{"id":"users-w1","name":"users","version":"v2.0.0","metadata":{{"team":"core","waypost.created_at":"{}","waypost.health":"healthy","waypost.last_check":"{}","waypost.tags":"[\"api\"]","waypost.ttl":"10000000000","waypost.updated_at":"{}"}},"endpoints":["http://127.0.0.1:8080"]}}"#,
        t("waypost.created_at"),
        t("waypost.last_check"),
        t("waypost.updated_at"),
    );
    assert_eq!(raw, &expected);

    // Read back by waypost: what was registered.
    let back = registry.get_service("users-w1").await.expect("get");
    assert_eq!(
        (
            back.version.as_str(),
            back.health,
            back.protocol,
            back.tags.clone()
        ),
        (
            "v2.0.0",
            Health::Healthy,
            Protocol::Http,
            vec!["api".to_owned()]
        )
    );
    assert_eq!(back.metadata.len(), 1, "{:?}", back.metadata);
    assert_eq!(back.metadata.get("team").map(String::as_str), Some("core"));

    // Instances whose metadata uses the format's own keys are refused, and nothing changes.
    let clash = info.clone().with_metadata("waypost.health", "healthy");
    assert!(matches!(
        registry.register(&clash).await,
        Err(Error::InvalidInstance(_))
    ));
    registry.close().await.expect("close");
    assert!(etcd.get_prefix("/microservices/").expect("get").is_empty());
}

#[tokio::test]
async fn go_zero_records_from_etcdctl_are_listed_watched_and_called_over_grpc() {
    let Some(etcd) =
        server("go_zero_records_from_etcdctl_are_listed_watched_and_called_over_grpc").await
    else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("bound").port();
    // No prefix: go-zero's keys at the root of the key space, `<Etcd.Key>/<id>`.
    let registry = facade(&etcd, "?format=go-zero&ttl=5s").await;
    let mut watch = registry.watch_service("user.rpc").await.expect("watch");
    assert!(initial_snapshot(&mut watch).await.is_empty());

    // What go-zero's publisher puts: `<key>/<lease id in decimal>` -> `host:port`, on the lease.
    let lease = grant(&etcd, 30);
    let key = format!("user.rpc/{lease}");
    let endpoint = format!("127.0.0.1:{port}");
    etcd.etcdctl(&["put", &key, &endpoint, &format!("--lease={lease:x}")])
        .expect("put the go-zero record");
    // `WithId(7)` gives a fixed id; an IPv6 listener is written in brackets.
    etcd.etcdctl(&["put", "user.rpc/7", "[::1]:8081"])
        .expect("put the second record");
    // Not go-zero records: skipped.
    for (k, v) in [
        ("user.rpc/8", "no-port"),
        ("user.rpc/9", "::1:80"),
        ("user.rpc/10/extra", "127.0.0.1:80"),
        ("/user.rpc/11", "127.0.0.1:80"),
    ] {
        etcd.etcdctl(&["put", k, v]).expect("put garbage");
    }

    let (kind, first) = next_change(&mut watch).await;
    assert_eq!(kind, ServiceEventType::Created);
    assert_eq!(first.id, lease.to_string());
    let (kind, second) = next_change(&mut watch).await;
    assert_eq!((kind, second.id.as_str()), (ServiceEventType::Created, "7"));
    assert_eq!((second.address.as_str(), second.port), ("::1", 8081));

    let mut listed = registry.list_instances("user.rpc").await.expect("list");
    listed.sort_by_key(|a| a.id.len());
    assert_eq!(listed.len(), 2, "garbage skipped: {listed:?}");
    let got = &listed[1];
    assert_eq!(got, &first, "watch and list agree");
    assert_eq!(
        (got.name.as_str(), got.address.as_str(), got.port),
        ("user.rpc", "127.0.0.1", port)
    );
    assert_eq!(
        got.protocol,
        Protocol::Grpc,
        "go-zero registers zrpc (gRPC) servers"
    );
    assert_eq!(got.health, Health::Unknown);
    assert!(got.metadata.is_empty() && got.version.is_empty() && got.tags.is_empty());
    assert_eq!(registry.list_services().await.expect("all").len(), 2);

    // The record go-zero registered is called over gRPC through waypost's channel: a gRPC
    // server (tonic-health's service) on the listener, and only the lease's record in the
    // service (the `[::1]:8081` one has no server behind it).
    let server = grpc_health_server(listener);
    etcd.etcdctl(&["del", "user.rpc/7"])
        .expect("del the second record");
    let (kind, _) = next_change(&mut watch).await;
    assert_eq!(kind, ServiceEventType::Deleted);
    let discovery: Arc<dyn ServiceDiscovery> = Arc::new(CachedDiscovery::new(
        Arc::clone(&registry),
        Arc::new(RoundRobin::new()),
    ));
    let channel = waypost::grpc::channel(Arc::clone(&discovery), "user.rpc").expect("channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("a gRPC call to the go-zero record");
    assert_eq!(
        answer.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // The HTTP service client says plainly that it does not speak gRPC.
    let client = ServiceClient::builder(discovery)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    match client.get("user.rpc", "/").await {
        Err(Error::Unsupported(why)) => assert!(why.contains("grpc"), "{why}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }

    etcd.etcdctl(&["del", &key]).expect("del");
    let (kind, gone) = next_change(&mut watch).await;
    assert_eq!(
        (kind, gone.id),
        (ServiceEventType::Deleted, lease.to_string())
    );
    server.abort();
    registry.close().await.expect("close");
}

/// tonic-health's gRPC service on `listener`, SERVING; abort the handle to stop it.
fn grpc_health_server(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let (reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    })
}

#[tokio::test]
async fn go_zero_records_waypost_writes_are_what_go_zero_reads() {
    let Some(etcd) = server("go_zero_records_waypost_writes_are_what_go_zero_reads").await else {
        return;
    };
    let registry = facade(&etcd, "?format=go-zero&ttl=10s").await;
    let info = ServiceInfo::new("1001", "user.rpc", "127.0.0.1", 9090)
        .with_protocol(Protocol::Grpc)
        .with_version("lost in this format");
    registry.register(&info).await.expect("register");
    let v6 = ServiceInfo::new("1002", "user.rpc", "::1", 9091).with_protocol(Protocol::Grpc);
    registry.register(&v6).await.expect("register v6");

    // go-zero's subscriber reads every value under `<key>/` (makeKeyPrefix) and dials it.
    let stored = etcd.get_prefix("user.rpc/").expect("etcdctl get");
    let pairs: Vec<(&str, &str)> = stored
        .iter()
        .map(|s| (s.key.as_str(), s.value.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("user.rpc/1001", "127.0.0.1:9090"),
            ("user.rpc/1002", "[::1]:9091")
        ]
    );
    assert!(
        stored.iter().all(|s| s.lease != 0),
        "on a lease, as go-zero's publisher does"
    );
    // go-zero's extractId: the second `/`-separated field of the key.
    let ids: Vec<&str> = stored
        .iter()
        .filter_map(|s| s.key.split('/').filter(|f| !f.is_empty()).nth(1))
        .collect();
    assert_eq!(ids, ["1001", "1002"]);

    let back = registry.get_service("1001").await.expect("get");
    assert_eq!(back.endpoint(), "127.0.0.1:9090");
    assert_eq!(back.protocol, Protocol::Grpc);
    registry.close().await.expect("close");
    assert!(etcd.get_prefix("user.rpc/").expect("get").is_empty());
}

#[tokio::test]
async fn auto_reads_every_format_under_the_prefix() {
    let Some(etcd) = server("auto_reads_every_format_under_the_prefix").await else {
        return;
    };
    let registry = facade(&etcd, "/shared?format=auto&ttl=5s").await;
    let mut watch = registry.watch_service("mixed").await.expect("watch");
    assert!(initial_snapshot(&mut watch).await.is_empty());
    let kratos = r#"{"id":"k-1","name":"mixed","version":"v1","metadata":{"lang":"go"},"endpoints":["http://127.0.0.1:7001"]}"#;
    etcd.etcdctl(&["put", "/shared/mixed/k-1", kratos])
        .expect("put");
    etcd.etcdctl(&["put", "/shared/mixed/z-1", "127.0.0.1:7002"])
        .expect("put");
    etcd.etcdctl(&["put", "/shared/mixed/junk", "{\"id\":"])
        .expect("put");
    registry
        .register(&ServiceInfo::new("w-1", "mixed", "127.0.0.1", 7003))
        .await
        .expect("register");
    let mut created = Vec::new();
    while created.len() < 3 {
        let (kind, s) = next_change(&mut watch).await;
        assert_eq!(kind, ServiceEventType::Created);
        created.push(s.id);
    }
    assert_eq!(created, ["k-1", "z-1", "w-1"]);

    let mut listed = registry.list_instances("mixed").await.expect("list");
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    let marks: Vec<(&str, Option<&str>, u16)> = listed
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                s.metadata.get(FORMAT_KEY).map(String::as_str),
                s.port,
            )
        })
        .collect();
    assert_eq!(
        marks,
        [
            ("k-1", Some("kratos"), 7001),
            ("w-1", None, 7003),
            ("z-1", Some("go-zero"), 7002)
        ]
    );
    // auto writes the Laravel-Go module's JSON.
    let raw = etcd
        .etcdctl(&["get", "/shared/mixed/w-1", "--print-value-only"])
        .expect("get");
    let written = ServiceInfo::from_json(raw.trim_end().as_bytes()).expect("Laravel-Go JSON");
    assert_eq!(written.id, "w-1");
    registry.close().await.expect("close");
}

async fn conformance_in(format: RecordFormat, prefix: &str, opts: ConformanceOptions) {
    let test = format!("conformance_{format}");
    let Some(etcd) = server(&test).await else {
        return;
    };
    let config = EtcdConfig::new([etcd.endpoint()])
        .with_format(format)
        .with_prefix(prefix)
        .with_ttl(Duration::from_secs(5))
        .with_connect_timeout(Duration::from_secs(3))
        .with_max_backoff(Duration::from_millis(500));
    let registry = EtcdRegistry::connect(config).await.expect("connect");
    conformance::run_all(&registry, &opts).await;
    assert_eq!(registry.state(), RegistryState::Closed);
}

#[tokio::test]
async fn conformance_kratos() {
    conformance_in(
        RecordFormat::Kratos,
        RecordFormat::Kratos.default_prefix(),
        ConformanceOptions::default(),
    )
    .await;
}

#[tokio::test]
async fn conformance_go_zero() {
    // At go-zero's root, with the reduced comparison the format calls for (it keeps only
    // `host:port` under a key naming the instance).
    conformance_in(
        RecordFormat::GoZero,
        RecordFormat::GoZero.default_prefix(),
        ConformanceOptions::default().with_kept(KeptFields::AddressOnly),
    )
    .await;
}

#[tokio::test]
async fn conformance_auto() {
    conformance_in(
        RecordFormat::Auto,
        "/waypost-auto",
        ConformanceOptions::default(),
    )
    .await;
}
