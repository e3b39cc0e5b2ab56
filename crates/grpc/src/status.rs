//! gRPC statuses: reading them from headers, and the channel's own errors, which name the
//! service and the instance.

use http::HeaderMap;
use tonic::{Code, Status};
use waypost_core_types::quote::{quoted, quoted_up_to};
use waypost_core_types::ServiceInfo;

/// Characters of a peer's text (a transport error, a status message) kept in an error.
const PEER_TEXT_CHARS: usize = 256;

/// The status code in `grpc-status`, if there is a valid one.
pub(crate) fn code_of(headers: &HeaderMap) -> Option<Code> {
    let v = headers.get("grpc-status")?;
    let n: i32 = v.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(n))
}

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

/// A status from a server, with the instance it came from prefixed to its message (bounded
/// and escaped), its code, details and metadata kept.
pub(crate) fn from_server(
    service: &str,
    instance: &ServiceInfo,
    headers: &HeaderMap,
) -> Option<Status> {
    let status = Status::from_header_map(headers)?;
    let message = format!(
        "{}: {}",
        instance_part(service, instance),
        quoted_up_to(status.message(), PEER_TEXT_CHARS)
    );
    Some(Status::with_details_and_metadata(
        status.code(),
        message,
        status.details().to_vec().into(),
        status.metadata().clone(),
    ))
}
