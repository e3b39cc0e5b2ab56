//! Classification and conversion of `etcd-client` errors. No `etcd-client` type leaves the crate.

use etcd_client::Error as EtcdError;
use waypost_core_types::quote::quoted_up_to;
use waypost_core_types::Error;

/// Characters of a server's message kept in an error text.
const SERVER_TEXT: usize = 512;

/// The backend name in errors and logs.
pub(crate) const BACKEND: &str = "etcd";

// gRPC status codes (as numbers, so this module needs no direct tonic dependency).
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const INVALID_ARGUMENT: i32 = 3;
const DEADLINE_EXCEEDED: i32 = 4;
const NOT_FOUND: i32 = 5;
const PERMISSION_DENIED: i32 = 7;
const RESOURCE_EXHAUSTED: i32 = 8;
const FAILED_PRECONDITION: i32 = 9;
const ABORTED: i32 = 10;
const OUT_OF_RANGE: i32 = 11;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

fn status(e: &EtcdError) -> Option<(i32, &str)> {
    match e {
        EtcdError::GRpcStatus(s) => Some((s.code() as i32, s.message())),
        _ => None,
    }
}

fn status_is_auth(code: i32, msg: &str) -> bool {
    matches!(code, UNAUTHENTICATED | PERMISSION_DENIED)
        || matches!(code, INVALID_ARGUMENT | UNKNOWN | FAILED_PRECONDITION)
            && (msg.contains("authentication failed")
                || msg.contains("invalid auth token")
                || msg.contains("user name is empty")
                || msg.contains("user name not found"))
}

fn status_is_transient(code: i32, msg: &str) -> bool {
    if status_is_auth(code, msg) {
        return false;
    }
    match code {
        UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | ABORTED | RESOURCE_EXHAUSTED | UNKNOWN => {
            true
        }
        _ => {
            msg.contains("leader changed")
                || msg.contains("no leader")
                || msg.contains("request timed out")
        }
    }
}

fn status_is_lease_not_found(code: i32, msg: &str) -> bool {
    code == NOT_FOUND && msg.contains("lease not found")
}

fn status_is_compacted(code: i32, msg: &str) -> bool {
    code == OUT_OF_RANGE || msg.contains("has been compacted")
}

/// A failure that another attempt (possibly on another member) can fix: transport errors, a
/// dead or leaderless member, an election in progress, an overloaded server.
pub(crate) fn is_transient(e: &EtcdError) -> bool {
    match e {
        EtcdError::TransportError(_) | EtcdError::IoError(_) | EtcdError::WatchError(_) => true,
        EtcdError::LeaseKeepAliveError(m) => !m.contains("lease not found"),
        _ => status(e).is_some_and(|(c, m)| status_is_transient(c, m)),
    }
}

/// etcd refused our credentials or our token.
pub(crate) fn is_auth(e: &EtcdError) -> bool {
    status(e).is_some_and(|(c, m)| status_is_auth(c, m))
}

/// A put or keep-alive named a lease that no longer exists (expired, revoked, server reset).
pub(crate) fn is_lease_not_found(e: &EtcdError) -> bool {
    match e {
        EtcdError::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => status(e).is_some_and(|(c, m)| status_is_lease_not_found(c, m)),
    }
}

/// A read at a revision that was compacted away.
pub(crate) fn is_compacted(e: &EtcdError) -> bool {
    status(e).is_some_and(|(c, m)| status_is_compacted(c, m))
}

/// The waypost error for an `etcd-client` error.
pub(crate) fn convert(e: EtcdError) -> Error {
    if let Some((code, msg)) = status(&e) {
        if status_is_auth(code, msg) {
            return Error::Auth {
                backend: BACKEND,
                message: quoted_up_to(msg.trim_start_matches("etcdserver: "), SERVER_TEXT)
                    .to_string(),
            };
        }
    }
    if is_transient(&e) {
        // The server's words, bounded and escaped.
        return Error::Unavailable(format!(
            "{BACKEND}: {}",
            quoted_up_to(&e.to_string(), SERVER_TEXT)
        ));
    }
    Error::backend(BACKEND, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_statuses_are_retried() {
        for (code, msg) in [
            (UNAVAILABLE, "etcdserver: leader changed"),
            (UNAVAILABLE, "error trying to connect: tcp connect error"),
            (DEADLINE_EXCEEDED, "deadline"),
            (UNKNOWN, "transport error"),
            (CANCELLED, "operation was canceled"),
            (RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
            (FAILED_PRECONDITION, "etcdserver: no leader"),
        ] {
            assert!(status_is_transient(code, msg), "{code} {msg}");
        }
        for (code, msg) in [
            (INVALID_ARGUMENT, "etcdserver: key is not provided"),
            (NOT_FOUND, "etcdserver: requested lease not found"),
            (
                OUT_OF_RANGE,
                "etcdserver: mvcc: required revision has been compacted",
            ),
        ] {
            assert!(!status_is_transient(code, msg), "{code} {msg}");
        }
        assert!(is_transient(&EtcdError::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused"
        ))));
        assert!(!is_transient(&EtcdError::InvalidArgs("x".into())));
    }

    #[test]
    fn auth_statuses_are_auth_errors() {
        assert!(status_is_auth(
            INVALID_ARGUMENT,
            "etcdserver: authentication failed, invalid user ID or password"
        ));
        assert!(status_is_auth(
            PERMISSION_DENIED,
            "etcdserver: permission denied"
        ));
        assert!(status_is_auth(
            UNAUTHENTICATED,
            "etcdserver: invalid auth token"
        ));
        assert!(!status_is_transient(
            INVALID_ARGUMENT,
            "etcdserver: authentication failed, invalid user ID or password"
        ));
        assert!(!status_is_auth(
            INVALID_ARGUMENT,
            "etcdserver: key is not provided"
        ));
    }

    #[test]
    fn lease_and_compaction() {
        assert!(status_is_lease_not_found(
            NOT_FOUND,
            "etcdserver: requested lease not found"
        ));
        assert!(is_lease_not_found(&EtcdError::LeaseKeepAliveError(
            "lease not found".into()
        )));
        assert!(!is_transient(&EtcdError::LeaseKeepAliveError(
            "lease not found".into()
        )));
        assert!(is_transient(&EtcdError::LeaseKeepAliveError(
            "channel closed".into()
        )));
        assert!(status_is_compacted(
            OUT_OF_RANGE,
            "etcdserver: mvcc: required revision has been compacted"
        ));
    }

    #[test]
    fn converted_errors_agree_on_retrying() {
        // What the retry loop retries (`is_transient`) is what `Error::is_retryable` says of the
        // converted error.
        for e in [
            EtcdError::IoError(std::io::Error::other("reset")),
            EtcdError::WatchError("stream closed".into()),
            EtcdError::LeaseKeepAliveError("channel closed".into()),
            EtcdError::LeaseKeepAliveError("lease not found".into()),
            EtcdError::InvalidArgs("bad".into()),
        ] {
            let transient = is_transient(&e);
            let converted = convert(e);
            assert_eq!(converted.is_retryable(), transient, "{converted:?}");
        }
    }

    #[test]
    fn server_text_in_errors_is_bounded_and_escaped() {
        let hostile = format!("reset\u{1b}[31m\r\nFAKE LOG LINE{}", "x".repeat(1 << 20));
        let text = convert(EtcdError::IoError(std::io::Error::other(hostile))).to_string();
        assert!(text.len() < 2 * SERVER_TEXT, "{} bytes", text.len());
        assert!(!text.contains('\u{1b}') && !text.contains('\n') && !text.contains('\r'));
        assert!(text.contains("reset"), "{text}");
    }

    #[test]
    fn conversion_keeps_etcd_types_private() {
        let e = convert(EtcdError::InvalidArgs("bad".into()));
        assert!(
            matches!(
                e,
                Error::Backend {
                    backend: "etcd",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = convert(EtcdError::IoError(std::io::Error::other("reset")));
        assert!(
            matches!(e, Error::Unavailable(ref m) if m.starts_with("etcd:")),
            "{e:?}"
        );
    }
}
