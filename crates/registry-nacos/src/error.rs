//! Conversion of the SDK's errors into [`waypost_core_types::Error`]; no SDK type leaks out.

use std::future::Future;
use std::time::Duration;

use waypost_core_types::Error;

pub(crate) const BACKEND: &str = "nacos";

/// Converts an SDK error met while doing `what`.
pub(crate) fn from_sdk(what: &str, e: nacos_sdk::api::error::Error) -> Error {
    use nacos_sdk::api::error::Error as E;
    match e {
        E::ErrResponse(_, result_code, error_code, message) => {
            let message = message.unwrap_or_default();
            let lower = message.to_ascii_lowercase();
            if error_code == 401
                || error_code == 403
                || lower.contains("permission")
                || lower.contains("unauthorized")
                || lower.contains("access denied")
                || lower.contains("token invalid")
                || lower.contains("token expired")
            {
                Error::Auth {
                    backend: BACKEND,
                    message: format!(
                        "{what}: the server refused the request ({error_code}): {message}"
                    ),
                }
            } else {
                Error::backend_msg(
                    BACKEND,
                    format!(
                        "{what}: server error (result {result_code}, code {error_code}): {message}"
                    ),
                )
            }
        }
        E::NoAvailableServer
        | E::ClientUnhealthy(_)
        | E::ClientShutdown(_)
        | E::TonicGrpcTransport(_)
        | E::GrpcBufferRequest(_) => Error::Unavailable(format!("{BACKEND}: {what}: {e}")),
        E::TonicGrpcStatus(ref status) => {
            // gRPC codes: 1 cancelled, 4 deadline exceeded, 14 unavailable;
            // 7 permission denied, 16 unauthenticated.
            match status.code() as i32 {
                1 | 4 | 14 => Error::Unavailable(format!("{BACKEND}: {what}: {e}")),
                7 | 16 => Error::Auth {
                    backend: BACKEND,
                    message: format!("{what}: {e}"),
                },
                _ => Error::Backend {
                    backend: BACKEND,
                    message: format!("{what}: {e}"),
                    source: Some(Box::new(e)),
                },
            }
        }
        E::WrongServerAddress(m) => Error::InvalidConfig(format!("nacos server address: {m}")),
        other => Error::Backend {
            backend: BACKEND,
            message: format!("{what}: {other}"),
            source: Some(Box::new(other)),
        },
    }
}

/// Runs an SDK call with a time limit.
pub(crate) async fn limited<T, F>(what: &str, limit: Duration, fut: F) -> Result<T, Error>
where
    F: Future<Output = Result<T, nacos_sdk::api::error::Error>>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(from_sdk(what, e)),
        Err(_) => Err(Error::timeout(format!("nacos: {what}"), limit)),
    }
}
