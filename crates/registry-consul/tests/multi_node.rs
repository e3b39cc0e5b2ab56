//! Instances across nodes: a Consul service ID is unique per agent, not per cluster, and
//! defaults to the service name, so the same ID on several nodes must give one waypost instance
//! per node (`node/id`), in lists, gets, watches and deregistration alike. The catalog shapes
//! follow HashiCorp's API docs and `hashicorp/consul-api-double` (`v1/health/service/_`: the
//! node's name in `Node.Node`, IDs such as `<name>`, `<name>-ID` repeated across `node-<i>`).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{connect, eventually, fake, fast_config, next};
use serde_json::json;
use waypost_core_types::{
    Error, ServiceEventType, ServiceInfo, ServiceRegistry, SnapshotReason, WatchEvent, WatchStream,
};
use waypost_registry_consul::fake::FakeConsul;

/// Adds instance `id` of `web` on agent node `node`, as another node's agent would.
fn add_web(agent: &FakeConsul, node: &str, id: &str, port: u16) {
    let address = format!("10.0.0.{}", port % 250);
    agent.add_remote_service(
        node,
        &address,
        json!({"ID": id, "Service": "web", "Port": port, "Address": ""}),
        "passing",
    );
}

fn ids(list: &[ServiceInfo]) -> Vec<&str> {
    let mut v: Vec<&str> = list.iter().map(|s| s.id.as_str()).collect();
    v.sort_unstable();
    v
}

/// The next change event, skipping nothing else (a snapshot here is a failure).
async fn change(watch: &mut WatchStream) -> (ServiceEventType, String) {
    match next(watch, Duration::from_secs(8)).await {
        Some(WatchEvent::Change(ev)) => (ev.kind, ev.service.id),
        other => panic!("expected a change, got {other:?}"),
    }
}

async fn quiet(watch: &mut WatchStream) {
    if let Some(ev) = next(watch, Duration::from_millis(600)).await {
        panic!("expected no event, got {ev:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_on_three_nodes_is_three_instances() {
    let agent = fake().await;
    for (i, node) in ["node-1", "node-2", "node-3"].into_iter().enumerate() {
        add_web(&agent, node, "web", 8081 + i as u16);
    }
    let registry = connect(fast_config(&agent)).await;
    let web = registry.list_instances("web").await.unwrap();
    assert_eq!(ids(&web), ["node-1/web", "node-2/web", "node-3/web"]);
    let two = web.iter().find(|s| s.id == "node-2/web").unwrap();
    assert_eq!((two.address.as_str(), two.port), ("10.0.0.82", 8082));
    let all = registry.list_services().await.unwrap();
    assert_eq!(ids(&all), ["node-1/web", "node-2/web", "node-3/web"]);
    assert_eq!(registry.get_service("node-3/web").await.unwrap().port, 8083);
    assert!(
        matches!(registry.get_service("web").await, Err(Error::NotFound(_))),
        "`web` is not the id of any one instance"
    );
    assert!(matches!(
        registry.get_service("node-9/web").await,
        Err(Error::NotFound(_))
    ));
    registry.close().await.unwrap();
}

/// The case: answers shaped like `consul-api-double`'s, where `node-0` has an ID of its
/// own and the others pick `web` or `web-ID`, listed 2 of 4 instances when keyed by ID alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_double_shaped_answers_list_every_instance() {
    let agent = fake().await;
    add_web(&agent, "node-0", "web-with-id", 8080);
    add_web(&agent, "node-1", "web", 8081);
    add_web(&agent, "node-2", "web-ID", 8082);
    add_web(&agent, "node-3", "web-ID", 8083);
    let registry = connect(fast_config(&agent)).await;
    let web = registry.list_instances("web").await.unwrap();
    assert_eq!(
        ids(&web),
        [
            "node-1/web",
            "node-2/web-ID",
            "node-3/web-ID",
            "web-with-id"
        ],
        "unique explicit ids stay plain; shared ids and Consul's default id get the node"
    );
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_see_one_instance_per_node_and_nodes_coming_and_going_rename_nothing() {
    let agent = fake().await;
    add_web(&agent, "node-1", "web", 8081);
    let registry = connect(fast_config(&agent)).await;
    let mut named = registry.watch_service("web").await.unwrap();
    let mut all = registry.watch().await.unwrap();
    for watch in [&mut named, &mut all] {
        match next(watch, Duration::from_secs(5)).await {
            Some(WatchEvent::Snapshot {
                reason: SnapshotReason::Initial,
                services,
            }) => assert_eq!(ids(&services), ["node-1/web"]),
            other => panic!("{other:?}"),
        }
    }
    // Two more nodes start the same definition: two Created, node-1/web untouched.
    add_web(&agent, "node-2", "web", 8082);
    add_web(&agent, "node-3", "web", 8083);
    for watch in [&mut named, &mut all] {
        let mut seen = vec![change(watch).await, change(watch).await];
        seen.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            seen,
            vec![
                (ServiceEventType::Created, "node-2/web".to_string()),
                (ServiceEventType::Created, "node-3/web".to_string())
            ]
        );
        quiet(watch).await;
    }
    // One node stops it: only its instance leaves.
    assert!(agent.remove_remote_service("node-1", "web"));
    for watch in [&mut named, &mut all] {
        assert_eq!(
            change(watch).await,
            (ServiceEventType::Deleted, "node-1/web".to_string())
        );
        quiet(watch).await;
    }
    // A new watcher's snapshot agrees with the list.
    let mut late = registry.watch_service("web").await.unwrap();
    match next(&mut late, Duration::from_secs(5)).await {
        Some(WatchEvent::Snapshot { services, .. }) => {
            assert_eq!(ids(&services), ["node-2/web", "node-3/web"]);
            let listed = registry.list_instances("web").await.unwrap();
            assert_eq!(ids(&services), ids(&listed));
        }
        other => panic!("{other:?}"),
    }
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistering_one_node_s_instance_removes_only_that_one() {
    let agent = fake().await;
    let local = agent.node_name();
    let registry = connect(fast_config(&agent)).await;
    // Our own registration, and the same id on two other nodes' agents.
    let own = ServiceInfo::new("web-1", "web", "127.0.0.1", 8080);
    registry.register(&own).await.unwrap();
    assert_eq!(
        ids(&registry.list_instances("web").await.unwrap()),
        ["web-1"],
        "a unique id of our own keeps its id"
    );
    let mut watch = registry.watch_service("web").await.unwrap();
    assert!(matches!(
        next(&mut watch, Duration::from_secs(5)).await,
        Some(WatchEvent::Snapshot { .. })
    ));
    add_web(&agent, "node-2", "web-1", 8082);
    add_web(&agent, "node-3", "web-1", 8083);
    let qualified = [
        format!("{local}/web-1"),
        "node-2/web-1".to_string(),
        "node-3/web-1".to_string(),
    ];
    eventually(
        Duration::from_secs(5),
        "three qualified instances",
        || async {
            let want: Vec<&str> = qualified.iter().map(String::as_str).collect();
            ids(&registry.list_instances("web").await.unwrap()) == want
        },
    )
    .await;
    // Drain what the watch saw of that (ids renamed once: web-1 shared from now on).
    let mut view = BTreeSet::from(["web-1".to_string()]);
    while view
        .iter()
        .map(String::as_str)
        .ne(qualified.iter().map(String::as_str))
    {
        match change(&mut watch).await {
            (ServiceEventType::Deleted, id) => assert!(view.remove(&id), "{id}"),
            (_, id) => {
                view.insert(id);
            }
        }
    }

    // Renewing goes by the same ids: ours by node/id, never another node's.
    registry.renew(&qualified[0]).await.unwrap();
    assert!(matches!(
        registry.renew("node-2/web-1").await,
        Err(Error::NotFound(_))
    ));

    // Another agent's instance: refused, clearly, and nothing is removed.
    match registry.deregister("node-2/web-1").await {
        Err(Error::Unsupported(m)) => {
            assert!(m.contains("node-2") && m.contains("anti-entropy"), "{m}")
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert_eq!(agent.catalog_instances("web").len(), 3);

    // Our node's instance by node/id: through the local agent, only that one.
    registry.deregister(&qualified[0]).await.unwrap();
    assert_eq!(
        agent.catalog_instances("web"),
        vec![
            ("node-2".to_string(), "web-1".to_string()),
            ("node-3".to_string(), "web-1".to_string())
        ]
    );
    assert_eq!(
        ids(&registry.list_instances("web").await.unwrap()),
        ["node-2/web-1", "node-3/web-1"]
    );
    assert_eq!(
        change(&mut watch).await,
        (ServiceEventType::Deleted, qualified[0].clone())
    );
    quiet(&mut watch).await;
    assert!(registry.registered_ids().is_empty(), "no longer renewed");
    assert!(matches!(
        registry.deregister(&qualified[0]).await,
        Err(Error::NotFound(_))
    ));
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_id_deregisters_only_the_local_agent_s_instance() {
    let agent = fake().await;
    let registry = connect(fast_config(&agent)).await;
    registry
        .register(&ServiceInfo::new("web-1", "web", "127.0.0.1", 8080))
        .await
        .unwrap();
    add_web(&agent, "node-2", "web-1", 8082);
    registry.deregister("web-1").await.unwrap();
    assert_eq!(
        ids(&registry.list_instances("web").await.unwrap()),
        ["web-1"],
        "node-2's instance stays, and is unique again"
    );
    assert_eq!(
        agent.catalog_instances("web"),
        vec![("node-2".to_string(), "web-1".to_string())]
    );
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_nodes_are_deregistered_through_the_catalog_one_instance_only() {
    let agent = fake().await;
    for node in ["ext-1", "ext-2", "ext-3"] {
        agent.add_external_service(
            node,
            "10.0.9.1",
            json!({"ID": "pay", "Service": "pay", "Port": 9000}),
            "passing",
        );
    }
    let registry = connect(fast_config(&agent)).await;
    let mut watch = registry.watch_service("pay").await.unwrap();
    match next(&mut watch, Duration::from_secs(5)).await {
        Some(WatchEvent::Snapshot { services, .. }) => {
            assert_eq!(ids(&services), ["ext-1/pay", "ext-2/pay", "ext-3/pay"])
        }
        other => panic!("{other:?}"),
    }
    registry.deregister("ext-2/pay").await.unwrap();
    assert_eq!(
        change(&mut watch).await,
        (ServiceEventType::Deleted, "ext-2/pay".to_string())
    );
    quiet(&mut watch).await;
    assert_eq!(
        ids(&registry.list_instances("pay").await.unwrap()),
        ["ext-1/pay", "ext-3/pay"]
    );
    assert_eq!(agent.count("PUT", "/v1/catalog/deregister"), 1);
    assert!(matches!(
        registry.deregister("ext-2/pay").await,
        Err(Error::NotFound(_))
    ));
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consul_service_is_left_out_unless_asked_for() {
    let agent = fake().await;
    agent.add_server_node("server-2", "10.0.0.2");
    let registry = connect(fast_config(&agent)).await;
    assert!(registry.list_instances("consul").await.unwrap().is_empty());
    assert!(registry.list_services().await.unwrap().is_empty());
    let mut all = registry.watch().await.unwrap();
    match next(&mut all, Duration::from_secs(5)).await {
        Some(WatchEvent::Snapshot { services, .. }) => assert!(services.is_empty(), "{services:?}"),
        other => panic!("{other:?}"),
    }
    let mut named = registry.watch_service("consul").await.unwrap();
    match next(&mut named, Duration::from_secs(5)).await {
        Some(WatchEvent::Snapshot { services, .. }) => assert!(services.is_empty(), "{services:?}"),
        other => panic!("{other:?}"),
    }
    registry.close().await.unwrap();

    let with = connect(fast_config(&agent).with_include_consul_service(true)).await;
    let local = agent.node_name();
    let servers = with.list_instances("consul").await.unwrap();
    assert_eq!(
        ids(&servers),
        [format!("{local}/consul").as_str(), "server-2/consul"]
    );
    assert!(servers.iter().all(|s| s.port == 8300));
    assert_eq!(with.list_services().await.unwrap().len(), 2);
    let mut all = with.watch().await.unwrap();
    match next(&mut all, Duration::from_secs(5)).await {
        Some(WatchEvent::Snapshot { services, .. }) => assert_eq!(services.len(), 2),
        other => panic!("{other:?}"),
    }
    with.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_node_names_and_ids_are_bounded_and_never_panic() {
    let agent = fake().await;
    let huge = "n".repeat(100_000);
    for node in ["", huge.as_str(), "bad\u{1b}[2J\r\nnode", "a/b", "ok-node"] {
        add_web(&agent, node, "shared", 8081);
    }
    add_web(&agent, "bad/node", "lonely", 8090);
    // Garbage service IDs from other tools are skipped, whatever their node.
    let huge_id = "i".repeat(100_000);
    for id in ["has/slash", "ctl\u{1b}[2J\r\nid", huge_id.as_str(), " "] {
        add_web(&agent, "ok-node", id, 8091);
        add_web(&agent, "other-node", id, 8092);
    }
    let registry = connect(fast_config(&agent)).await;
    let web = registry.list_instances("web").await.unwrap();
    assert_eq!(
        ids(&web),
        ["lonely", "ok-node/shared"],
        "instances that need an unusable node name are skipped; a unique id needs none"
    );
    for bad in [
        String::new(),
        "/".into(),
        "/shared".into(),
        "ok-node/".into(),
        "a/b/shared".into(),
        "bad\u{1b}[2J/shared".into(),
        format!("{huge}/shared"),
        format!("ok-node/{huge}"),
        "x".repeat(1 << 20),
    ] {
        for result in [
            registry.get_service(&bad).await.map(drop),
            registry.deregister(&bad).await,
        ] {
            match result {
                Err(e @ Error::InvalidInstance(_)) => {
                    let text = e.to_string();
                    assert!(text.len() < 600, "bounded: {} bytes", text.len());
                    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
                }
                other => panic!(
                    "{:?}: expected InvalidInstance, got {other:?}",
                    &bad[..bad.len().min(40)]
                ),
            }
        }
    }
    registry.close().await.unwrap();
}
