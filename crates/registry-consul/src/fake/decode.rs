//! Decoding of request bodies as the agent does it: Go's strict JSON decoding
//! (`DisallowUnknownFields`, case-insensitive field names), service definitions with their
//! checks, and the validation Consul applies before touching its state.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use waypost_core_types::time::parse_duration as parse_go_duration;

use super::respond::{text, Resp};
use super::state::Svc;

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

pub(crate) struct CheckSpec {
    pub(crate) id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) notes: String,
    pub(crate) ttl: Duration,
    pub(crate) deregister_after: Option<Duration>,
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

/// Decodes the body of `PUT /v1/agent/service/register`: the service and its checks.
pub(crate) fn registration(body: &Bytes) -> Result<(Svc, Vec<CheckSpec>), Resp> {
    if body.is_empty() {
        return Err(text(400, "Request decode failed: EOF"));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| text(400, format!("Request decode failed: {e}")))?;
    let Value::Object(obj) = &v else {
        return Err(text(
            400,
            "Request decode failed: json: cannot unmarshal into structs.ServiceDefinition",
        ));
    };
    let f = fields(obj, SERVICE_FIELDS)?;
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
}

/// The body of `PUT /v1/catalog/deregister`.
pub(crate) struct CatalogDeregistration {
    pub(crate) node: String,
    pub(crate) service_id: Option<String>,
    pub(crate) check_id: Option<String>,
}

const CATALOG_DEREGISTER_FIELDS: &[&str] = &[
    "node",
    "datacenter",
    "serviceid",
    "checkid",
    "namespace",
    "partition",
];

/// Decodes `{"Node", "ServiceID"?, "CheckID"?, "Datacenter"?}`; the node is required.
pub(crate) fn catalog_deregistration(body: &Bytes) -> Result<CatalogDeregistration, Resp> {
    if body.is_empty() {
        return Err(text(400, "Request decode failed: EOF"));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| text(400, format!("Request decode failed: {e}")))?;
    let Value::Object(obj) = &v else {
        return Err(type_err("", "structs.DeregisterRequest"));
    };
    let m = fields(obj, CATALOG_DEREGISTER_FIELDS)?;
    let node = get_str(&m, "node", "Node")?.unwrap_or_default();
    if node.is_empty() {
        return Err(text(400, "Must provide node"));
    }
    Ok(CatalogDeregistration {
        node,
        service_id: get_str(&m, "serviceid", "ServiceID")?.filter(|s| !s.is_empty()),
        check_id: get_str(&m, "checkid", "CheckID")?.filter(|s| !s.is_empty()),
    })
}
