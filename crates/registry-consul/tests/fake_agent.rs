//! The fake agent itself, checked against Consul's documented HTTP behaviour (CONSUL-API.md):
//! status codes, error texts, strict decoding, index headers, blocking queries, TTL expiry,
//! ACLs. If the fake drifts from Consul, the backend tests above it prove nothing.

// The raw HTTP helpers below are test code; a malformed answer should panic the test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypost_registry_consul::fake::{FakeConsul, FakeOptions};

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }
    fn index(&self) -> u64 {
        self.header("X-Consul-Index")
            .expect("X-Consul-Index")
            .parse()
            .unwrap()
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One raw HTTP/1.1 request (Connection: close).
async fn call(
    agent: &FakeConsul,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Resp {
    let mut s = tokio::net::TcpStream::connect(agent.addr()).await.unwrap();
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("X-Consul-Token: {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn reg_body(id: &str, name: &str, ttl: &str) -> String {
    json!({"ID": id, "Name": name, "Port": 80, "Address": "10.0.0.7", "Tags": ["v1"],
           "Check": {"TTL": ttl, "DeregisterCriticalServiceAfter": "1m"}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_answer_200_with_an_empty_body_and_strict_decoding() {
    let a = FakeConsul::start(FakeOptions::default()).await.unwrap();
    let r = call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(&reg_body("web1", "web", "10s")),
        None,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert_eq!(r.header("X-Consul-Default-Acl-Policy"), Some("allow"));
    assert!(
        r.header("X-Consul-Index").is_none(),
        "agent endpoints send no index"
    );
    // Field names are case-insensitive; unknown fields are refused.
    let r = call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(r#"{"name":"web","port":1}"#),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(r#"{"Name":"web","Foo":1}"#),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, r#"Request decode failed: json: unknown field "Foo""#)
    );
    let r = call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(r#"{"Port":1}"#),
        None,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (400, "Missing service name"));
    let r = call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(r#"{"Name":"x","Check":{"ID":"c","TTL":"1s"}}"#),
        None,
    )
    .await;
    assert_eq!(r.status, 400, "a check has CheckID, not ID");
    let r = call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(r#"{"Name":"x","Check":{"TTL":"10"}}"#),
        None,
    )
    .await;
    assert_eq!(r.status, 400, "unitless durations are refused");
    let r = call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(r#"{"Name":"x","Weights":{"Passing":0,"Warning":1}}"#),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "Invalid Weights: Passing must be greater than 0")
    );
    let r = call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(r#"{"Name":"x","Meta":{"consul-x":"1"}}"#),
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with("Invalid Service Meta: Couldn't load metadata pair ('consul-x', '1'): Key prefix 'consul-' is reserved"), "{}", r.body);
    let r = call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(r#"{"Name":"x","Meta":{"a.b":"1"}}"#),
        None,
    )
    .await;
    assert!(
        r.body.ends_with("Key contains invalid characters"),
        "{}",
        r.body
    );
    let r = call(&a, "GET", "/v1/agent/service/register", None, None).await;
    assert_eq!((r.status, r.body.as_str()), (405, "method GET not allowed"));
    assert_eq!(r.header("Allow"), Some("OPTIONS,PUT"));
    let r = call(&a, "GET", "/v1/nope", None, None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            404,
            "Invalid URL path: not a recognized HTTP API endpoint\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_404_with_consuls_texts() {
    let a = FakeConsul::start(FakeOptions::default()).await.unwrap();
    let r = call(&a, "PUT", "/v1/agent/service/deregister/ghost", None, None).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        "Unknown service ID \"ghost\". Ensure that the service ID is passed, not the service name."
    );
    let r = call(&a, "PUT", "/v1/agent/check/pass/service:ghost", None, None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "Unknown check ID \"service:ghost\". Ensure that the check ID is passed, not the check name.");
    let r = call(&a, "GET", "/v1/agent/service/ghost", None, None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, "unknown service ID: ghost")
    );
    let r = call(&a, "GET", "/v1/health/service/ghost?dc=dc9", None, None).await;
    assert_eq!((r.status, r.body.as_str()), (500, "No path to datacenter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_entries_have_consuls_shape_and_index_rules() {
    let a = FakeConsul::start(FakeOptions::default()).await.unwrap();
    let r = call(&a, "GET", "/v1/health/service/web", None, None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    assert!(r.index() >= 1);
    assert_eq!(r.header("X-Consul-Knownleader"), Some("true"));
    call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(&reg_body("web1", "web", "10s")),
        None,
    )
    .await;
    let r = call(&a, "GET", "/v1/health/service/WEB", None, None).await;
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), 1, "names are case-insensitive");
    let e = &v[0];
    assert_eq!(e["Service"]["ID"], "web1");
    assert_eq!(e["Service"]["Weights"], json!({"Passing": 1, "Warning": 1}));
    assert_eq!(
        e["Service"]["TaggedAddresses"]["lan_ipv4"]["Address"],
        "10.0.0.7"
    );
    assert_eq!(e["Node"]["Address"], "127.0.0.1");
    assert_eq!(e["Checks"][0]["CheckID"], "serfHealth");
    assert_eq!(e["Checks"][1]["CheckID"], "service:web1");
    assert_eq!(
        e["Checks"][1]["Status"], "critical",
        "checks start critical"
    );
    assert_eq!(e["Checks"][1]["Name"], "Service 'web' check");
    let r = call(&a, "GET", "/v1/health/service/web?passing", None, None).await;
    assert_eq!(
        r.body, "[]",
        "?passing drops entries with a non-passing check"
    );
    call(&a, "PUT", "/v1/agent/check/pass/service:web1", None, None).await;
    let r = call(
        &a,
        "GET",
        "/v1/health/service/web?passing&tag=V1",
        None,
        None,
    )
    .await;
    assert_eq!(
        r.json().as_array().unwrap().len(),
        1,
        "tags match case-insensitively"
    );
    let r = call(&a, "GET", "/v1/catalog/services", None, None).await;
    assert_eq!(r.json(), json!({"consul": [], "web": ["v1"]}));
    // Deregistering the last instance: [] at a higher (extinction) index.
    let before = call(&a, "GET", "/v1/health/service/web", None, None)
        .await
        .index();
    call(&a, "PUT", "/v1/agent/service/deregister/web1", None, None).await;
    let r = call(&a, "GET", "/v1/health/service/web", None, None).await;
    assert_eq!(r.body, "[]");
    assert!(r.index() > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_wait_for_a_change_or_the_wait_time() {
    let a = FakeConsul::start(FakeOptions::default()).await.unwrap();
    call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(&reg_body("web1", "web", "10s")),
        None,
    )
    .await;
    let idx = call(&a, "GET", "/v1/health/service/web", None, None)
        .await
        .index();
    // No change: returns after wait (+ up to wait/16) with the same index.
    let t = Instant::now();
    let r = call(
        &a,
        "GET",
        &format!("/v1/health/service/web?index={idx}&wait=300ms"),
        None,
        None,
    )
    .await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(600),
        "{took:?}"
    );
    assert_eq!(r.index(), idx);
    // Repeated passes of an already-passing check do not wake it (no index bump).
    call(&a, "PUT", "/v1/agent/check/pass/service:web1", None, None).await;
    let idx = call(&a, "GET", "/v1/health/service/web", None, None)
        .await
        .index();
    let t = Instant::now();
    let blocking_path = format!("/v1/health/service/web?index={idx}&wait=2s");
    let (r, _) = tokio::join!(call(&a, "GET", &blocking_path, None, None), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        call(
            &a,
            "PUT",
            "/v1/agent/check/pass/service:web1?note=same-status",
            None,
            None,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        call(&a, "PUT", "/v1/agent/check/warn/service:web1", None, None).await;
    });
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(1),
        "woken by the status change: {took:?}"
    );
    assert!(r.index() > idx);
    // An index from the future (after a reset) blocks the full wait and returns a lower index.
    let r = call(
        &a,
        "GET",
        "/v1/health/service/web?index=999999&wait=200ms",
        None,
        None,
    )
    .await;
    assert!(r.index() < 999_999);
    let r = call(&a, "GET", "/v1/health/service/web?index=abc", None, None).await;
    assert_eq!((r.status, r.body.as_str()), (400, "Invalid index"));
    let r = call(
        &a,
        "GET",
        "/v1/health/service/web?index=1&wait=soon",
        None,
        None,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (400, "Invalid wait time"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_checks_expire_and_reregistration_keeps_status() {
    let a = FakeConsul::start(FakeOptions::default()).await.unwrap();
    call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(&reg_body("web1", "web", "300ms")),
        None,
    )
    .await;
    call(
        &a,
        "PUT",
        "/v1/agent/check/pass/service:web1?note=all%20good",
        None,
        None,
    )
    .await;
    assert_eq!(a.check_status("service:web1").as_deref(), Some("passing"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.check_status("service:web1").as_deref(), Some("critical"));
    let r = call(&a, "GET", "/v1/health/service/web", None, None).await;
    assert_eq!(
        r.json()[0]["Checks"][1]["Output"],
        "TTL expired (last output before timeout follows): all good"
    );
    call(&a, "PUT", "/v1/agent/check/warn/service:web1", None, None).await;
    // Re-registering with a different Status keeps the current one.
    let body = json!({"ID": "web1", "Name": "web", "Port": 80,
        "Check": {"TTL": "10s", "Status": "passing"}})
    .to_string();
    call(&a, "PUT", "/v1/agent/service/register", Some(&body), None).await;
    assert_eq!(a.check_status("service:web1").as_deref(), Some("warning"));
    let r = call(
        &a,
        "PUT",
        "/v1/agent/check/update/service:web1",
        Some(r#"{"Status":"ok"}"#),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "Invalid check status: 'ok'")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_services_are_reaped_after_deregister_critical_service_after() {
    let a = FakeConsul::start(
        FakeOptions::default().with_reaping(Duration::from_millis(300), Duration::from_millis(50)),
    )
    .await
    .unwrap();
    let body = json!({"ID": "r1", "Name": "r", "Port": 1,
        "Check": {"TTL": "200ms", "DeregisterCriticalServiceAfter": "100ms"}})
    .to_string();
    call(&a, "PUT", "/v1/agent/service/register", Some(&body), None).await;
    // Starting critical does not start the clock; it starts when the TTL expires.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        a.local_service_ids(),
        vec!["r1".to_string()],
        "not reaped before TTL + floor"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        a.local_service_ids().is_empty(),
        "reaped after TTL + max(DCSA, floor)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_tokens_are_checked() {
    let a = FakeConsul::start(FakeOptions::default().with_acl_token("s3"))
        .await
        .unwrap();
    let body = reg_body("web1", "web", "10s");
    let r = call(&a, "PUT", "/v1/agent/service/register", Some(&body), None).await;
    assert_eq!(r.status, 403);
    assert!(
        r.body.starts_with(
            "Permission denied: anonymous token lacks permission 'service:write' on \"web\""
        ),
        "{}",
        r.body
    );
    assert_eq!(r.header("X-Consul-Default-Acl-Policy"), Some("deny"));
    let r = call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(&body),
        Some("nope"),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (403, "ACL not found"));
    let r = call(
        &a,
        "PUT",
        "/v1/agent/service/register",
        Some(&body),
        Some("s3"),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = call(
        &a,
        "PUT",
        "/v1/agent/service/register?token=s3",
        Some(&body),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "?token= works too");
    let r = call(&a, "GET", "/v1/health/service/web", None, None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "[]"),
        "anonymous list reads are filtered"
    );
    assert!(r.header("X-Consul-Index").is_some());
    let r = call(&a, "GET", "/v1/health/service/web", None, Some("s3")).await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let r = call(&a, "GET", "/v1/status/leader", None, None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "\"127.0.0.1:8300\""));
}

/// Several nodes as Consul serves them (shapes from HashiCorp's API docs and
/// `hashicorp/consul-api-double` `v1/health/service/_`, `v1/catalog/service/_`): the same service
/// ID on three nodes gives three entries, each with its node's name in `Node.Node` (health) or
/// `Node` (catalog); only nodes that run an agent have `serfHealth`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_service_id_on_several_nodes_is_served_once_per_node() {
    let a = FakeConsul::start(FakeOptions::default()).await.unwrap();
    for (node, addr) in [("node-1", "10.0.0.1"), ("node-2", "10.0.0.2")] {
        a.add_remote_service(
            node,
            addr,
            json!({"ID": "web", "Service": "web", "Port": 80}),
            "passing",
        );
    }
    a.add_external_service(
        "ext-1",
        "10.0.9.1",
        json!({"ID": "web", "Service": "web", "Port": 81}),
        "passing",
    );
    let r = call(&a, "GET", "/v1/health/service/web", None, None).await;
    let v = r.json();
    let entries = v.as_array().unwrap();
    let nodes: Vec<&str> = entries
        .iter()
        .map(|e| e["Node"]["Node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["ext-1", "node-1", "node-2"]);
    for e in entries {
        assert_eq!(e["Service"]["ID"], "web");
        let first_check = e["Checks"][0]["CheckID"].as_str().unwrap();
        let external = e["Node"]["Node"] == "ext-1";
        assert_eq!(first_check == "serfHealth", !external, "{e}");
        assert_eq!(e["Checks"][0]["Node"], e["Node"]["Node"]);
    }
    assert_eq!(entries[1]["Node"]["Address"], "10.0.0.1");

    let r = call(&a, "GET", "/v1/catalog/service/web", None, None).await;
    assert!(r.index() >= 1);
    let v = r.json();
    let flat = v.as_array().unwrap();
    assert_eq!(flat.len(), 3);
    let e = &flat[1];
    assert_eq!(
        (
            &e["Node"],
            &e["ServiceID"],
            &e["ServiceName"],
            &e["ServicePort"]
        ),
        (&json!("node-1"), &json!("web"), &json!("web"), &json!(80))
    );
    assert_eq!(e["Address"], "10.0.0.1");
    assert!(e["ID"].as_str().unwrap().len() == 36, "the node UUID: {e}");
    assert!(e.get("Checks").is_none(), "the catalog carries no health");
    assert_eq!(
        a.catalog_instances("WEB").len(),
        3,
        "names are case-insensitive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consul_service_of_each_server_is_in_the_catalog_not_in_the_agent() {
    let a = FakeConsul::start(FakeOptions::default()).await.unwrap();
    a.add_server_node("server-2", "10.0.0.2");
    let r = call(&a, "GET", "/v1/health/service/consul", None, None).await;
    let v = r.json();
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for e in entries {
        assert_eq!(
            (
                &e["Service"]["ID"],
                &e["Service"]["Port"],
                &e["Service"]["Address"]
            ),
            (&json!("consul"), &json!(8300), &json!(""))
        );
        assert_eq!(e["Checks"].as_array().unwrap().len(), 1, "serfHealth only");
    }
    assert_eq!(entries[0]["Node"]["Node"], a.node_name().as_str());
    let r = call(&a, "GET", "/v1/catalog/services", None, None).await;
    assert_eq!(r.json(), json!({"consul": []}));
    let r = call(&a, "GET", "/v1/agent/services", None, None).await;
    assert_eq!(r.json(), json!({}), "the agent does not list consul");
    let r = call(&a, "PUT", "/v1/agent/service/deregister/consul", None, None).await;
    assert_eq!(r.status, 404);
    assert!(a.local_service_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_deregister_removes_one_node_s_instance() {
    let a = FakeConsul::start(FakeOptions::default().with_acl_token("tok"))
        .await
        .unwrap();
    for node in ["ext-1", "ext-2"] {
        a.add_external_service(
            node,
            "10.0.9.1",
            json!({"ID": "web", "Service": "web", "Port": 81}),
            "passing",
        );
    }
    let body = r#"{"Node": "ext-1", "ServiceID": "web"}"#;
    let r = call(&a, "PUT", "/v1/catalog/deregister", Some(body), None).await;
    assert_eq!(r.status, 403);
    assert!(r.body.starts_with("Permission denied"), "{}", r.body);
    let r = call(&a, "GET", "/v1/catalog/deregister", None, Some("tok")).await;
    assert_eq!(r.status, 405);
    for (bad, want) in [
        (r#"{"ServiceID": "web"}"#, "Must provide node"),
        (r#"{"Node": "ext-1", "Colour": "x"}"#, "unknown field"),
        ("", "Request decode failed"),
    ] {
        let r = call(&a, "PUT", "/v1/catalog/deregister", Some(bad), Some("tok")).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.body.contains(want), "{bad}: {}", r.body);
    }
    let before = call(&a, "GET", "/v1/health/service/web", None, Some("tok"))
        .await
        .index();
    let r = call(&a, "PUT", "/v1/catalog/deregister", Some(body), Some("tok")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "true"));
    assert_eq!(
        a.catalog_instances("web"),
        vec![("ext-2".to_string(), "web".to_string())]
    );
    let r = call(&a, "GET", "/v1/health/service/web", None, Some("tok")).await;
    assert!(r.index() > before, "a removal bumps the service's index");
    // Again: nothing to remove, still `true`, nothing else touched.
    let r = call(&a, "PUT", "/v1/catalog/deregister", Some(body), Some("tok")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "true"));
    assert_eq!(a.catalog_instances("web").len(), 1);
}
