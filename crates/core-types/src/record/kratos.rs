//! go-kratos' record: the JSON of its `registry.ServiceInstance`, as its etcd registry writes it
//! at `<namespace>/<name>/<id>` (namespace `/microservices` by default).
//!
//! From the kratos sources (`go-kratos/kratos`): `registry/registry.go` defines
//! `ServiceInstance` with the JSON fields `id`, `name`, `version`, `metadata` (a
//! `map[string]string`) and `endpoints` (URLs such as `http://127.0.0.1:8000` and
//! `grpc://127.0.0.1:9000`); `contrib/registry/etcd/service.go` writes it with Go's
//! `json.Marshal` and reads it with `json.Unmarshal`; `contrib/registry/etcd/registry.go` puts
//! it at `fmt.Sprintf("%s/%s/%s", namespace, service.Name, service.ID)` under a lease. The
//! endpoint schemes come from `internal/endpoint/endpoint.go` (`Scheme("http", secure)` is
//! `http` or `https`; `grpc` or `grpcs` likewise).
//!
//! Reading: one instance per record. The endpoint is the first `http`/`https` one, else the
//! first `grpc`/`grpcs` one, else the first `tcp` one; endpoints that do not parse (no port, a
//! path, credentials, another scheme) are passed over. The scheme gives the protocol (`grpcs`
//! is [`Protocol::Grpc`] with metadata [`TLS_KEY`] = `true`, which waypost's gRPC channel reads
//! as "call it over TLS"; a `grpc` instance with that key is written back as `grpcs`). A record kratos wrote has no
//! health (it reads as [`Health::Unknown`](crate::Health::Unknown)) and gets [`ENDPOINTS_KEY`] with every endpoint it
//! lists. Writing: kratos' JSON with one endpoint, `<protocol>://<address>:<port>`; what kratos
//! has no field for goes into its metadata under the `waypost.*` keys of [`RESERVED`], which
//! reading takes out again, so an instance waypost registered reads back as it was.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::quote::quoted_up_to;
use crate::time::Timestamp;
use crate::validate::{MAX_METADATA_ENTRIES, MAX_METADATA_VALUE_LEN};
use crate::{Error, Metadata, Protocol, ServiceInfo, DEFAULT_WEIGHT};

use super::{host_port, SHOWN};

/// The metadata key holding every endpoint of a record kratos wrote, as a JSON array of
/// strings (`["http://10.0.0.7:8000","grpc://10.0.0.7:9000"]`), when that fits the metadata
/// bounds ([`MAX_METADATA_VALUE_LEN`], [`MAX_METADATA_ENTRIES`]). Never written to etcd.
pub const ENDPOINTS_KEY: &str = "kratos.endpoints";
/// The metadata key saying a `grpc` instance is called over TLS (`true`), as waypost's gRPC
/// channel reads it: set when the chosen endpoint is `grpcs://`, and written back as `grpcs://`.
pub const TLS_KEY: &str = "tls";

/// `waypost.health`: [`ServiceInfo::health`] (`healthy`, `unhealthy`, `unknown`). Always written;
/// its presence marks a record waypost wrote.
pub const HEALTH_KEY: &str = "waypost.health";
/// `waypost.tags`: [`ServiceInfo::tags`] as a JSON array of strings (written when not empty).
pub const TAGS_KEY: &str = "waypost.tags";
/// `waypost.weight`: [`ServiceInfo::weight`] in decimal (written when not the default).
pub const WEIGHT_KEY: &str = "waypost.weight";
/// `waypost.ttl`: [`ServiceInfo::ttl`] in integer nanoseconds (written when not zero).
pub const TTL_KEY: &str = "waypost.ttl";
/// `waypost.created_at`: RFC 3339 (written when set).
pub const CREATED_KEY: &str = "waypost.created_at";
/// `waypost.updated_at`: RFC 3339 (written when set).
pub const UPDATED_KEY: &str = "waypost.updated_at";
/// `waypost.last_check`: RFC 3339 (written when set).
pub const LAST_CHECK_KEY: &str = "waypost.last_check";

/// The metadata keys the kratos format uses for waypost's own fields: an instance to write must
/// not carry them itself, and reading removes them.
pub const RESERVED: &[&str] = &[
    HEALTH_KEY,
    TAGS_KEY,
    WEIGHT_KEY,
    TTL_KEY,
    CREATED_KEY,
    UPDATED_KEY,
    LAST_CHECK_KEY,
];

/// Most endpoints of one record looked at (kratos writes one per transport).
const MAX_ENDPOINTS: usize = 64;

/// Decodes kratos' JSON stored at `<namespace>/<name>/<id>`.
pub(super) fn decode(name: &str, id: &str, value: &[u8]) -> Result<ServiceInfo, String> {
    let root: Value = serde_json::from_slice(value).map_err(|e| format!("not kratos JSON: {e}"))?;
    let Value::Object(fields) = root else {
        return Err("not kratos JSON: not an object".into());
    };
    let rec_id = string_field(&fields, "id")?;
    let rec_name = string_field(&fields, "name")?;
    if rec_id != id || rec_name != name {
        return Err(format!(
            "it names instance `{}` of `{}`, not `{}` of `{}` as its key does",
            quoted_up_to(&rec_id, SHOWN),
            quoted_up_to(&rec_name, SHOWN),
            quoted_up_to(id, SHOWN),
            quoted_up_to(name, SHOWN),
        ));
    }
    let version = string_field(&fields, "version")?;
    let mut metadata = metadata_field(&fields)?;
    let endpoints = endpoints_field(&fields)?;
    let (protocol, secure, host, port) = choose(&endpoints)?;

    let mut info = ServiceInfo::new(rec_id, rec_name, host, port);
    info.version = version;
    info.protocol = protocol;
    // A `grpcs` endpoint: gRPC over TLS, which waypost's gRPC channel reads from `tls`.
    if secure && protocol == Protocol::Grpc && !metadata.contains_key(TLS_KEY) {
        metadata.insert(TLS_KEY.to_owned(), "true".to_owned());
    }
    let ours = metadata.contains_key(HEALTH_KEY);
    take_waypost_fields(&mut metadata, &mut info)?;
    if !ours || endpoints.len() != 1 {
        let list = serde_json::to_string(&endpoints).map_err(|e| e.to_string())?;
        // Only when it fits the metadata bounds: a long list must not make the record invalid.
        if list.len() <= MAX_METADATA_VALUE_LEN && metadata.len() < MAX_METADATA_ENTRIES {
            metadata.insert(ENDPOINTS_KEY.to_owned(), list);
        }
    }
    info.metadata = metadata;
    info.validate().map_err(|e| e.to_string())?;
    Ok(info)
}

/// Encodes `info` as kratos' `json.Marshal` writes a `ServiceInstance`.
pub(super) fn encode(info: &ServiceInfo) -> Result<Vec<u8>, Error> {
    if let Some(key) = RESERVED.iter().find(|k| info.metadata.contains_key(**k)) {
        return Err(Error::InvalidInstance(format!(
            "metadata key `{key}` is reserved by the kratos record format"
        )));
    }
    let mut metadata: Metadata = info
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != ENDPOINTS_KEY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.insert(HEALTH_KEY.to_owned(), info.health.as_str().to_owned());
    if !info.tags.is_empty() {
        let tags = serde_json::to_string(&info.tags).map_err(|e| Error::Codec(e.to_string()))?;
        metadata.insert(TAGS_KEY.to_owned(), tags);
    }
    if info.weight != DEFAULT_WEIGHT {
        metadata.insert(WEIGHT_KEY.to_owned(), info.weight.to_string());
    }
    if !info.ttl.is_zero() {
        metadata.insert(TTL_KEY.to_owned(), info.ttl.as_nanos().to_string());
    }
    for (key, at) in [
        (CREATED_KEY, &info.created_at),
        (UPDATED_KEY, &info.updated_at),
        (LAST_CHECK_KEY, &info.last_check),
    ] {
        if !at.is_zero() {
            metadata.insert(key.to_owned(), at.to_go_string());
        }
    }
    let tls = info
        .metadata
        .get(TLS_KEY)
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let scheme = match info.protocol {
        Protocol::Grpc if tls => "grpcs",
        other => other.as_str(),
    };
    let endpoint = format!("{scheme}://{}", info.endpoint());

    // Field order and escaping as Go's encoding/json writes the struct: declaration order,
    // map keys sorted (Metadata iterates sorted), HTML-safe string escapes.
    let mut out = String::with_capacity(128);
    out.push_str("{\"id\":");
    go_string(&mut out, &info.id);
    out.push_str(",\"name\":");
    go_string(&mut out, &info.name);
    out.push_str(",\"version\":");
    go_string(&mut out, &info.version);
    out.push_str(",\"metadata\":{");
    for (i, (k, v)) in metadata.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        go_string(&mut out, k);
        out.push(':');
        go_string(&mut out, v);
    }
    out.push_str("},\"endpoints\":[");
    go_string(&mut out, &endpoint);
    out.push_str("]}");
    Ok(out.into_bytes())
}

/// Writes `s` as a JSON string the way Go's `encoding/json` does by default: `\"`, `\\`, `\b`,
/// `\f`, `\n`, `\r`, `\t`, other control characters as `\u00xx`, and `<`, `>`, `&`, U+2028,
/// U+2029 as `\u` escapes (HTML-safe).
pub(crate) fn go_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The value of field `want`, matched as Go matches JSON keys to struct fields: the exact name,
/// else the name in another ASCII case.
fn field<'a>(fields: &'a Map<String, Value>, want: &str) -> Option<&'a Value> {
    fields.get(want).or_else(|| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(want))
            .map(|(_, v)| v)
    })
}

/// A string field; missing or `null` is empty (Go's zero value).
fn string_field(fields: &Map<String, Value>, want: &str) -> Result<String, String> {
    match field(fields, want) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{want}` is not a string")),
    }
}

fn metadata_field(fields: &Map<String, Value>) -> Result<Metadata, String> {
    match field(fields, "metadata") {
        None | Some(Value::Null) => Ok(Metadata::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!(
                    "metadata value of `{}` is not a string",
                    quoted_up_to(k, SHOWN)
                )),
            })
            .collect(),
        Some(_) => Err("`metadata` is not an object".into()),
    }
}

fn endpoints_field(fields: &Map<String, Value>) -> Result<Vec<String>, String> {
    match field(fields, "endpoints") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err("an endpoint is not a string".to_owned()),
            })
            .collect(),
        Some(_) => Err("`endpoints` is not an array".into()),
    }
}

/// The endpoint to call, by the rule in the module docs.
fn choose(endpoints: &[String]) -> Result<(Protocol, bool, String, u16), String> {
    let mut best: Option<(u8, Protocol, bool, String, u16)> = None;
    let mut first_problem: Option<String> = None;
    for e in endpoints.iter().take(MAX_ENDPOINTS) {
        match parse_endpoint(e) {
            Ok((rank, protocol, secure, host, port)) => {
                if best.as_ref().is_none_or(|b| rank < b.0) {
                    best = Some((rank, protocol, secure, host, port));
                }
            }
            Err(why) => {
                first_problem
                    .get_or_insert_with(|| format!("endpoint `{}` {why}", quoted_up_to(e, SHOWN)));
            }
        }
    }
    match (best, first_problem) {
        (Some((_, protocol, secure, host, port)), _) => Ok((protocol, secure, host, port)),
        (None, Some(problem)) => Err(format!("no usable endpoint ({problem})")),
        (None, None) => Err("no endpoints".into()),
    }
}

/// `scheme://host:port` (a query such as kratos' legacy `?isSecure=false` is allowed and
/// ignored): rank, protocol, whether the scheme says TLS (`grpcs`), host (IPv6 without
/// brackets) and port.
fn parse_endpoint(e: &str) -> Result<(u8, Protocol, bool, String, u16), &'static str> {
    let (scheme, rest) = e.split_once("://").ok_or("has no scheme")?;
    let (rank, protocol, secure) = match scheme.to_ascii_lowercase().as_str() {
        "http" => (0, Protocol::Http, false),
        "https" => (0, Protocol::Https, true),
        "grpc" => (1, Protocol::Grpc, false),
        "grpcs" => (1, Protocol::Grpc, true),
        "tcp" => (2, Protocol::Tcp, false),
        _ => return Err("has a scheme other than http, https, grpc, grpcs or tcp"),
    };
    let authority = rest.split(['?', '#']).next().unwrap_or(rest);
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains('/') {
        return Err("has a path");
    }
    if authority.contains('@') {
        return Err("has credentials");
    }
    let (host, port) = host_port(authority)?;
    Ok((rank, protocol, secure, host, port))
}

/// Moves the `waypost.*` keys of a record waypost wrote into their fields.
fn take_waypost_fields(metadata: &mut Metadata, info: &mut ServiceInfo) -> Result<(), String> {
    let bad = |key: &str, value: &str| {
        format!(
            "metadata `{key}` has an invalid value `{}`",
            quoted_up_to(value, SHOWN)
        )
    };
    if let Some(v) = metadata.remove(HEALTH_KEY) {
        info.health = v.parse().map_err(|_| bad(HEALTH_KEY, &v))?;
    }
    if let Some(v) = metadata.remove(TAGS_KEY) {
        info.tags = serde_json::from_str(&v).map_err(|_| bad(TAGS_KEY, &v))?;
    }
    if let Some(v) = metadata.remove(WEIGHT_KEY) {
        info.weight = v.parse().map_err(|_| bad(WEIGHT_KEY, &v))?;
    }
    if let Some(v) = metadata.remove(TTL_KEY) {
        let nanos: u64 = v.parse().map_err(|_| bad(TTL_KEY, &v))?;
        info.ttl = Duration::from_nanos(nanos);
    }
    for (key, slot) in [
        (CREATED_KEY, &mut info.created_at),
        (UPDATED_KEY, &mut info.updated_at),
        (LAST_CHECK_KEY, &mut info.last_check),
    ] {
        if let Some(v) = metadata.remove(key) {
            *slot = Timestamp::parse(&v).map_err(|_| bad(key, &v))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Health;

    /// The bytes kratos' etcd registry writes (`go-kratos/kratos`
    /// `contrib/registry/etcd/service.go` `marshal`, i.e. `json.Marshal` of
    /// `registry.ServiceInstance`) for an app with an HTTP and a gRPC server.
    const KRATOS_JSON: &str = r#"{"id":"7c1d3a52-5b0e-11ef-8f4a-0242ac120002","name":"users","version":"v1.4.2","metadata":{"region":"eu-west-1","zone":"a"},"endpoints":["http://10.0.0.7:8000","grpc://10.0.0.7:9000"]}"#;
    const ID: &str = "7c1d3a52-5b0e-11ef-8f4a-0242ac120002";

    #[test]
    fn decodes_kratos_json_with_the_http_endpoint() {
        let info = decode("users", ID, KRATOS_JSON.as_bytes()).unwrap();
        assert_eq!(
            (info.address.as_str(), info.port, info.protocol),
            ("10.0.0.7", 8000, Protocol::Http)
        );
        assert_eq!(info.version, "v1.4.2");
        assert_eq!(info.health, Health::Unknown);
        assert_eq!(
            info.metadata.get("region").map(String::as_str),
            Some("eu-west-1")
        );
        assert_eq!(
            info.metadata.get(ENDPOINTS_KEY).map(String::as_str),
            Some(r#"["http://10.0.0.7:8000","grpc://10.0.0.7:9000"]"#)
        );
        assert_eq!(info.metadata.len(), 3);
        assert!(info.tags.is_empty() && info.weight == DEFAULT_WEIGHT);
    }

    #[test]
    fn endpoint_rule_and_schemes() {
        let rec = |eps: &str| {
            format!(r#"{{"id":"i","name":"n","version":"","metadata":null,"endpoints":{eps}}}"#)
        };
        let pick = |eps: &str| {
            decode("n", "i", rec(eps).as_bytes()).map(|i| (i.protocol, i.address, i.port))
        };
        // gRPC only (a kratos app with just a gRPC server).
        assert_eq!(
            pick(r#"["grpc://10.0.0.8:9000"]"#).unwrap(),
            (Protocol::Grpc, "10.0.0.8".into(), 9000)
        );
        // http wins even when listed after grpc; TLS schemes map to their protocol.
        assert_eq!(
            pick(r#"["grpcs://h:9443","https://h:8443"]"#).unwrap(),
            (Protocol::Https, "h".into(), 8443)
        );
        assert_eq!(
            pick(r#"["grpcs://h:9443"]"#).unwrap(),
            (Protocol::Grpc, "h".into(), 9443)
        );
        // `grpcs` is gRPC over TLS: `tls` = `true` for waypost's gRPC channel, written back as
        // `grpcs`; a plain `grpc` endpoint gets no `tls`.
        let secure = decode("n", "i", rec(r#"["grpcs://h:9443"]"#).as_bytes()).unwrap();
        assert_eq!(
            secure.metadata.get(TLS_KEY).map(String::as_str),
            Some("true")
        );
        let again = String::from_utf8(encode(&secure).unwrap()).unwrap();
        assert!(
            again.contains(r#""endpoints":["grpcs://h:9443"]"#),
            "{again}"
        );
        let plain = decode("n", "i", rec(r#"["grpc://h:9000"]"#).as_bytes()).unwrap();
        assert_eq!(plain.metadata.get(TLS_KEY), None);
        let ours = crate::ServiceInfo::new("i", "n", "h", 9443)
            .with_protocol(Protocol::Grpc)
            .with_metadata(TLS_KEY, "true");
        let back = decode("n", "i", &encode(&ours).unwrap()).unwrap();
        assert_eq!(back, ours, "a waypost gRPC-over-TLS instance round-trips");
        // Legacy `?isSecure=false`, IPv6, upper-case scheme.
        assert_eq!(
            pick(r#"["HTTP://[::1]:8000?isSecure=false"]"#).unwrap(),
            (Protocol::Http, "::1".into(), 8000)
        );
        // A broken endpoint is passed over when another one works.
        assert_eq!(
            pick(r#"["http://h","grpc://h:9000"]"#).unwrap(),
            (Protocol::Grpc, "h".into(), 9000)
        );
        for (eps, want) in [
            (r#"[]"#, "no endpoints"),
            ("null", "no endpoints"),
            (r#"["http://h"]"#, "no port"),
            (r#"["http://h:0"]"#, "port"),
            (r#"["http://h:65536"]"#, "port"),
            (r#"["http://h:80/api"]"#, "has a path"),
            (r#"["http://u:p@h:80"]"#, "has credentials"),
            (r#"["ws://h:80"]"#, "scheme other than"),
            (r#"["h:80"]"#, "has no scheme"),
            (r#"["http://::1:80"]"#, "brackets"),
            (r#"["http://:80"]"#, "empty host"),
        ] {
            let err = pick(eps).unwrap_err();
            assert!(err.contains(want), "{eps}: {err}");
        }
    }

    #[test]
    fn encodes_kratos_json_exactly() {
        let info = ServiceInfo::new("users-1", "users", "10.0.0.7", 8000)
            .with_version("v1.4.2")
            .with_metadata("zone", "a<b>&c");
        let bytes = encode(&info).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"id":"users-1","name":"users","version":"v1.4.2","metadata":{"waypost.health":"unknown","zone":"a\u003cb\u003e\u0026c"},"endpoints":["http://10.0.0.7:8000"]}"#
        );
        let grpc = ServiceInfo::new("g-1", "g", "::1", 9000).with_protocol(Protocol::Grpc);
        assert_eq!(
            String::from_utf8(encode(&grpc).unwrap()).unwrap(),
            r#"{"id":"g-1","name":"g","version":"","metadata":{"waypost.health":"unknown"},"endpoints":["grpc://[::1]:9000"]}"#
        );
    }

    #[test]
    fn round_trips_every_field() {
        let mut info = ServiceInfo::new("users-1", "users", "10.0.0.7", 8443)
            .with_version("2")
            .with_protocol(Protocol::Https)
            .with_health(Health::Unhealthy)
            .with_metadata("env", "prod")
            .with_metadata("line", "a\nb\u{1}\"")
            .with_tag("api")
            .with_tag("a,b")
            .with_weight(7)
            .with_ttl(Duration::from_millis(1500));
        info.created_at = Timestamp::parse("2024-05-01T10:00:00.123456789Z").unwrap();
        info.updated_at = Timestamp::parse("2024-05-01T10:00:01Z").unwrap();
        info.last_check = Timestamp::parse("2024-05-01T12:00:01+02:00").unwrap();
        let bytes = encode(&info).unwrap();
        let back = decode("users", "users-1", &bytes).unwrap();
        assert_eq!(back, info);
        // Go's decoder reads what we write: plain JSON of the same shape.
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["endpoints"][0], "https://10.0.0.7:8443");
        assert_eq!(v["metadata"]["line"], "a\nb\u{1}\"");
    }

    #[test]
    fn reserved_keys_and_derived_endpoints() {
        let taken = ServiceInfo::new("a", "b", "h", 1).with_metadata(HEALTH_KEY, "healthy");
        assert!(matches!(encode(&taken), Err(Error::InvalidInstance(_))));
        // A foreign record read and registered again does not store its endpoint list.
        let foreign = decode("users", ID, KRATOS_JSON.as_bytes()).unwrap();
        let bytes = encode(&foreign).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains(ENDPOINTS_KEY), "{text}");
        let back = decode("users", ID, &bytes).unwrap();
        assert_eq!(back.metadata.get(ENDPOINTS_KEY), None);
    }

    #[test]
    fn endpoint_list_only_when_it_fits() {
        let many: Vec<String> = (0..300).map(|i| format!("http://host-{i}:80")).collect();
        let json = format!(
            r#"{{"id":"i","name":"n","endpoints":{}}}"#,
            serde_json::to_string(&many).unwrap()
        );
        let info = decode("n", "i", json.as_bytes()).unwrap();
        assert_eq!((info.address.as_str(), info.port), ("host-0", 80));
        assert_eq!(info.metadata.get(ENDPOINTS_KEY), None);
        let full: serde_json::Map<String, Value> = (0..MAX_METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), Value::from("v")))
            .collect();
        let json = format!(
            r#"{{"id":"i","name":"n","metadata":{},"endpoints":["http://h:1"]}}"#,
            Value::Object(full)
        );
        let info = decode("n", "i", json.as_bytes()).unwrap();
        assert_eq!(info.metadata.len(), MAX_METADATA_ENTRIES);
    }

    #[test]
    fn go_field_matching_and_nulls() {
        let json = r#"{"ID":"i","Name":"n","Version":null,"Metadata":null,"Endpoints":["http://h:1"],"extra":[1]}"#;
        let info = decode("n", "i", json.as_bytes()).unwrap();
        assert_eq!((info.id.as_str(), info.version.as_str()), ("i", ""));
    }

    #[test]
    fn rejects_garbage() {
        let wrong = decode("users", "other", KRATOS_JSON.as_bytes()).unwrap_err();
        assert!(wrong.contains("not `other` of `users`"), "{wrong}");
        for junk in [
            &b""[..],
            b"not json",
            b"null",
            b"[]",
            b"\xff\xfe",
            br#"{"id":"i","name":"n","endpoints":"http://h:1"}"#,
            br#"{"id":1,"name":"n","endpoints":["http://h:1"]}"#,
            br#"{"id":"i","name":"n","metadata":{"k":1},"endpoints":["http://h:1"]}"#,
            br#"{"id":"i","name":"n","endpoints":[7]}"#,
            br#"{"id":"i","name":"n","metadata":{"waypost.health":"sick"},"endpoints":["http://h:1"]}"#,
            br#"{"id":"i","name":"n","metadata":{"waypost.weight":"-1"},"endpoints":["http://h:1"]}"#,
            br#"{"id":"i","name":"n","metadata":{"waypost.ttl":"99999999999999999999999"},"endpoints":["http://h:1"]}"#,
            br#"{"id":"i","name":"n","endpoints":["http://bad host:1"]}"#,
        ] {
            assert!(
                decode("n", "i", junk).is_err(),
                "{}",
                String::from_utf8_lossy(junk)
            );
        }
        // A hostile endpoint shows bounded and escaped in the reason.
        let hostile = format!(
            r#"{{"id":"i","name":"n","endpoints":["ws://{}\u202e"]}}"#,
            "x".repeat(10_000)
        );
        let err = decode("n", "i", hostile.as_bytes()).unwrap_err();
        assert!(err.len() < 400 && !err.contains('\u{202e}'), "{err}");
    }
}
