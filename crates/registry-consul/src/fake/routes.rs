//! Routing of the fake agent: what every request goes through (the request log, injected
//! failures, `dc`, ACL resolution), then one small table per endpoint group: agent endpoints
//! (writes and the local agent's reads) and cluster reads (health, catalog).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Map, Value};

use super::acl::{denied, resolve_token, Caller};
use super::agent;
use super::blocking::blocking;
use super::query::{pct_decode, Query};
use super::respond::{json_resp, method_not_allowed, ok_empty, text, Resp};
use super::state::State;
use super::{SeenRequest, Shared};

/// One decoded request, ready for an endpoint.
struct Call {
    method: Method,
    path: String,
    q: Query,
    caller: Caller,
    body: Bytes,
}

impl Call {
    /// The rest of the path after `prefix`, percent-decoded.
    fn param(&self, prefix: &str) -> Option<String> {
        self.path.strip_prefix(prefix).map(pct_decode)
    }

    /// `None` when the method is `want`, else Consul's 405.
    fn refuse_unless(&self, want: Method) -> Option<Resp> {
        if self.method == want {
            return None;
        }
        let allow = if want == Method::PUT {
            "OPTIONS,PUT"
        } else {
            "OPTIONS,GET"
        };
        Some(method_not_allowed(&self.method, allow))
    }
}

/// Serves one request.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<hyper::body::Incoming>) -> Resp {
    // A frozen agent answers nothing: neither requests that arrive nor those in progress (a
    // blocking query that returns during the freeze waits for the thaw).
    shared.until_thawed().await;
    let mut resp = route(&shared, req).await;
    shared.until_thawed().await;
    let policy = if shared.opts.acl_token.is_some() {
        "deny"
    } else {
        "allow"
    };
    resp.headers_mut().insert(
        "X-Consul-Default-Acl-Policy",
        http::HeaderValue::from_static(policy),
    );
    resp
}

async fn route(shared: &Arc<Shared>, req: Request<hyper::body::Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let q = Query::parse(req.uri().query());
    let headers = req.headers().clone();
    shared.record(SeenRequest {
        method: method.to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        token_header: headers
            .get("x-consul-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(400, format!("Request decode failed: {e}")),
    };
    if let Some((status, body)) = shared.take_injection(&path) {
        return text(status, body);
    }
    if method == Method::OPTIONS {
        return ok_empty();
    }
    if let Some(dc) = q.get("dc") {
        if !dc.is_empty() && dc != "dc1" {
            return text(500, "No path to datacenter");
        }
    }
    if path == "/v1/status/leader" {
        return if method == Method::GET {
            json_resp(&json!("127.0.0.1:8300"))
        } else {
            method_not_allowed(&method, "OPTIONS,GET")
        };
    }
    let caller = match resolve_token(shared, &q, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let call = Call {
        method,
        path,
        q,
        caller,
        body,
    };
    if let Some(resp) = agent_endpoint(shared, &call) {
        return resp;
    }
    if let Some(resp) = read_endpoint(shared, call).await {
        return resp;
    }
    text(
        404,
        "Invalid URL path: not a recognized HTTP API endpoint\n",
    )
}

/// `/v1/agent/...`: registration, check updates and the local agent's own reads.
fn agent_endpoint(shared: &Arc<Shared>, call: &Call) -> Option<Resp> {
    let path = call.path.as_str();
    if path == "/v1/agent/self" {
        return Some(call.refuse_unless(Method::GET).unwrap_or_else(|| {
            if call.caller == Caller::Anonymous {
                return denied("agent:read", &shared.opts.node_name);
            }
            json_resp(&json!({
                "Config": {"Datacenter": "dc1", "NodeName": shared.opts.node_name, "Version": "1.18.0-fake"},
                "Member": {"Name": shared.opts.node_name, "Addr": shared.opts.node_address}
            }))
        }));
    }
    if path == "/v1/agent/service/register" {
        return Some(
            call.refuse_unless(Method::PUT)
                .unwrap_or_else(|| agent::register(shared, &call.q, &call.caller, &call.body)),
        );
    }
    if let Some(id) = call.param("/v1/agent/service/deregister/") {
        return Some(
            call.refuse_unless(Method::PUT)
                .unwrap_or_else(|| agent::deregister(shared, &call.caller, &id)),
        );
    }
    for (prefix, status) in [
        ("/v1/agent/check/pass/", "passing"),
        ("/v1/agent/check/warn/", "warning"),
        ("/v1/agent/check/fail/", "critical"),
    ] {
        if let Some(id) = call.param(prefix) {
            return Some(call.refuse_unless(Method::PUT).unwrap_or_else(|| {
                let note = call.q.get("note").unwrap_or("");
                agent::check_update(shared, &call.caller, &id, status, note)
            }));
        }
    }
    if let Some(id) = call.param("/v1/agent/check/update/") {
        return Some(
            call.refuse_unless(Method::PUT)
                .unwrap_or_else(|| check_update_body(shared, call, &id)),
        );
    }
    if path == "/v1/agent/services" {
        return Some(
            call.refuse_unless(Method::GET)
                .unwrap_or_else(|| agent_services(shared, &call.caller)),
        );
    }
    if let Some(id) = call.param("/v1/agent/service/") {
        return Some(
            call.refuse_unless(Method::GET)
                .unwrap_or_else(|| agent_service(shared, &call.caller, &id)),
        );
    }
    None
}

/// `PUT /v1/agent/check/update/:id` with a `{"Status", "Output"}` body.
fn check_update_body(shared: &Arc<Shared>, call: &Call, id: &str) -> Resp {
    let v: Value = match serde_json::from_slice(&call.body) {
        Ok(v) => v,
        Err(e) => return text(400, format!("Request decode failed: {e}")),
    };
    let status = v.get("Status").and_then(Value::as_str).unwrap_or("");
    if !matches!(status, "passing" | "warning" | "critical") {
        return text(400, format!("Invalid check status: '{status}'"));
    }
    let output = v.get("Output").and_then(Value::as_str).unwrap_or("");
    agent::check_update(shared, &call.caller, id, status, output)
}

/// `GET /v1/agent/services`: the local node's services (nothing for an anonymous caller).
fn agent_services(shared: &Shared, caller: &Caller) -> Resp {
    let st = shared.state.lock();
    let mut m = Map::new();
    if *caller == Caller::Allowed {
        for ((node, id), e) in &st.services {
            if node == &st.local_node && !e.server_entry {
                m.insert(id.clone(), State::agent_service_json(e));
            }
        }
    }
    json_resp(&Value::Object(m))
}

/// `GET /v1/agent/service/:id`, with its content hash.
fn agent_service(shared: &Shared, caller: &Caller, id: &str) -> Resp {
    let st = shared.state.lock();
    match st.local(id) {
        None => text(404, format!("unknown service ID: {id}")),
        Some(e) if *caller == Caller::Anonymous => denied("service:read", &e.svc.name),
        Some(e) => {
            let mut v = State::agent_service_json(e);
            let hash = format!("{:016x}", e.modify_index);
            v["ContentHash"] = json!(hash);
            let mut r = json_resp(&v);
            if let Ok(h) = http::HeaderValue::from_str(&hash) {
                r.headers_mut().insert("X-Consul-ContentHash", h);
            }
            r
        }
    }
}

/// The catalog and cluster reads: `PUT /v1/catalog/deregister`, and, with blocking-query
/// support, `/v1/health/service/:name`, `/v1/catalog/service/:name`, `/v1/catalog/services`.
async fn read_endpoint(shared: &Arc<Shared>, call: Call) -> Option<Resp> {
    if call.path == "/v1/catalog/deregister" {
        return Some(
            call.refuse_unless(Method::PUT)
                .unwrap_or_else(|| agent::catalog_deregister(shared, &call.caller, &call.body)),
        );
    }
    if let Some(name) = call.param("/v1/catalog/service/") {
        if let Some(refused) = call.refuse_unless(Method::GET) {
            return Some(refused);
        }
        let tags = call.q.all("tag");
        let anonymous = call.caller == Caller::Anonymous;
        let index_name = name.clone();
        let resp = blocking(
            shared,
            &call.q,
            move |st| st.health_index(&index_name),
            move |st| {
                if anonymous {
                    json!([])
                } else {
                    st.catalog_service_entries(&name, &tags)
                }
            },
        )
        .await;
        return Some(resp);
    }
    if let Some(name) = call.param("/v1/health/service/") {
        if let Some(refused) = call.refuse_unless(Method::GET) {
            return Some(refused);
        }
        return Some(health_service(shared, call, name).await);
    }
    if call.path == "/v1/catalog/services" {
        if let Some(refused) = call.refuse_unless(Method::GET) {
            return Some(refused);
        }
        let anonymous = call.caller == Caller::Anonymous;
        let resp = blocking(
            shared,
            &call.q,
            |st| st.services_index,
            move |st| {
                if anonymous {
                    json!({})
                } else {
                    st.catalog_services()
                }
            },
        )
        .await;
        return Some(resp);
    }
    None
}

/// `GET /v1/health/service/:name` with `passing` and `tag` filters.
async fn health_service(shared: &Arc<Shared>, call: Call, name: String) -> Resp {
    let passing = match call.q.get("passing") {
        None => false,
        Some("") => true,
        Some(v) => match v {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            _ => return text(400, "Invalid value for ?passing"),
        },
    };
    if call.q.has("filter") {
        return text(
            500,
            "Failed to create boolean expression evaluator: the fake agent does not implement filter",
        );
    }
    let tags = call.q.all("tag");
    let anonymous = call.caller == Caller::Anonymous;
    let index_name = name.clone();
    blocking(
        shared,
        &call.q,
        move |st| st.health_index(&index_name),
        move |st| {
            if anonymous {
                json!([])
            } else {
                st.health_entries(&name, passing, &tags)
            }
        },
    )
    .await
}
