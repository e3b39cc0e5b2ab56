//! Nacos records of other clients, and waypost's records as other clients read them, against a
//! real Nacos-protocol server (rnacos, started per test; or `NACOS_ADDR`).
//!
//! Other clients' records are registered here by plain HTTP through the Nacos open API, in the
//! exact shape those clients send:
//!
//! - `nacos-sdk-go` 1.x registers every instance with `POST /nacos/v1/ns/instance` and the form
//!   fields `namespaceId, serviceName (group@@name), groupName, app, clusterName, ip, port,
//!   weight, enable, healthy, metadata (the map as one JSON object), ephemeral`, and keeps an
//!   ephemeral instance alive with `PUT /nacos/v1/ns/instance/beat` (`namespaceId, serviceName,
//!   beat` = the JSON of its `BeatInfo`), every 5 s by default (`nacos-group/nacos-sdk-go`, branch
//!   `v1.x-dev`: `clients/naming_client/naming_client.go` `RegisterInstance`,
//!   `clients/naming_client/naming_proxy.go` `RegisterInstance` and `SendBeat`). 2.x sends the
//!   same fields for persistent instances (`clients/naming_client/naming_http/
//!   naming_http_proxy.go` `RegisterInstance`) and ephemeral ones over gRPC
//!   (`clients/naming_client/naming_proxy_delegate.go` `getExecuteClientProxy`); the server
//!   stores the same instance either way.
//! - go-kratos' Nacos registry, on `nacos-sdk-go` 1.x, names the service `<name>.<scheme>` and adds
//!   the metadata `kind` (the endpoint's scheme) and `version` (`go-kratos/kratos`,
//!   `contrib/registry/nacos/registry.go` `Register`). go-micro's adds `version`
//!   (`micro/plugins`, `v4/registry/nacos/nacos.go` `Register`).
//! - Spring Cloud Alibaba registers the metadata map that `NacosDiscoveryProperties#init` fills:
//!   `preserved.register.source=SPRING_CLOUD` always, `secure=true` when
//!   `spring.cloud.nacos.discovery.secure=true`, and the user's
//!   `spring.cloud.nacos.discovery.metadata.*` entries, with weight 1.0, cluster `DEFAULT`,
//!   ephemeral (`alibaba/spring-cloud-alibaba`, `spring-cloud-alibaba-starters/
//!   spring-cloud-starter-alibaba-nacos-discovery/src/main/java/com/alibaba/cloud/nacos/
//!   NacosDiscoveryProperties.java` and `…/nacos/registry/NacosServiceRegistry.java`
//!   `getNacosInstanceFromRegistration`). Its Java client speaks gRPC to Nacos 2.x; the server
//!   stores the same instance as from the open API, so the open API stands in for it here.
//!
//! Without rnacos (and without `NACOS_ADDR`) the tests print `SKIPPED` and pass, unless
//! `CI=true`, where they fail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypost::{
    CachedDiscovery, Health, Protocol, RegistryBuilder, RoundRobin, ServiceClient,
    ServiceDiscovery, ServiceEventType, ServiceInfo, ServiceRegistry, WatchEvent, WatchStream,
};
use waypost_integration_tests::nacos::nacos_target;
use waypost_integration_tests::{free_port, require, wait_until};

const GROUP: &str = "DEFAULT_GROUP";
const LIMIT: Duration = Duration::from_secs(15);

fn unique(what: &str) -> String {
    waypost_core_types::conformance::unique_name(what)
}

/// A registry built by the `waypost` facade from a `nacos://` URL, with its own SDK cache dir.
async fn facade_registry(addr: &str, cache: &tempfile::TempDir) -> Arc<dyn ServiceRegistry> {
    let url = format!(
        "nacos://{addr}?connect_timeout=5s&cache_dir={}",
        cache.path().display()
    );
    RegistryBuilder::from_url(&url)
        .build()
        .await
        .expect("build the Nacos registry from its URL")
}

// ---------------------------------------------------------------------------------------------
// The Nacos open API by plain HTTP (HTTP/1.0, one request per connection).

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn form(fields: &[(&str, String)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// One request to the server at `addr` (`host:port`); the status and the body.
async fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(body) = body {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        req.push_str("\r\n");
    }
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        stream.read_to_end(&mut resp).await?;
        Ok::<_, std::io::Error>(resp)
    };
    let resp = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 5 s"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {head:?}"));
    (status, body.to_owned())
}

/// An instance as another Nacos client registers it.
struct Foreign {
    service: String,
    ip: &'static str,
    port: u16,
    weight: f64,
    cluster: &'static str,
    metadata: Value,
}

impl Foreign {
    /// `POST /nacos/v1/ns/instance` with `nacos-sdk-go` 1.x's form fields.
    async fn register(&self, addr: &str) {
        let body = form(&[
            ("namespaceId", "public".into()),
            ("serviceName", format!("{GROUP}@@{}", self.service)),
            ("groupName", GROUP.into()),
            ("app", String::new()),
            ("clusterName", self.cluster.into()),
            ("ip", self.ip.into()),
            ("port", self.port.to_string()),
            ("weight", self.weight.to_string()),
            ("enable", "true".into()),
            ("healthy", "true".into()),
            ("metadata", self.metadata.to_string()),
            ("ephemeral", "true".into()),
        ]);
        let (status, text) = http(addr, "POST", "/nacos/v1/ns/instance", Some(&body)).await;
        assert_eq!(status, 200, "register {}: {text}", self.service);
    }

    /// `PUT /nacos/v1/ns/instance/beat` with `nacos-sdk-go` 1.x's `BeatInfo` (`model/service.go`).
    async fn beat(&self, addr: &str) {
        let beat = json!({
            "ip": self.ip,
            "port": self.port,
            "weight": self.weight,
            "serviceName": format!("{GROUP}@@{}", self.service),
            "cluster": self.cluster,
            "metadata": self.metadata,
            "scheduled": false,
        });
        let body = form(&[
            ("namespaceId", "public".into()),
            ("serviceName", format!("{GROUP}@@{}", self.service)),
            ("beat", beat.to_string()),
        ]);
        let (status, text) = http(addr, "PUT", "/nacos/v1/ns/instance/beat", Some(&body)).await;
        assert_eq!(status, 200, "beat {}: {text}", self.service);
    }

    fn id(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// Registers `instances` and beats for them every 5 s (as `nacos-sdk-go` 1.x does) until dropped.
struct Beats(tokio::task::JoinHandle<()>);

impl Drop for Beats {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn register_all(addr: &str, instances: Vec<Foreign>) -> Beats {
    for inst in &instances {
        inst.register(addr).await;
    }
    let addr = addr.to_owned();
    Beats(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            for inst in &instances {
                inst.beat(&addr).await;
            }
        }
    }))
}

/// The instances of `service` from `GET /nacos/v1/ns/instance/list`, by port.
async fn open_api_hosts(addr: &str, service: &str) -> BTreeMap<u16, Value> {
    let path = format!(
        "/nacos/v1/ns/instance/list?serviceName={}&groupName={GROUP}",
        percent_encode(service)
    );
    let (status, body) = http(addr, "GET", &path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    json["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: no hosts in {body}"))
        .iter()
        .map(|h| {
            let port = h["port"].as_u64().expect("port") as u16;
            (port, h.clone())
        })
        .collect()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string value").to_owned()))
        .collect()
}

/// Waits for the initial snapshot of a fresh watch (empty), then for `Created` of every id in
/// `ids`, and returns what the events carried, by id.
async fn created_events(watch: &mut WatchStream, ids: &[String]) -> BTreeMap<String, ServiceInfo> {
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while seen.len() < ids.len() {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(WatchEvent::Snapshot { services, .. })) => {
                assert!(
                    services.iter().all(|s| !ids.contains(&s.id)),
                    "a snapshot instead of Created events: {services:?}"
                );
            }
            Ok(Some(WatchEvent::Change(ev))) => {
                if ev.kind == ServiceEventType::Created && ids.contains(&ev.service.id) {
                    seen.insert(ev.service.id.clone(), ev.service);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("watch ended"),
            Err(_) => panic!("Created of {ids:?} not all seen within {LIMIT:?}: {seen:?}"),
        }
    }
    seen
}

fn meta(s: &ServiceInfo) -> BTreeMap<String, String> {
    s.metadata
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> BTreeMap<String, String> {
    p.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------------

/// Spring Cloud Alibaba's and go-kratos' records (on `nacos-sdk-go`) are listed with their
/// address, protocol, version and tags, arrive as `Created` in a watch, and a `ServiceClient`
/// call reaches the one that serves plain http.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rnacos_other_clients_records_are_listed_watched_and_callable() {
    let test = "rnacos_other_clients_records_are_listed_watched_and_callable";
    let Some((addr, _server)) = require(test, nacos_target().await) else {
        return;
    };
    // The go-kratos service: a local axum server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let go_port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().route(
        "/hello",
        axum::routing::get(|| async { "hello from the go service" }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let java = unique("orders");
    // go-kratos names the Nacos service `<name>.<scheme>`.
    let go = format!("{}.http", unique("greeter"));
    let cache = tempfile::tempdir().expect("cache dir");
    let registry = facade_registry(&addr, &cache).await;
    let mut java_watch = registry.watch_service(&java).await.expect("watch java");
    let mut go_watch = registry.watch_service(&go).await.expect("watch go");

    let (https_port, http_port) = (free_port(), free_port());
    let records = vec![
        // Spring Cloud Alibaba, `spring.cloud.nacos.discovery.secure=true`, with
        // `spring.cloud.nacos.discovery.metadata.version=2.1.0` and `…metadata.tags=blue,canary`.
        Foreign {
            service: java.clone(),
            ip: "127.0.0.1",
            port: https_port,
            weight: 1.0,
            cluster: "DEFAULT",
            metadata: json!({
                "preserved.register.source": "SPRING_CLOUD",
                "secure": "true",
                "version": "2.1.0",
                "tags": "blue, canary",
            }),
        },
        // Spring Cloud Alibaba with the defaults (no `secure`), weight 2.
        Foreign {
            service: java.clone(),
            ip: "127.0.0.1",
            port: http_port,
            weight: 2.0,
            cluster: "DEFAULT",
            metadata: json!({ "preserved.register.source": "SPRING_CLOUD" }),
        },
        // go-kratos' `kind` and `version`, plus the user's metadata, tags as a JSON array.
        Foreign {
            service: go.clone(),
            ip: "127.0.0.1",
            port: go_port,
            weight: 100.0,
            cluster: "DEFAULT",
            metadata: json!({
                "kind": "http",
                "version": "v1.4.0",
                "tags": "[\"go\",\"edge\"]",
                "region": "eu",
            }),
        },
    ];
    let ids: Vec<String> = records.iter().map(Foreign::id).collect();
    let _beats = register_all(&addr, records).await;

    // Each arrives as `Created`, already mapped.
    let java_events = created_events(&mut java_watch, &ids[..2]).await;
    let go_events = created_events(&mut go_watch, &ids[2..]).await;

    let secure = &java_events[&ids[0]];
    assert_eq!(
        (secure.address.as_str(), secure.port),
        ("127.0.0.1", https_port)
    );
    assert_eq!(secure.protocol, Protocol::Https, "secure=true is https");
    assert_eq!(secure.version, "2.1.0");
    assert_eq!(secure.tags, ["blue", "canary"]);
    assert_eq!(secure.health, Health::Healthy);
    assert_eq!(secure.weight, 100);
    assert_eq!(
        meta(secure),
        pairs(&[
            ("preserved.register.source", "SPRING_CLOUD"),
            ("secure", "true"),
            ("version", "2.1.0"),
            ("tags", "blue, canary"),
        ]),
        "another client's metadata is kept whole"
    );
    let plain = &java_events[&ids[1]];
    assert_eq!(plain.port, http_port);
    assert_eq!(plain.protocol, Protocol::Http);
    assert_eq!(plain.version, "");
    assert!(plain.tags.is_empty());
    assert_eq!(plain.weight, 200);
    let kratos = &go_events[&ids[2]];
    assert_eq!(
        (kratos.address.as_str(), kratos.port),
        ("127.0.0.1", go_port)
    );
    assert_eq!(kratos.protocol, Protocol::Http);
    assert_eq!(kratos.version, "v1.4.0");
    assert_eq!(kratos.tags, ["go", "edge"]);
    assert_eq!(
        kratos.metadata.get("region").map(String::as_str),
        Some("eu")
    );

    // Listing says the same as the watch.
    let mut listed = registry.list_instances(&java).await.expect("list java");
    listed.sort_by_key(|s| s.port != https_port);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(&listed[0], secure);
    assert_eq!(&listed[1], plain);
    assert_eq!(
        registry.get_service(&ids[2]).await.expect("get by ip:port"),
        *kratos
    );

    // A call through discovery reaches the go service.
    let discovery = Arc::new(CachedDiscovery::new(
        Arc::clone(&registry),
        Arc::new(RoundRobin::new()),
    ));
    let client = ServiceClient::builder(discovery as Arc<dyn ServiceDiscovery>)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let body = client
        .get(&go, "/hello")
        .await
        .expect("call the go service");
    assert_eq!(&body[..], b"hello from the go service");

    registry.close().await.expect("close");
    server.abort();
}

/// What waypost writes carries the plain keys, as another client reads them through the open
/// API, while waypost reads its own records back exactly as registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rnacos_waypost_records_carry_the_plain_keys_other_clients_read() {
    let test = "rnacos_waypost_records_carry_the_plain_keys_other_clients_read";
    let Some((addr, _server)) = require(test, nacos_target().await) else {
        return;
    };
    let name = unique("plainkeys");
    let cache = tempfile::tempdir().expect("cache dir");
    let writer = facade_registry(&addr, &cache).await;
    let reader_cache = tempfile::tempdir().expect("cache dir");
    let reader = facade_registry(&addr, &reader_cache).await;

    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let https = ServiceInfo::new(format!("{name}-1"), &name, "127.0.0.1", p1)
        .with_version("3.1.4")
        .with_protocol(Protocol::Https)
        .with_health(Health::Healthy)
        .with_tag("api")
        .with_tag("v2")
        .with_tag("has,comma")
        .with_metadata("region", "eu");
    // The user's own `version` metadata is kept as given, and no plain key is added over it.
    let grpc = ServiceInfo::new(format!("{name}-2"), &name, "127.0.0.1", p2)
        .with_version("7.0.0")
        .with_protocol(Protocol::Grpc)
        .with_metadata("version", "users-own");
    let bare = ServiceInfo::new(format!("{name}-3"), &name, "127.0.0.1", p3);
    for s in [&https, &grpc, &bare] {
        writer.register(s).await.expect("register");
    }
    let probe = || {
        let (addr, name) = (addr.clone(), name.clone());
        async move { open_api_hosts(&addr, &name).await.len() == 3 }
    };
    wait_until("three instances in the open API", LIMIT, probe)
        .await
        .expect("open API");
    let hosts = open_api_hosts(&addr, &name).await;

    // The exact metadata map, waypost's own keys included (times as the registry stamped them).
    let ours = |s: &ServiceInfo, extra: &[(&str, &str)]| {
        let mut m = pairs(&[
            ("waypost.id", s.id.as_str()),
            ("waypost.version", s.version.as_str()),
            ("waypost.protocol", s.protocol.as_str()),
            ("waypost.health", s.health.as_str()),
        ]);
        m.insert("waypost.ttl".into(), s.ttl.as_nanos().to_string());
        m.insert("waypost.weight".into(), s.weight.to_string());
        m.insert(
            "waypost.tags".into(),
            serde_json::to_string(&s.tags).expect("tags"),
        );
        m.insert("waypost.created_at".into(), s.created_at.to_go_string());
        m.insert("waypost.updated_at".into(), s.updated_at.to_go_string());
        m.insert("waypost.last_check".into(), s.last_check.to_go_string());
        m.extend(pairs(extra));
        m
    };
    let stored = |id: String| {
        let writer = Arc::clone(&writer);
        async move { writer.get_service(&id).await.expect("get") }
    };
    let (s1, s2, s3) = (
        stored(https.id.clone()).await,
        stored(grpc.id.clone()).await,
        stored(bare.id.clone()).await,
    );
    assert_eq!(
        string_map(&hosts[&p1]["metadata"]),
        ours(
            &s1,
            &[
                ("region", "eu"),
                ("version", "3.1.4"),
                ("secure", "true"),
                ("tags", "api,v2"),
                ("waypost.plain", "version,secure,tags"),
            ]
        )
    );
    assert_eq!(
        string_map(&hosts[&p2]["metadata"]),
        ours(&s2, &[("version", "users-own")])
    );
    assert_eq!(string_map(&hosts[&p3]["metadata"]), ours(&s3, &[]));
    // As Spring Cloud Alibaba parses them: `Boolean.parseBoolean(secure)`, and go-kratos /
    // go-micro take `version` as it is.
    assert_eq!(hosts[&p1]["metadata"]["secure"], "true");
    assert_eq!(hosts[&p1]["metadata"]["version"], "3.1.4");
    assert!(hosts[&p3]["metadata"].get("secure").is_none());
    assert_eq!(hosts[&p1]["ip"], "127.0.0.1");

    // Another waypost client reads each back exactly as registered: no plain key in metadata.
    for (registered, stamped) in [(&https, &s1), (&grpc, &s2), (&bare, &s3)] {
        let theirs = reader.get_service(&registered.id).await.expect("get");
        assert_eq!(&theirs, stamped);
        assert!(!stamped.created_at.is_zero(), "stamped at registration");
        let mut expected = registered.clone();
        expected.created_at = stamped.created_at;
        expected.updated_at = stamped.updated_at;
        expected.last_check = stamped.last_check;
        assert_eq!(theirs, expected);
    }
    assert_eq!(s1.metadata.len(), 1, "{:?}", s1.metadata);

    writer.close().await.expect("close");
    reader.close().await.expect("close");
}

/// Garbage in the plain keys of another client's record: listed, with the fallbacks the crate
/// documents, never a rejected instance or a panic, and the registry keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rnacos_garbage_in_plain_keys_is_listed_with_fallbacks() {
    let test = "rnacos_garbage_in_plain_keys_is_listed_with_fallbacks";
    let Some((addr, _server)) = require(test, nacos_target().await) else {
        return;
    };
    let name = unique("garbage");
    let cache = tempfile::tempdir().expect("cache dir");
    let registry = facade_registry(&addr, &cache).await;
    let long_version = "9".repeat(1000);
    let cases = [
        json!({ "secure": "maybe", "tags": "[1,2,3]" }),
        json!({ "secure": "", "tags": "{\"not\":\"a list\"}", "version": long_version }),
        json!({ "tags": "[\"unterminated", "kind": "carrier-pigeon", "protocol": "mucp" }),
        json!({ "version": "1.0\u{1b}[31m", "tags": " , ,, " }),
    ];
    let records: Vec<Foreign> = cases
        .iter()
        .map(|metadata| Foreign {
            service: name.clone(),
            ip: "127.0.0.1",
            port: free_port(),
            weight: 1.0,
            cluster: "DEFAULT",
            metadata: metadata.clone(),
        })
        .collect();
    let expected: BTreeMap<String, BTreeMap<String, String>> = records
        .iter()
        .map(|r| (r.id(), string_map(&r.metadata)))
        .collect();
    let _beats = register_all(&addr, records).await;
    // A waypost instance in the same service is unaffected.
    let ours = ServiceInfo::new(format!("{name}-ours"), &name, "127.0.0.1", free_port())
        .with_version("1.0.0")
        .with_protocol(Protocol::Https);
    registry.register(&ours).await.expect("register");

    let reg = Arc::clone(&registry);
    let n = name.clone();
    wait_until("every instance listed", LIMIT, || {
        let (reg, n) = (Arc::clone(&reg), n.clone());
        async move { reg.list_instances(&n).await.map(|l| l.len()).unwrap_or(0) == 5 }
    })
    .await
    .expect("all five instances listed: none rejected");
    let listed = registry.list_instances(&name).await.expect("list");
    for s in &listed {
        if s.id == ours.id {
            assert_eq!((s.version.as_str(), s.protocol), ("1.0.0", Protocol::Https));
            assert!(s.metadata.is_empty(), "{:?}", s.metadata);
            continue;
        }
        assert_eq!(s.protocol, Protocol::Http, "{}", s.id);
        assert_eq!(s.version, "", "{}", s.id);
        assert!(s.tags.is_empty(), "{}: {:?}", s.id, s.tags);
        assert_eq!(
            meta(s),
            expected[&s.id],
            "{}: raw values stay in metadata",
            s.id
        );
    }
    registry.close().await.expect("close");
}
