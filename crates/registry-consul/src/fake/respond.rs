//! The fake agent's responses: plain text (Consul's error bodies), JSON, the blocking-query
//! headers, and the status codes Consul answers with.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn text(status: u16, body: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn ok_empty() -> Resp {
    Response::new(Full::new(Bytes::new()))
}

pub(crate) fn json_resp(v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn with_index(mut r: Resp, index: u64) -> Resp {
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

pub(crate) fn method_not_allowed(m: &Method, allow: &str) -> Resp {
    let mut r = text(405, format!("method {m} not allowed"));
    if let Ok(v) = http::HeaderValue::from_str(allow) {
        r.headers_mut().insert(http::header::ALLOW, v);
    }
    r
}
