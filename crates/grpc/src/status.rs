//! gRPC statuses: reading them from headers, and the channel's own errors, which name the
//! service and the instance.

use http::{HeaderMap, HeaderValue, StatusCode};
use tonic::{Code, Status};
use waypost_core_types::quote::{quoted, quoted_up_to};
use waypost_core_types::ServiceInfo;

/// Characters of a peer's text (a transport error, a status message) kept in an error.
const PEER_TEXT_CHARS: usize = 256;

/// Whether a call that ended with `code` says the instance failed (for the balancer and the
/// outlier detector): `UNAVAILABLE`, `INTERNAL`, `DATA_LOSS` and `UNKNOWN` do, the way a 5xx
/// does for HTTP; application outcomes (`NOT_FOUND`, `INVALID_ARGUMENT`, …) do not.
pub(crate) fn counts_as_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Internal | Code::DataLoss | Code::Unknown
    )
}

/// `service `name``: the service as errors name it.
pub(crate) fn service_part(service: &str) -> String {
    format!("service `{}`", quoted(service))
}

/// `service `name`, instance `id` (address:port)`: where an attempt went, as errors name it.
pub(crate) fn instance_part(service: &str, instance: &ServiceInfo) -> String {
    format!(
        "service `{}`, instance `{}` ({})",
        quoted(service),
        quoted(&instance.id),
        quoted(&instance.endpoint())
    )
}

/// The text of a transport error and its causes, bounded and escaped.
pub(crate) fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        cur = s.source();
    }
    quoted_up_to(&msg, PEER_TEXT_CHARS).to_string()
}

/// `UNAVAILABLE` naming where it failed.
pub(crate) fn unavailable(service: &str, instance: &ServiceInfo, why: &str) -> Status {
    Status::unavailable(format!("{}: {why}", instance_part(service, instance)))
}

/// `DEADLINE_EXCEEDED` naming the instance the last attempt went to, if any.
pub(crate) fn deadline_exceeded(
    service: &str,
    instance: Option<&ServiceInfo>,
    timeout: std::time::Duration,
) -> Status {
    let at = match instance {
        Some(i) => instance_part(service, i),
        None => service_part(service),
    };
    Status::deadline_exceeded(format!("{at}: deadline of {timeout:?} exceeded"))
}

/// A status from a server (trailers-only headers or trailers, as [`normalize`] left them),
/// its code, message, details and metadata kept.
pub(crate) fn from_server(headers: &HeaderMap) -> Option<Status> {
    Status::from_header_map(headers)
}

/// The `grpc-status` of a server as read here: a number from 0 to 16, else `None`.
fn parse_code(v: &HeaderValue) -> Option<Code> {
    // `1*DIGIT` (grpc/grpc doc/PROTOCOL-HTTP2.md); two digits at most for 0–16.
    let b = v.as_bytes();
    if b.is_empty() || b.len() > 2 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u8 = v.to_str().ok()?.parse().ok()?;
    (n <= 16).then(|| Code::from_i32(i32::from(n)))
}

/// The code gRPC maps a non-gRPC HTTP status to (`grpc/grpc doc/http-grpc-status-mapping.md`).
fn code_of_http(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// Makes a server's status safe to hand to tonic and names where it came from, in place, in
/// response headers (`http` = the response's HTTP status) or trailers (`http` = `None`):
///
/// * a `grpc-status` that is not a code (not a number, above 16) becomes `UNKNOWN` saying so;
/// * a `grpc-status-details-bin` that is not base64 is dropped (tonic would panic on it);
/// * an error status gets `(service `x`, instance `y` (address:port))` appended to its message,
///   which is bounded (256 characters) and escaped;
/// * a response that is not gRPC (HTTP status other than 200, or a content type other than
///   `application/grpc…`, and no `grpc-status`) gets the status gRPC maps it to, naming what
///   came.
///
/// Returns the status code the headers now carry, if any.
pub(crate) fn normalize(
    map: &mut HeaderMap,
    http: Option<StatusCode>,
    service: &str,
    instance: &ServiceInfo,
) -> Option<Code> {
    let at = instance_part(service, instance);
    let Some(raw) = map.get(GRPC_STATUS).cloned() else {
        let http = http?;
        let content_type = map
            .get(http::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let grpc = content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/grpc"));
        if http == StatusCode::OK && grpc {
            return None;
        }
        let code = if http == StatusCode::OK {
            Code::Unknown
        } else {
            code_of_http(http)
        };
        let message = format!(
            "not a gRPC response: HTTP {}, content type `{}` ({at})",
            http.as_u16(),
            quoted_up_to(content_type.as_deref().unwrap_or(""), 64)
        );
        write(map, &Status::new(code, message));
        return Some(code);
    };
    if let Some(details) = map.get(GRPC_DETAILS) {
        if base64::Engine::decode(&DETAILS_BASE64, details.as_bytes()).is_err() {
            tracing::debug!(instance = %quoted(&instance.id), "grpc-status-details-bin is not base64: dropped");
            map.remove(GRPC_DETAILS);
        }
    }
    let Some(code) = parse_code(&raw) else {
        let message = format!(
            "invalid grpc-status `{}` ({at})",
            quoted_up_to(&String::from_utf8_lossy(raw.as_bytes()), 32)
        );
        map.remove(GRPC_DETAILS);
        write(map, &Status::new(Code::Unknown, message));
        return Some(Code::Unknown);
    };
    if code == Code::Ok {
        return Some(code);
    }
    let server = Status::from_header_map(map).map(|s| s.message().to_owned());
    let message = match server.as_deref() {
        None | Some("") => format!("({at})"),
        Some(m) => format!("{} ({at})", quoted_up_to(m, PEER_TEXT_CHARS)),
    };
    let details = map
        .get(GRPC_DETAILS)
        .and_then(|d| base64::Engine::decode(&DETAILS_BASE64, d.as_bytes()).ok())
        .unwrap_or_default();
    write(map, &Status::with_details(code, message, details.into()));
    Some(code)
}

/// The trailers a response that ended without any get: `INTERNAL`, naming where it came from.
pub(crate) fn missing_status(at: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    write(
        &mut map,
        &Status::internal(format!("the response ended without a grpc-status ({at})")),
    );
    map
}

/// Replaces the status headers of `map` with `status`'s.
fn write(map: &mut HeaderMap, status: &Status) {
    map.remove(GRPC_STATUS);
    map.remove(GRPC_MESSAGE);
    map.remove(GRPC_DETAILS);
    if status.add_header(map).is_err() {
        map.insert(GRPC_STATUS, HeaderValue::from(status.code() as i32));
    }
}

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
const GRPC_DETAILS: &str = "grpc-status-details-bin";

/// base64 as gRPC writes binary metadata: standard alphabet, padding optional.
const DETAILS_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> ServiceInfo {
        ServiceInfo::new("g-1", "greeter", "127.0.0.1", 50051)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        map
    }

    #[test]
    fn codes_are_0_to_16_and_anything_else_is_unknown() {
        for (raw, code) in [
            ("0", Some(Code::Ok)),
            ("16", Some(Code::Unauthenticated)),
            ("17", None),
            ("-1", None),
            ("+3", None),
            ("03", Some(Code::InvalidArgument)),
            ("3 ", None),
            ("99999999999999999999", None),
        ] {
            assert_eq!(parse_code(&HeaderValue::from_static(raw)), code, "{raw}");
        }
        let mut map = headers(&[("grpc-status", "x"), ("grpc-status-details-bin", "AAAA")]);
        assert_eq!(
            normalize(&mut map, None, "greeter", &at()),
            Some(Code::Unknown)
        );
        let status = Status::from_header_map(&map).expect("status");
        assert_eq!(
            status.message(),
            "invalid grpc-status `x` (service `greeter`, instance `g-1` (127.0.0.1:50051))"
        );
        assert!(map.get("grpc-status-details-bin").is_none());
    }

    #[test]
    fn details_are_kept_when_base64_and_dropped_otherwise() {
        let mut map = headers(&[("grpc-status", "0"), ("grpc-status-details-bin", "@@")]);
        assert_eq!(normalize(&mut map, None, "greeter", &at()), Some(Code::Ok));
        assert!(map.get("grpc-status-details-bin").is_none());
        let mut map = headers(&[
            ("grpc-status", "9"),
            ("grpc-message", "later"),
            ("grpc-status-details-bin", "AQID"),
        ]);
        assert_eq!(
            normalize(&mut map, None, "greeter", &at()),
            Some(Code::FailedPrecondition)
        );
        let status = Status::from_header_map(&map).expect("status");
        assert_eq!(status.details(), [1, 2, 3]);
        assert!(status.message().starts_with("later (service `greeter`"));
    }

    #[test]
    fn non_grpc_responses_get_the_mapped_code() {
        for (http, content_type, code) in [
            (200, Some("application/grpc+proto"), None),
            (200, Some("text/html"), Some(Code::Unknown)),
            (200, None, Some(Code::Unknown)),
            (401, Some("text/plain"), Some(Code::Unauthenticated)),
            (404, Some("text/html"), Some(Code::Unimplemented)),
            (429, None, Some(Code::Unavailable)),
            (500, None, Some(Code::Unknown)),
            (503, None, Some(Code::Unavailable)),
        ] {
            let mut map = HeaderMap::new();
            if let Some(c) = content_type {
                map.insert("content-type", HeaderValue::from_static(c));
            }
            let http = StatusCode::from_u16(http).expect("status");
            assert_eq!(
                normalize(&mut map, Some(http), "greeter", &at()),
                code,
                "{http}"
            );
        }
    }
}
