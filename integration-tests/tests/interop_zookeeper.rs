//! Spring Cloud Zookeeper interop on a real ZooKeeper (Debian's `zookeeper` package, started by
//! each test): records created with ZooKeeper's own `zkCli.sh` in the exact bytes Spring Cloud
//! Zookeeper registers through Apache Curator are listed, watched and called through the
//! `waypost` facade; records waypost writes in the `curator` format are read back with
//! `zkCli.sh get` byte for byte; the conformance suite passes in the `curator` and `auto`
//! formats.
//!
//! The record layout comes from `apache/curator`
//! `curator-x-discovery/src/main/java/org/apache/curator/x/discovery/details/OldServiceInstance.java`
//! (what `JsonInstanceSerializer` writes, field order included), `.../UriSpec.java`, and
//! `spring-cloud/spring-cloud-zookeeper`
//! `spring-cloud-zookeeper-discovery/src/main/java/org/springframework/cloud/zookeeper/discovery/ZookeeperInstance.java`,
//! `.../serviceregistry/ZookeeperAutoServiceRegistrationAutoConfiguration.java` (payload,
//! `instance_status`, URI spec `{scheme}://{address}:{port}`) and
//! `.../discovery/ZookeeperServiceInstance.java` (`sslPort` set means https on it).
//!
//! Without ZooKeeper installed these tests print `SKIPPED` (and fail with `CI=true`).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::StreamExt;
use waypost::zookeeper::{ZookeeperConfig, ZookeeperRegistry};
use waypost::{
    new_service_registry, CachedDiscovery, Health, Protocol, RegistryConfig, RegistryState,
    RoundRobin, ServiceClient, ServiceDiscovery, ServiceEventType, ServiceInfo, ServiceRegistry,
    WatchEvent,
};
use waypost_core_types::conformance::{self, ConformanceOptions};
use waypost_core_types::record::{RecordFormat, FORMAT_KEY};
use waypost_integration_tests::require;
use waypost_integration_tests::zookeeper::{ZkOptions, ZkServer};

const SERVICE: &str = "spring-pay";

async fn server(test: &str) -> Option<ZkServer> {
    require(test, ZkServer::start(ZkOptions::default()).await)
}

/// `zookeeper://` URL of the test server with short sessions and extra parameters.
fn url(zk: &ZkServer, path_and_params: &str) -> String {
    let sep = if path_and_params.contains('?') {
        '&'
    } else {
        '?'
    };
    format!(
        "zookeeper://{}{path_and_params}{sep}session_timeout=2s&connect_timeout=10s&max_backoff=1s",
        zk.addr()
    )
}

/// A record exactly as Spring Cloud Zookeeper registers it: Curator's field order, `sslPort`
/// written as `null` when unset, the `ZookeeperInstance` payload with `@class`, and the default
/// URI spec split into its parts.
fn spring_record(
    id: &str,
    address: &str,
    port: u16,
    ssl_port: Option<u16>,
    metadata: &str,
) -> String {
    let ssl = ssl_port.map_or_else(|| "null".to_owned(), |p| p.to_string());
    format!(
        r#"{{"name":"{SERVICE}","id":"{id}","address":"{address}","port":{port},"sslPort":{ssl},"payload":{{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance","id":"application-1","name":"{SERVICE}","metadata":{metadata}}},"registrationTimeUTC":1605873188009,"serviceType":"DYNAMIC","uriSpec":{{"parts":[{{"value":"scheme","variable":true}},{{"value":"://","variable":false}},{{"value":"address","variable":true}},{{"value":":","variable":false}},{{"value":"port","variable":true}}]}}}}"#
    )
}

/// The JSON line of `zkCli.sh get` output.
fn json_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in:\n{out}"))
}

/// Starts an HTTP server on a free loopback port answering `GET /hello`.
async fn hello_server() -> (u16, tokio::task::JoinHandle<()>) {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().route("/hello", get(|| async { "hello from spring-pay" }));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, task)
}

fn ms_since_epoch(info: &ServiceInfo) -> u128 {
    info.created_at
        .to_system_time()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis())
        .expect("a registered instance has a creation time")
}

#[tokio::test(flavor = "current_thread")]
async fn spring_records_created_by_zkcli_are_listed_watched_and_called() {
    let test = "spring_records_created_by_zkcli_are_listed_watched_and_called";
    let Some(zk) = server(test).await else { return };
    let (port, http) = hello_server().await;

    // No prefix: the curator format's default, Spring Cloud Zookeeper's `/services`.
    let config = RegistryConfig::from_url(&url(&zk, "?format=curator")).expect("parse");
    let registry = new_service_registry(&config).await.expect("connect");
    let mut watch = registry.watch_service(SERVICE).await.expect("watch");
    match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        Ok(Some(WatchEvent::Snapshot { services, .. })) => assert!(services.is_empty()),
        other => panic!("expected the initial snapshot, got {other:?}"),
    }

    let plain = spring_record(
        "0f0a2cbc-4ba3-4ffa-9fcc-4daa8701a320",
        "127.0.0.1",
        port,
        None,
        r#"{"instance_status":"UP","version":"2.1.0","zone":"eu-1"}"#,
    );
    let secure = spring_record(
        "54ba4644-818d-404f-ac73-e76f525b10a4",
        "10.0.0.8",
        8080,
        Some(8443),
        r#"{"instance_status":"OUT_OF_SERVICE"}"#,
    );
    // Curator with another payload class, and no JSON at all: both skipped.
    let other_class = spring_record("other-1", "10.0.0.9", 80, None, "{}").replace(
        "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
        "com.example.Payload",
    );
    let dir = format!("/services/{SERVICE}");
    zk.zkcli(&["create", &dir]).await.expect("zkCli create dir");
    for (id, data) in [
        ("0f0a2cbc-4ba3-4ffa-9fcc-4daa8701a320", plain.as_str()),
        ("54ba4644-818d-404f-ac73-e76f525b10a4", secure.as_str()),
        ("other-1", other_class.as_str()),
        ("junk", "not-json"),
    ] {
        zk.zkcli(&["create", &format!("{dir}/{id}"), data])
            .await
            .unwrap_or_else(|e| panic!("zkCli create {id}: {e}"));
    }

    // Both Spring instances reach the watch as `Created`.
    let mut created = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while created.len() < 2 {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(WatchEvent::Change(ev))) => {
                assert_eq!(ev.kind, ServiceEventType::Created, "{ev:?}");
                created.push(ev.service.id.clone());
            }
            Ok(Some(other)) => panic!("unexpected watch item {other:?}"),
            Ok(None) | Err(_) => panic!("only {created:?} reached the watch"),
        }
    }
    created.sort();
    assert_eq!(
        created,
        [
            "0f0a2cbc-4ba3-4ffa-9fcc-4daa8701a320",
            "54ba4644-818d-404f-ac73-e76f525b10a4"
        ]
    );

    let listed = registry.list_instances(SERVICE).await.expect("list");
    assert_eq!(listed.len(), 2, "the foreign nodes are skipped: {listed:?}");
    let (a, b) = (&listed[0], &listed[1]);
    assert_eq!(a.id, "0f0a2cbc-4ba3-4ffa-9fcc-4daa8701a320");
    assert_eq!(
        (a.address.as_str(), a.port, a.protocol, a.health),
        ("127.0.0.1", port, Protocol::Http, Health::Healthy)
    );
    assert_eq!(a.version, "2.1.0");
    let meta: Vec<(&str, &str)> = a
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(meta, [("version", "2.1.0"), ("zone", "eu-1")]);
    assert_eq!(a.created_at.to_string(), "2020-11-20T11:53:08.009Z");
    assert_eq!(
        (b.address.as_str(), b.port, b.protocol, b.health),
        ("10.0.0.8", 8443, Protocol::Https, Health::Unhealthy),
        "sslPort set: https on the sslPort; OUT_OF_SERVICE is unhealthy"
    );
    assert!(b.metadata.is_empty() && b.version.is_empty(), "{b:?}");

    // A ServiceClient through the facade reaches the healthy Spring instance.
    let discovery = Arc::new(CachedDiscovery::new(
        Arc::clone(&registry),
        Arc::new(RoundRobin::new()),
    ));
    let client = ServiceClient::builder(discovery.clone() as Arc<dyn ServiceDiscovery>)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    for _ in 0..3 {
        let body = client.get(SERVICE, "/hello").await.expect("call");
        assert_eq!(&body[..], b"hello from spring-pay");
    }

    // Deleting the node (as Curator does when Spring deregisters) reaches the watch.
    zk.zkcli(&[
        "delete",
        &format!("{dir}/0f0a2cbc-4ba3-4ffa-9fcc-4daa8701a320"),
    ])
    .await
    .expect("zkCli delete");
    match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
        Ok(Some(WatchEvent::Change(ev))) => {
            assert_eq!(ev.kind, ServiceEventType::Deleted);
            assert_eq!(ev.service.id, "0f0a2cbc-4ba3-4ffa-9fcc-4daa8701a320");
        }
        other => panic!("expected the deletion, got {other:?}"),
    }

    drop(watch);
    registry.close().await.expect("close");
    http.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn waypost_curator_records_read_back_with_zkcli_and_in_auto_format() {
    let test = "waypost_curator_records_read_back_with_zkcli_and_in_auto_format";
    let Some(zk) = server(test).await else { return };
    let curator = facade_registry(&zk, "?format=curator").await;

    let plain = ServiceInfo::new("w-1", SERVICE, "127.0.0.1", 9090)
        .with_version("1.0.0")
        .with_health(Health::Healthy)
        .with_metadata("zone", "eu-1")
        .with_tag("api");
    let secure = ServiceInfo::new("w-2", SERVICE, "127.0.0.1", 9443)
        .with_protocol(Protocol::Https)
        .with_health(Health::Unhealthy)
        .with_weight(5)
        .with_ttl(Duration::from_secs(30));
    curator.register(&plain).await.expect("register w-1");
    curator.register(&secure).await.expect("register w-2");

    let stored = curator.get_service("w-1").await.expect("get w-1");
    let out = zk
        .zkcli(&["get", &format!("/services/{SERVICE}/w-1")])
        .await
        .expect("zkCli get w-1");
    let expected = format!(
        r#"{{"name":"{SERVICE}","id":"w-1","address":"127.0.0.1","port":9090,"sslPort":null,"payload":{{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance","id":"w-1","name":"{SERVICE}","metadata":{{"zone":"eu-1","instance_status":"UP","waypost.version":"1.0.0","waypost.tags":"[\"api\"]"}}}},"registrationTimeUTC":{},"serviceType":"DYNAMIC","uriSpec":{{"parts":[{{"value":"scheme","variable":true}},{{"value":"://","variable":false}},{{"value":"address","variable":true}},{{"value":":","variable":false}},{{"value":"port","variable":true}}]}}}}"#,
        ms_since_epoch(&stored)
    );
    assert_eq!(json_line(&out), expected);

    let stored = curator.get_service("w-2").await.expect("get w-2");
    let out = zk
        .zkcli(&["get", &format!("/services/{SERVICE}/w-2")])
        .await
        .expect("zkCli get w-2");
    let expected = format!(
        r#"{{"name":"{SERVICE}","id":"w-2","address":"127.0.0.1","port":9443,"sslPort":9443,"payload":{{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance","id":"w-2","name":"{SERVICE}","metadata":{{"instance_status":"OUT_OF_SERVICE","waypost.weight":"5","waypost.ttl":"30s"}}}},"registrationTimeUTC":{},"serviceType":"DYNAMIC","uriSpec":{{"parts":[{{"value":"scheme","variable":true}},{{"value":"://","variable":false}},{{"value":"address","variable":true}},{{"value":":","variable":false}},{{"value":"port","variable":true}}]}}}}"#,
        ms_since_epoch(&stored)
    );
    let line = json_line(&out);
    assert_eq!(line, expected);
    // Curator's rules on what zkCli shows: sslPort set, so https on 9443, not serviceable for
    // Spring (OUT_OF_SERVICE); waypost's own keys are gone when read back.
    let back = RecordFormat::Curator
        .decode(SERVICE, "w-2", line.as_bytes())
        .expect("decodes")
        .info;
    assert_eq!(
        (back.port, back.protocol, back.health, back.weight, back.ttl),
        (
            9443,
            Protocol::Https,
            Health::Unhealthy,
            5,
            Duration::from_secs(30)
        )
    );
    assert!(back.metadata.is_empty(), "{:?}", back.metadata);

    // An `auto` registry on the same prefix writes Laravel-Go JSON and reads both formats,
    // marking the Curator ones; the curator registry skips the Laravel-Go record.
    let auto = facade_registry(&zk, "/services?format=auto").await;
    let go = ServiceInfo::new("go-1", SERVICE, "127.0.0.1", 7070).with_health(Health::Healthy);
    auto.register(&go).await.expect("register go-1");
    let out = zk
        .zkcli(&["get", &format!("/services/{SERVICE}/go-1")])
        .await
        .expect("zkCli get go-1");
    assert!(
        json_line(&out).starts_with(
            r#"{"id":"go-1","name":"spring-pay","version":"","address":"127.0.0.1","port":7070"#
        ),
        "{out}"
    );
    let seen = auto.list_instances(SERVICE).await.expect("auto list");
    let marks: Vec<(&str, Option<&str>)> = seen
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                s.metadata.get(FORMAT_KEY).map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        marks,
        [
            ("go-1", None),
            ("w-1", Some("curator")),
            ("w-2", Some("curator"))
        ]
    );
    let w1 = seen.iter().find(|s| s.id == "w-1").expect("w-1");
    assert_eq!(
        (w1.version.as_str(), w1.tags.as_slice(), w1.port),
        ("1.0.0", ["api".to_owned()].as_slice(), 9090)
    );
    let ids: Vec<String> = curator
        .list_instances(SERVICE)
        .await
        .expect("curator list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["w-1", "w-2"]);

    auto.close().await.expect("close auto");
    curator.close().await.expect("close curator");
}

/// A registry built from a `zookeeper://` URL through the facade.
async fn facade_registry(zk: &ZkServer, path_and_params: &str) -> Arc<dyn ServiceRegistry> {
    let config = RegistryConfig::from_url(&url(zk, path_and_params)).expect("parse");
    new_service_registry(&config)
        .await
        .expect("connect through the facade")
}

#[tokio::test(flavor = "current_thread")]
async fn conformance_suite_in_curator_and_auto_formats() {
    let test = "conformance_suite_in_curator_and_auto_formats";
    let Some(zk) = server(test).await else { return };
    for format in [RecordFormat::Curator, RecordFormat::Auto] {
        // No prefix set: `with_format` gives each format's default (`/services`,
        // `/laravel-go/services`).
        let config = ZookeeperConfig::new([zk.addr()])
            .with_format(format)
            .with_session_timeout(Duration::from_secs(2))
            .with_connect_timeout(Duration::from_secs(10))
            .with_max_backoff(Duration::from_secs(1));
        let registry = ZookeeperRegistry::connect(config)
            .await
            .expect("connect to the test ZooKeeper");
        conformance::run_all(&registry, &ConformanceOptions::default()).await;
        assert_eq!(registry.state(), RegistryState::Closed, "{format}");
        let root = match format {
            RecordFormat::Curator => "/services",
            _ => "/laravel-go/services",
        };
        let out = zk.zkcli(&["ls", root]).await.expect("zkCli ls");
        assert!(
            out.lines().any(|l| l.starts_with("[cf-")),
            "{format} wrote under {root}: {out}"
        );
    }
}
