//! Consul services that other tools registered, seen through the `waypost` facade: the same
//! service ID on three nodes (Consul IDs are unique per agent, and default to the service name)
//! is three instances for discovery and for `ServiceClient`, and a node that stops the service
//! takes away only its own instance. Runs against the fake agent of `waypost-registry-consul`
//! (feature `fake-agent`), which serves several nodes as Consul's HTTP API does (response shapes
//! as in `hashicorp/consul-api-double` `v1/health/service/_`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::sync::oneshot;
use waypost::{
    CachedDiscovery, RegistryConfig, RoundRobin, ServiceClient, ServiceDiscovery, ServiceRegistry,
};
use waypost_core_types::Error;
use waypost_registry_consul::fake::{FakeConsul, FakeOptions};

/// An axum server on a free loopback port answering `GET /who` with `node`; stopped when the
/// sender is dropped.
async fn node_server(node: &'static str) -> (u16, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a free port");
    let port = listener.local_addr().expect("local addr").port();
    let (stop, stopped) = oneshot::channel::<()>();
    let app = Router::new().route("/who", get(move || async move { node }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    (port, stop)
}

async fn registry_for(agent: &FakeConsul, params: &str) -> Arc<dyn ServiceRegistry> {
    let url = format!(
        "consul://{}/interop?connect_timeout=2s&watch_wait=2s&watch_min_interval=20ms{params}",
        agent.addr()
    );
    let config = RegistryConfig::from_url(&url).expect("parse the consul URL");
    waypost::new_service_registry(&config)
        .await
        .expect("connect to the fake agent")
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_consul_id_on_three_nodes_is_three_instances_to_discover_and_call() {
    let agent = FakeConsul::start(FakeOptions::default())
        .await
        .expect("start the fake agent");
    let mut servers = Vec::new();
    for node in ["node-1", "node-2", "node-3"] {
        let (port, stop) = node_server(node).await;
        // Each node's agent registered `web` with no ID: Consul's default ID is the name.
        agent.add_remote_service(
            node,
            "127.0.0.1",
            json!({"Service": "web", "Port": port, "Address": "", "Tags": ["v1"]}),
            "passing",
        );
        servers.push((node, stop));
    }
    let registry = registry_for(&agent, "").await;
    let discovery = Arc::new(CachedDiscovery::new(
        Arc::clone(&registry),
        Arc::new(RoundRobin::new()),
    ));
    let found = discovery.discover("web").await.expect("discover web");
    let ids: BTreeSet<String> = found.iter().map(|s| s.id.clone()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([
            "node-1/web".into(),
            "node-2/web".into(),
            "node-3/web".into()
        ])
    );
    let mut picked = BTreeSet::new();
    for _ in 0..9 {
        picked.insert(
            discovery
                .discover_one("web")
                .await
                .expect("pick")
                .id
                .clone(),
        );
    }
    assert_eq!(picked, ids, "the balancer picks among all three");

    let client = ServiceClient::builder(discovery.clone() as Arc<dyn ServiceDiscovery>)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let mut answered = BTreeSet::new();
    for _ in 0..9 {
        let body = client.get("web", "/who").await.expect("call web");
        answered.insert(String::from_utf8_lossy(&body).into_owned());
    }
    assert_eq!(
        answered,
        BTreeSet::from(["node-1".into(), "node-2".into(), "node-3".into()]),
        "calls reach every node"
    );

    // node-2 stops the service: only its instance leaves the discovery cache.
    assert!(agent.remove_remote_service("node-2", "web"));
    wait_until("node-2/web to leave the cache", || {
        let discovery = discovery.clone();
        async move {
            let now: BTreeSet<String> = discovery
                .discover("web")
                .await
                .map(|l| l.iter().map(|s| s.id.clone()).collect())
                .unwrap_or_default();
            now == BTreeSet::from(["node-1/web".into(), "node-3/web".into()])
        }
    })
    .await;
    for _ in 0..6 {
        let body = client.get("web", "/who").await.expect("call web");
        assert_ne!(&body[..], b"node-2", "a removed instance is never called");
    }
    // Its agent owns it: it cannot be deregistered through this one.
    assert!(matches!(
        registry.deregister("node-1/web").await,
        Err(Error::Unsupported(_))
    ));
    registry.close().await.expect("close");
    drop(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consul_service_is_discovered_only_when_the_url_asks_for_it() {
    let agent = FakeConsul::start(FakeOptions::default())
        .await
        .expect("start the fake agent");
    agent.add_server_node("server-2", "10.0.0.2");
    let plain = registry_for(&agent, "").await;
    let discovery = CachedDiscovery::new(Arc::clone(&plain), Arc::new(RoundRobin::new()));
    assert!(
        matches!(
            discovery.discover("consul").await,
            Err(Error::ServiceNotFound(_))
        ),
        "left out by default"
    );
    plain.close().await.expect("close");

    let with = registry_for(&agent, "&include_consul_service=true").await;
    let discovery = CachedDiscovery::new(Arc::clone(&with), Arc::new(RoundRobin::new()));
    let servers = discovery.discover("consul").await.expect("discover consul");
    let ids: BTreeSet<String> = servers.iter().map(|s| s.id.clone()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([
            format!("{}/consul", agent.node_name()),
            "server-2/consul".to_string()
        ])
    );
    with.close().await.expect("close");
}
