//! Request handling of the fake agent.

// Handlers return the HTTP error response itself as `Err`; boxing it would only add noise to a
// test double.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use rand::Rng;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::state::{Check, Entry, State, Svc};
use super::{SeenRequest, Shared};
use waypost_core_types::time::parse_duration as parse_go_duration;

type Resp = Response<Full<Bytes>>;

const MAX_QUERY_TIME: Duration = Duration::from_secs(600);
const DEFAULT_QUERY_TIME: Duration = Duration::from_secs(300);

fn text(status: u16, body: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn ok_empty() -> Resp {
    Response::new(Full::new(Bytes::new()))
}

fn json_resp(v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn with_index(mut r: Resp, index: u64) -> Resp {
    let h = r.headers_mut();
    let set = |h: &mut http::HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = http::HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(h, "X-Consul-Index", index.max(1).to_string());
    set(h, "X-Consul-Knownleader", "true".into());
    set(h, "X-Consul-Lastcontact", "0".into());
    set(h, "X-Consul-Effective-Consistency", "leader".into());
    set(h, "X-Consul-Query-Backend", "blocking-query".into());
    r
}

fn pct_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (pct_decode(k), pct_decode(v)),
                    None => (pct_decode(p), String::new()),
                })
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }
    fn has(&self, k: &str) -> bool {
        self.0.iter().any(|(kk, _)| kk == k)
    }
    fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(kk, _)| kk == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Who is asking, under ACLs.
#[derive(Debug, PartialEq, Eq)]
enum Caller {
    /// ACLs off, or the configured token.
    Allowed,
    Anonymous,
}

fn resolve_token(shared: &Shared, q: &Query, headers: &http::HeaderMap) -> Result<Caller, Resp> {
    let Some(secret) = &shared.opts.acl_token else {
        return Ok(Caller::Allowed);
    };
    let from_query = q.get("token").filter(|t| !t.is_empty()).map(str::to_owned);
    let from_header = headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let from_bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_owned())
        })
        .filter(|t| !t.is_empty());
    match from_query.or(from_header).or(from_bearer) {
        None => Ok(Caller::Anonymous),
        Some(t) if &t == secret => Ok(Caller::Allowed),
        Some(_) => Err(text(403, "ACL not found")),
    }
}

fn denied(perm: &str, on: &str) -> Resp {
    text(
        403,
        format!(
            "Permission denied: anonymous token lacks permission '{perm}' on \"{on}\". The anonymous \
             token is used implicitly when a request does not specify a token."
        ),
    )
}

fn method_not_allowed(m: &Method, allow: &str) -> Resp {
    let mut r = text(405, format!("method {m} not allowed"));
    if let Ok(v) = http::HeaderValue::from_str(allow) {
        r.headers_mut().insert(http::header::ALLOW, v);
    }
    r
}

pub(crate) async fn handle(shared: Arc<Shared>, req: Request<hyper::body::Incoming>) -> Resp {
    let mut resp = route(&shared, req).await;
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
    let param = |prefix: &str| path.strip_prefix(prefix).map(pct_decode);
    let is_put = method == Method::PUT;
    let is_get = method == Method::GET;
    let need_put = || method_not_allowed(&method, "OPTIONS,PUT");
    let need_get = || method_not_allowed(&method, "OPTIONS,GET");

    if path == "/v1/status/leader" {
        return if is_get {
            json_resp(&json!("127.0.0.1:8300"))
        } else {
            need_get()
        };
    }
    let caller = match resolve_token(shared, &q, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if path == "/v1/agent/self" {
        if !is_get {
            return need_get();
        }
        if caller == Caller::Anonymous {
            return denied("agent:read", &shared.opts.node_name);
        }
        return json_resp(&json!({
            "Config": {"Datacenter": "dc1", "NodeName": shared.opts.node_name, "Version": "1.18.0-fake"},
            "Member": {"Name": shared.opts.node_name, "Addr": shared.opts.node_address}
        }));
    }
    if path == "/v1/agent/service/register" {
        return if is_put {
            register(shared, &q, &caller, &body)
        } else {
            need_put()
        };
    }
    if let Some(id) = param("/v1/agent/service/deregister/") {
        return if is_put {
            deregister(shared, &caller, &id)
        } else {
            need_put()
        };
    }
    for (p, status) in [
        ("/v1/agent/check/pass/", "passing"),
        ("/v1/agent/check/warn/", "warning"),
        ("/v1/agent/check/fail/", "critical"),
    ] {
        if let Some(id) = param(p) {
            if !is_put {
                return need_put();
            }
            let note = q.get("note").unwrap_or("").to_owned();
            return check_update(shared, &caller, &id, status, &note);
        }
    }
    if let Some(id) = param("/v1/agent/check/update/") {
        if !is_put {
            return need_put();
        }
        let v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return text(400, format!("Request decode failed: {e}")),
        };
        let status = v.get("Status").and_then(Value::as_str).unwrap_or("");
        if !matches!(status, "passing" | "warning" | "critical") {
            return text(400, format!("Invalid check status: '{status}'"));
        }
        let output = v.get("Output").and_then(Value::as_str).unwrap_or("");
        return check_update(shared, &caller, &id, status, output);
    }
    if path == "/v1/agent/services" {
        if !is_get {
            return need_get();
        }
        let st = shared.state.lock();
        let mut m = Map::new();
        if caller == Caller::Allowed {
            for ((node, id), e) in &st.services {
                if node == &st.local_node {
                    m.insert(id.clone(), State::agent_service_json(e));
                }
            }
        }
        return json_resp(&Value::Object(m));
    }
    if let Some(id) = param("/v1/agent/service/") {
        if !is_get {
            return need_get();
        }
        let st = shared.state.lock();
        return match st.local(&id) {
            None => text(404, format!("unknown service ID: {id}")),
            Some(e) if caller == Caller::Anonymous => denied("service:read", &e.svc.name),
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
        };
    }
    if let Some(name) = param("/v1/health/service/") {
        if !is_get {
            return need_get();
        }
        let passing = match q.get("passing") {
            None => false,
            Some("") => true,
            Some(v) => match v {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                _ => return text(400, "Invalid value for ?passing"),
            },
        };
        if q.has("filter") {
            return text(500, "Failed to create boolean expression evaluator: the fake agent does not implement filter");
        }
        let tags = q.all("tag");
        let name2 = name.clone();
        return blocking(
            shared,
            &q,
            move |st| st.health_index(&name2),
            move |st| {
                if caller == Caller::Anonymous {
                    json!([])
                } else {
                    st.health_entries(&name, passing, &tags)
                }
            },
        )
        .await;
    }
    if path == "/v1/catalog/services" {
        if !is_get {
            return need_get();
        }
        return blocking(
            shared,
            &q,
            |st| st.services_index,
            move |st| {
                if caller == Caller::Anonymous {
                    json!({})
                } else {
                    st.catalog_services()
                }
            },
        )
        .await;
    }
    text(
        404,
        "Invalid URL path: not a recognized HTTP API endpoint\n",
    )
}

/// A read with Consul's blocking-query semantics.
async fn blocking(
    shared: &Arc<Shared>,
    q: &Query,
    index_of: impl Fn(&State) -> u64,
    body_of: impl Fn(&State) -> Value,
) -> Resp {
    if q.has("stale") && q.has("consistent") {
        return text(
            400,
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        );
    }
    let requested = match q.get("index") {
        None | Some("") => 0,
        Some(v) => match v.parse::<u64>() {
            Ok(i) => i,
            Err(_) => return text(400, "Invalid index"),
        },
    };
    let wait = match q.get("wait") {
        None | Some("") => None,
        Some(w) => match parse_go_duration(w) {
            Ok(d) => Some(d),
            Err(_) => return text(400, "Invalid wait time"),
        },
    };
    if requested > 0 {
        let mut timeout = match wait {
            Some(w) if !w.is_zero() => w.min(MAX_QUERY_TIME),
            _ => DEFAULT_QUERY_TIME,
        };
        let jitter_max = (timeout / 16).as_nanos() as u64;
        if jitter_max > 0 {
            timeout += Duration::from_nanos(rand::rng().random_range(0..jitter_max));
        }
        let deadline = Instant::now() + timeout;
        let mut rx = shared.changed.subscribe();
        loop {
            if index_of(&shared.state.lock()) > requested {
                break;
            }
            tokio::select! {
                r = rx.changed() => { if r.is_err() { break; } }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    let st = shared.state.lock();
    with_index(json_resp(&body_of(&st)), index_of(&st))
}

/// Strict decoding like Go's `DisallowUnknownFields`, with case-insensitive names.
fn fields<'a>(
    obj: &'a Map<String, Value>,
    allowed: &[&str],
) -> Result<BTreeMap<String, &'a Value>, Resp> {
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let lower = k.to_ascii_lowercase();
        if !allowed.contains(&lower.as_str()) {
            return Err(text(
                400,
                format!("Request decode failed: json: unknown field \"{k}\""),
            ));
        }
        let canon = lower.replace('_', "");
        out.insert(canon, v);
    }
    Ok(out)
}

fn type_err(field: &str, want: &str) -> Resp {
    text(
        400,
        format!("Request decode failed: json: cannot unmarshal into Go struct field .{field} of type {want}"),
    )
}

fn get_str(m: &BTreeMap<String, &Value>, k: &str, field: &str) -> Result<Option<String>, Resp> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(type_err(field, "string")),
    }
}

fn get_duration(
    m: &BTreeMap<String, &Value>,
    k: &str,
    field: &str,
) -> Result<Option<Duration>, Resp> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(Duration::from_nanos(n.as_u64().unwrap_or(0)))),
        Some(Value::String(s)) => parse_go_duration(s)
            .map(Some)
            .map_err(|e| text(400, format!("Request decode failed: time: {e}"))),
        Some(_) => Err(type_err(field, "time.Duration")),
    }
}

const SERVICE_FIELDS: &[&str] = &[
    "id",
    "name",
    "tags",
    "address",
    "port",
    "meta",
    "taggedaddresses",
    "tagged_addresses",
    "weights",
    "enabletagoverride",
    "enable_tag_override",
    "check",
    "checks",
    "token",
    "kind",
    "proxy",
    "connect",
    "socketpath",
    "namespace",
    "partition",
    "locality",
];
const CHECK_FIELDS: &[&str] = &[
    "checkid",
    "name",
    "status",
    "notes",
    "ttl",
    "http",
    "method",
    "header",
    "body",
    "tcp",
    "interval",
    "timeout",
    "tlsskipverify",
    "tls_skip_verify",
    "tlsservername",
    "tls_server_name",
    "deregistercriticalserviceafter",
    "deregister_critical_service_after",
    "successbeforepassing",
    "failuresbeforewarning",
    "failuresbeforecritical",
    "outputmaxsize",
    "serviceid",
    "service_id",
    "args",
    "scriptargs",
    "script_args",
];

struct CheckSpec {
    id: Option<String>,
    name: Option<String>,
    status: Option<String>,
    notes: String,
    ttl: Duration,
    deregister_after: Option<Duration>,
}

fn parse_check(v: &Value) -> Result<Option<CheckSpec>, Resp> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) if o.is_empty() => return Ok(None),
        Value::Object(o) => o,
        _ => return Err(type_err("Check", "structs.CheckType")),
    };
    let f = fields(obj, CHECK_FIELDS)?;
    let ttl = get_duration(&f, "ttl", "TTL")?.unwrap_or_default();
    let interval = get_duration(&f, "interval", "Interval")?.unwrap_or_default();
    if !ttl.is_zero() && !interval.is_zero() {
        return Err(text(
            400,
            "Invalid check: Interval and TTL cannot both be specified",
        ));
    }
    if f.contains_key("http")
        || f.contains_key("tcp")
        || f.contains_key("args")
        || f.contains_key("scriptargs")
    {
        return Err(text(
            400,
            "Invalid check: the fake agent implements TTL checks only",
        ));
    }
    if ttl.is_zero() {
        return Err(text(400, "Invalid check: TTL must be > 0 for TTL checks"));
    }
    let status = get_str(&f, "status", "Status")?;
    if let Some(s) = &status {
        if !s.is_empty() && !matches!(s.as_str(), "passing" | "warning" | "critical") {
            return Err(text(
                400,
                "Status for checks must 'passing', 'warning', 'critical'",
            ));
        }
    }
    Ok(Some(CheckSpec {
        id: get_str(&f, "checkid", "CheckID")?.filter(|s| !s.is_empty()),
        name: get_str(&f, "name", "Name")?.filter(|s| !s.is_empty()),
        status: status.filter(|s| !s.is_empty()),
        notes: get_str(&f, "notes", "Notes")?.unwrap_or_default(),
        ttl,
        deregister_after: get_duration(
            &f,
            "deregistercriticalserviceafter",
            "DeregisterCriticalServiceAfter",
        )?
        .filter(|d| !d.is_zero()),
    }))
}

fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), Resp> {
    if meta.len() > 64 {
        return Err(text(
            400,
            "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs",
        ));
    }
    for (k, v) in meta {
        let why = if k.is_empty() {
            Some("Key cannot be blank")
        } else if !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Some("Key contains invalid characters")
        } else if k.len() > 128 {
            Some("Key is too long (limit: 128 characters)")
        } else if k.starts_with("consul-") {
            Some("Key prefix 'consul-' is reserved for internal use")
        } else if v.len() > 512 {
            Some("Value is too long (limit: 512 characters)")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(text(
                400,
                format!("Invalid Service Meta: Couldn't load metadata pair ('{k}', '{v}'): {why}"),
            ));
        }
    }
    Ok(())
}

fn register(shared: &Arc<Shared>, q: &Query, caller: &Caller, body: &Bytes) -> Resp {
    if body.is_empty() {
        return text(400, "Request decode failed: EOF");
    }
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return text(400, format!("Request decode failed: {e}")),
    };
    let Value::Object(obj) = &v else {
        return text(
            400,
            "Request decode failed: json: cannot unmarshal into structs.ServiceDefinition",
        );
    };
    let f = match fields(obj, SERVICE_FIELDS) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let parsed = (|| -> Result<(Svc, Vec<CheckSpec>), Resp> {
        let name = get_str(&f, "name", "Name")?.unwrap_or_default();
        if name.is_empty() {
            return Err(text(400, "Missing service name"));
        }
        let id = get_str(&f, "id", "ID")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| name.clone());
        let address = get_str(&f, "address", "Address")?.unwrap_or_default();
        if address == "0.0.0.0" || address == "::" || address == "[::]" {
            return Err(text(400, "Invalid service address"));
        }
        let tags = match f.get("tags") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| type_err("Tags", "string"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(type_err("Tags", "[]string")),
        };
        let port = match f.get("port") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => n.as_i64().ok_or_else(|| type_err("Port", "int"))?,
            Some(_) => return Err(type_err("Port", "int")),
        };
        let meta: Option<BTreeMap<String, String>> = match f.get("meta") {
            None | Some(Value::Null) => None,
            Some(m) => Some(
                serde_json::from_value((*m).clone())
                    .map_err(|_| type_err("Meta", "map[string]string"))?,
            ),
        };
        let weights = match f.get("weights") {
            None | Some(Value::Null) => (1, 1),
            Some(Value::Object(w)) => {
                let wf = fields(w, &["passing", "warning"])?;
                let p = wf.get("passing").and_then(|v| v.as_i64()).unwrap_or(0);
                let wa = wf.get("warning").and_then(|v| v.as_i64()).unwrap_or(0);
                (p, wa)
            }
            Some(_) => return Err(type_err("Weights", "structs.Weights")),
        };
        let enable_tag_override = matches!(f.get("enabletagoverride"), Some(Value::Bool(true)));
        if weights.0 <= 0 {
            return Err(text(400, "Invalid Weights: Passing must be greater than 0"));
        }
        if weights.1 < 0 {
            return Err(text(
                400,
                "Invalid Weights: Warning must be greater or equal than 0",
            ));
        }
        if weights.0 > 65535 || weights.1 > 65535 {
            return Err(text(
                400,
                "Invalid Weights: DNS Weight must be between 0 and 65535",
            ));
        }
        if let Some(m) = &meta {
            validate_meta(m)?;
        }
        let mut checks = Vec::new();
        if let Some(c) = f.get("check") {
            if let Some(c) = parse_check(c)? {
                checks.push(c);
            }
        }
        match f.get("checks") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => {
                for c in a {
                    if let Some(c) = parse_check(c)? {
                        checks.push(c);
                    }
                }
            }
            Some(_) => return Err(type_err("Checks", "structs.CheckTypes")),
        }
        Ok((
            Svc {
                id,
                name,
                tags,
                address,
                port,
                meta,
                weights,
                enable_tag_override,
            },
            checks,
        ))
    })();
    let (svc, specs) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    if *caller == Caller::Anonymous {
        return denied("service:write", &svc.name);
    }
    let replace = matches!(q.get("replace-existing-checks"), Some("") | Some("true"));
    let now = Instant::now();
    {
        let mut st = shared.state.lock();
        let node = st.local_node.clone();
        let key = (node.clone(), svc.id.clone());
        let old = st.services.get(&key).cloned();
        let def_changed = old.as_ref().map(|o| o.svc != svc).unwrap_or(true);
        let n = specs.len();
        let mut new_ids = Vec::new();
        let mut checks_changed = false;
        for (i, spec) in specs.into_iter().enumerate() {
            let cid = spec.id.clone().unwrap_or_else(|| {
                if n == 1 {
                    format!("service:{}", svc.id)
                } else {
                    format!("service:{}:{}", svc.id, i + 1)
                }
            });
            new_ids.push(cid.clone());
            let ckey = (node.clone(), cid.clone());
            let name = spec
                .name
                .clone()
                .unwrap_or_else(|| format!("Service '{}' check", svc.name));
            match st.checks.get_mut(&ckey) {
                Some(c) => {
                    // Re-registration keeps status and output; the TTL restarts.
                    c.deadline = Some(now + spec.ttl);
                    if c.name != name
                        || c.ttl != Some(spec.ttl)
                        || c.deregister_after != spec.deregister_after
                        || c.notes != spec.notes
                    {
                        checks_changed = true;
                    }
                    c.name = name;
                    c.notes = spec.notes;
                    c.ttl = Some(spec.ttl);
                    c.deregister_after = spec.deregister_after;
                }
                None => {
                    checks_changed = true;
                    st.checks.insert(
                        ckey,
                        Check {
                            node: node.clone(),
                            id: cid,
                            name,
                            notes: spec.notes,
                            service_id: svc.id.clone(),
                            status: spec.status.unwrap_or_else(|| "critical".into()),
                            output: String::new(),
                            catalog_output: String::new(),
                            ttl: Some(spec.ttl),
                            deadline: Some(now + spec.ttl),
                            deregister_after: spec.deregister_after,
                            critical_since: None,
                            create_index: 0,
                            modify_index: 0,
                        },
                    );
                }
            }
        }
        if replace {
            let before = st.checks.len();
            st.checks.retain(|(n, id), c| {
                !(n == &node && c.service_id == svc.id && !new_ids.contains(id))
            });
            checks_changed |= st.checks.len() != before;
        }
        if def_changed || checks_changed {
            let idx = st.bump(&svc.name, def_changed);
            if let Some(o) = &old {
                if !o.svc.name.eq_ignore_ascii_case(&svc.name) {
                    st.bump(&o.svc.name, true);
                }
            }
            for c in st.checks.values_mut() {
                if c.node == node && c.service_id == svc.id && c.create_index == 0 {
                    c.create_index = idx;
                    c.modify_index = idx;
                }
            }
            let create_index = old.as_ref().map(|o| o.create_index).unwrap_or(idx);
            let modify_index = if def_changed {
                idx
            } else {
                old.as_ref().map(|o| o.modify_index).unwrap_or(idx)
            };
            st.services.insert(
                key,
                Entry {
                    node: node.clone(),
                    svc,
                    create_index,
                    modify_index,
                },
            );
        }
    }
    shared.notify();
    ok_empty()
}

fn deregister(shared: &Arc<Shared>, caller: &Caller, id: &str) -> Resp {
    {
        let mut st = shared.state.lock();
        let Some(e) = st.local(id) else {
            return text(
                404,
                format!("Unknown service ID \"{id}\". Ensure that the service ID is passed, not the service name."),
            );
        };
        if *caller == Caller::Anonymous {
            return denied("service:write", &e.svc.name);
        }
        st.remove_local_service(id);
    }
    shared.notify();
    ok_empty()
}

fn check_update(
    shared: &Arc<Shared>,
    caller: &Caller,
    id: &str,
    status: &str,
    output: &str,
) -> Resp {
    let changed = {
        let mut st = shared.state.lock();
        let key = (st.local_node.clone(), id.to_owned());
        let Some(c) = st.checks.get(&key) else {
            return text(
                404,
                format!("Unknown check ID \"{id}\". Ensure that the check ID is passed, not the check name."),
            );
        };
        if *caller == Caller::Anonymous {
            let name = st
                .local(&c.service_id)
                .map(|e| e.svc.name.clone())
                .unwrap_or_default();
            return denied("service:write", &name);
        }
        if c.ttl.is_none() {
            return text(
                500,
                format!("CheckID \"{id}\" does not have associated TTL"),
            );
        }
        let mut out = output.to_owned();
        if out.len() > 4096 {
            let n = out.len();
            let mut cut = 4096;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push_str(&format!(" ... (captured 4096 of {n} bytes)"));
        }
        st.update_check(&key, status, &out, Instant::now())
    };
    if changed {
        shared.notify();
    }
    ok_empty()
}

pub(crate) fn add_remote(shared: &Shared, node: &str, node_address: &str, v: Value, status: &str) {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let name = s("Service").or_else(|| s("Name")).unwrap_or_default();
    let id = s("ID").unwrap_or_else(|| name.clone());
    let svc = Svc {
        id: id.clone(),
        name: name.clone(),
        tags: v
            .get("Tags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        address: s("Address").unwrap_or_default(),
        port: v.get("Port").and_then(Value::as_i64).unwrap_or(0),
        meta: v
            .get("Meta")
            .and_then(|m| serde_json::from_value(m.clone()).ok()),
        weights: v
            .get("Weights")
            .map(|w| {
                (
                    w.get("Passing").and_then(Value::as_i64).unwrap_or(1),
                    w.get("Warning").and_then(Value::as_i64).unwrap_or(1),
                )
            })
            .unwrap_or((1, 1)),
        enable_tag_override: false,
    };
    let mut st = shared.state.lock();
    st.nodes
        .entry(node.to_owned())
        .or_insert_with(|| super::state::Node {
            name: node.to_owned(),
            address: node_address.to_owned(),
            id: format!("5f8a0ad0-2c1b-4d0e-9d5e-{:012}", st_len_hint(node)),
        });
    let idx = st.bump(&name, true);
    st.services.insert(
        (node.to_owned(), id.clone()),
        Entry {
            node: node.to_owned(),
            svc,
            create_index: idx,
            modify_index: idx,
        },
    );
    st.checks.insert(
        (node.to_owned(), format!("service:{id}")),
        Check {
            node: node.to_owned(),
            id: format!("service:{id}"),
            name: format!("Service '{name}' check"),
            notes: String::new(),
            service_id: id,
            status: status.to_owned(),
            output: String::new(),
            catalog_output: String::new(),
            ttl: None,
            deadline: None,
            deregister_after: None,
            critical_since: None,
            create_index: idx,
            modify_index: idx,
        },
    );
}

fn st_len_hint(node: &str) -> u64 {
    node.bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 1_000_000_000_000
}
