//! Reading instance nodes: our JSON at the path it belongs to, or foreign data to skip.

use std::collections::HashSet;

use parking_lot::Mutex;
use waypost_core_types::ServiceInfo;

use crate::error::BACKEND;

/// Most distinct foreign paths remembered as already reported.
const MAX_REMEMBERED: usize = 1024;

/// Decodes the data of `<prefix>/<name>/<id>`: Go-compatible `ServiceInfo` JSON that passes
/// validation and names the same instance and service as the path.
///
/// # Errors
/// Why the data is not one of our instances.
pub(crate) fn decode_instance(name: &str, id: &str, data: &[u8]) -> Result<ServiceInfo, String> {
    match ServiceInfo::from_json(data) {
        Ok(info) if info.name == name && info.id == id => Ok(info),
        Ok(info) => Err(format!(
            "it names instance `{}` of `{}`, not `{id}` of `{name}` as its path does",
            info.id, info.name
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Reports skipped foreign data with one warning per path (later ones at debug level).
#[derive(Debug, Default)]
pub(crate) struct ForeignLog {
    reported: Mutex<HashSet<String>>,
}

impl ForeignLog {
    /// Logs that `path` was skipped; `true` when this was the first report for it (a warning).
    pub(crate) fn skip(&self, path: &str, problem: &str) -> bool {
        let first = {
            let mut reported = self.reported.lock();
            if reported.len() >= MAX_REMEMBERED {
                reported.clear();
            }
            reported.insert(path.to_owned())
        };
        if first {
            tracing::warn!(
                backend = BACKEND,
                path,
                "skipping foreign or corrupt data under the registry prefix: {problem}"
            );
        } else {
            tracing::debug!(backend = BACKEND, path, "skipping foreign data: {problem}");
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GO_JSON: &str = r#"{"id":"go-user-1","name":"go-user","version":"1.2.0","address":"10.0.0.7","port":8080,"protocol":"http","health":"healthy","metadata":{"region":"us-west-1"},"tags":["api"],"created_at":"2024-05-01T10:00:00Z","updated_at":"2024-05-01T10:00:00Z","last_check":"0001-01-01T00:00:00Z","ttl":30000000000}"#;

    #[test]
    fn decodes_go_json_at_its_path() {
        let info = decode_instance("go-user", "go-user-1", GO_JSON.as_bytes()).unwrap();
        assert_eq!(info.port, 8080);
        assert_eq!(info.to_json().unwrap(), GO_JSON);
    }

    #[test]
    fn rejects_foreign_data() {
        let wrong_path = decode_instance("go-user", "other-id", GO_JSON.as_bytes());
        assert!(wrong_path
            .unwrap_err()
            .contains("not `other-id` of `go-user`"));
        let wrong_name = decode_instance("billing", "go-user-1", GO_JSON.as_bytes());
        assert!(wrong_name.is_err());
        for junk in [
            &b"not-json"[..],
            b"",
            b"{}",
            b"[1,2]",
            br#"{"id":"x","name":"y"}"#,
        ] {
            assert!(decode_instance("y", "x", junk).is_err(), "{junk:?}");
        }
        // Valid JSON that fails validation (port 0) is foreign too.
        let bad = GO_JSON.replace("\"port\":8080", "\"port\":0");
        assert!(decode_instance("go-user", "go-user-1", bad.as_bytes()).is_err());
    }

    #[test]
    fn warns_once_per_path() {
        let log = ForeignLog::default();
        assert!(log.skip("/p/a/1", "junk"));
        assert!(!log.skip("/p/a/1", "junk"));
        assert!(log.skip("/p/a/2", "junk"));
        for i in 0..MAX_REMEMBERED + 5 {
            log.skip(&format!("/p/many/{i}"), "junk");
        }
        assert!(
            log.reported.lock().len() <= MAX_REMEMBERED,
            "bounded memory"
        );
    }
}
