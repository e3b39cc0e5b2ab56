//! Conversion of the ZooKeeper client's errors into waypost's [`Error`].

use waypost_core_types::Error;
use zookeeper_client as zk;

/// The backend name used in errors and logs.
pub(crate) const BACKEND: &str = "zookeeper";

/// Converts a client error, with `what` saying which operation failed (for example
/// `create /laravel-go/services/user/u-1`).
pub(crate) fn convert(err: zk::Error, what: &str) -> Error {
    match err {
        zk::Error::NoAuth => Error::Auth {
            backend: BACKEND,
            message: format!(
                "{what}: not authorized by the node's ACL (wrong digest credentials, or the \
                 node belongs to another user)"
            ),
        },
        zk::Error::AuthFailed => Error::Auth {
            backend: BACKEND,
            message: format!("{what}: the server rejected our credentials (session AuthFailed)"),
        },
        zk::Error::ConnectionLoss
        | zk::Error::SessionExpired
        | zk::Error::SessionMoved
        | zk::Error::ClientClosed
        | zk::Error::NoHosts
        | zk::Error::Timeout
        | zk::Error::Throttled
        | zk::Error::NotReadOnly => Error::Unavailable(format!("{BACKEND}: {what}: {err}")),
        other => Error::Backend {
            backend: BACKEND,
            message: format!("{what}: {other}"),
            source: Some(Box::new(other)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_client_errors() {
        assert!(matches!(
            convert(zk::Error::NoAuth, "create /x"),
            Error::Auth { backend: "zookeeper", ref message } if message.contains("create /x")
        ));
        assert!(matches!(
            convert(zk::Error::AuthFailed, "connect"),
            Error::Auth { .. }
        ));
        for e in [
            zk::Error::ConnectionLoss,
            zk::Error::SessionExpired,
            zk::Error::NoHosts,
            zk::Error::Timeout,
        ] {
            let c = convert(e, "get /x");
            assert!(matches!(c, Error::Unavailable(_)), "{c:?}");
            assert!(c.is_retryable());
        }
        let c = convert(zk::Error::NotEmpty, "delete /x");
        assert!(matches!(
            c,
            Error::Backend {
                backend: "zookeeper",
                ..
            }
        ));
        assert_eq!(
            c.to_string(),
            "zookeeper: delete /x: node has not empty children"
        );
        assert!(std::error::Error::source(&c).is_some());
        assert!(!c.is_retryable());
    }
}
