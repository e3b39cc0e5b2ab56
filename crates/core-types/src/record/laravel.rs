//! The Laravel-Go module's record: its `ServiceInfo` JSON, at the key of the instance it names.

use crate::quote::quoted_up_to;
use crate::ServiceInfo;

use super::SHOWN;

/// Decodes Go-compatible `ServiceInfo` JSON that passes validation and names the same instance
/// and service as its key.
pub(super) fn decode(name: &str, id: &str, value: &[u8]) -> Result<ServiceInfo, String> {
    match ServiceInfo::from_json(value) {
        Ok(info) if info.name == name && info.id == id => Ok(info),
        Ok(info) => Err(format!(
            "it names instance `{}` of `{}`, not `{}` of `{}` as its key does",
            quoted_up_to(&info.id, SHOWN),
            quoted_up_to(&info.name, SHOWN),
            quoted_up_to(id, SHOWN),
            quoted_up_to(name, SHOWN),
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GO_JSON: &str = r#"{"id":"go-user-1","name":"go-user","version":"1.2.0","address":"10.0.0.7","port":8080,"protocol":"http","health":"healthy","metadata":{"region":"us-west-1"},"tags":["api"],"created_at":"2024-05-01T10:00:00Z","updated_at":"2024-05-01T10:00:00Z","last_check":"0001-01-01T00:00:00Z","ttl":30000000000}"#;

    #[test]
    fn decodes_go_json_at_its_key() {
        let info = decode("go-user", "go-user-1", GO_JSON.as_bytes()).unwrap();
        assert_eq!(info.port, 8080);
        assert_eq!(info.to_json().unwrap(), GO_JSON);
    }

    #[test]
    fn rejects_foreign_data() {
        let wrong_key = decode("go-user", "other-id", GO_JSON.as_bytes()).unwrap_err();
        assert!(
            wrong_key.contains("not `other-id` of `go-user`"),
            "{wrong_key}"
        );
        assert!(decode("billing", "go-user-1", GO_JSON.as_bytes()).is_err());
        for junk in [
            &b"not-json"[..],
            b"",
            b"{}",
            b"[1,2]",
            br#"{"id":"x","name":"y"}"#,
        ] {
            assert!(decode("y", "x", junk).is_err(), "{junk:?}");
        }
        // Valid JSON that fails validation (port 0) is foreign too.
        let bad = GO_JSON.replace("\"port\":8080", "\"port\":0");
        assert!(decode("go-user", "go-user-1", bad.as_bytes()).is_err());
    }
}
