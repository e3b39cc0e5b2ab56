//! Validation of [`ServiceInfo`] before any backend is touched.
//!
//! Ids and names become etcd keys, ZooKeeper paths, Consul ids and Nacos metadata, so they are
//! restricted to a character set that is safe in all of them.

use crate::{Error, ServiceInfo};

/// Longest accepted instance id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest accepted service name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest accepted version, in bytes.
pub const MAX_VERSION_LEN: usize = 128;
/// Longest accepted address (a DNS name is at most 253 bytes), in bytes.
pub const MAX_ADDRESS_LEN: usize = 253;
/// Most metadata pairs per instance.
pub const MAX_METADATA_ENTRIES: usize = 128;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 128;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_LEN: usize = 4096;
/// Most tags per instance.
pub const MAX_TAGS: usize = 64;
/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 256;
/// Largest accepted weight.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Whether `c` may appear in an id or a service name: ASCII letters, digits, `-`, `_`, `.`, `:`
/// and `@`.
pub fn is_safe_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')
}

/// Checks an instance id or a service name (`what` names it in the message).
///
/// # Errors
/// [`Error::InvalidInstance`] when empty, too long, `.` or `..`, or with a character outside
/// [`is_safe_name_char`].
pub fn validate_key_part(what: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::InvalidInstance(format!("{what} must not be empty")));
    }
    if value.len() > max {
        return Err(Error::InvalidInstance(format!(
            "{what} is {} bytes long; the limit is {max}",
            value.len()
        )));
    }
    if value == "." || value == ".." {
        return Err(Error::InvalidInstance(format!(
            "{what} must not be `{value}`"
        )));
    }
    if let Some(c) = value.chars().find(|c| !is_safe_name_char(*c)) {
        return Err(Error::InvalidInstance(format!(
            "{what} `{}` contains {c:?}; allowed are ASCII letters, digits and - _ . : @",
            value.escape_debug()
        )));
    }
    Ok(())
}

fn validate_text(what: &str, value: &str, max: usize, allow_empty: bool) -> Result<(), Error> {
    if !allow_empty && value.is_empty() {
        return Err(Error::InvalidInstance(format!("{what} must not be empty")));
    }
    if value.len() > max {
        return Err(Error::InvalidInstance(format!(
            "{what} is {} bytes long; the limit is {max}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidInstance(format!(
            "{what} `{}` contains a control character",
            value.escape_debug()
        )));
    }
    Ok(())
}

impl ServiceInfo {
    /// Checks the instance as every registry does before touching its backend.
    ///
    /// # Errors
    /// [`Error::InvalidInstance`] naming the first problem: an empty or unsafe id or name, port 0,
    /// an empty address or one with spaces, `/` or control characters, or a field beyond its
    /// bound (see the `MAX_*` constants).
    pub fn validate(&self) -> Result<(), Error> {
        validate_key_part("id", &self.id, MAX_ID_LEN)?;
        validate_key_part("name", &self.name, MAX_NAME_LEN)?;
        validate_text("version", &self.version, MAX_VERSION_LEN, true)?;
        validate_text("address", &self.address, MAX_ADDRESS_LEN, false)?;
        if self
            .address
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '?' || c == '#')
        {
            return Err(Error::InvalidInstance(format!(
                "address `{}` must be a host name or IP address",
                self.address.escape_debug()
            )));
        }
        if self.port == 0 {
            return Err(Error::InvalidInstance(
                "port must be between 1 and 65535".into(),
            ));
        }
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(Error::InvalidInstance(format!(
                "{} metadata entries; the limit is {MAX_METADATA_ENTRIES}",
                self.metadata.len()
            )));
        }
        for (k, v) in &self.metadata {
            validate_text("metadata key", k, MAX_METADATA_KEY_LEN, false)?;
            if v.len() > MAX_METADATA_VALUE_LEN {
                return Err(Error::InvalidInstance(format!(
                    "metadata value of `{k}` is {} bytes long; the limit is {MAX_METADATA_VALUE_LEN}",
                    v.len()
                )));
            }
        }
        if self.tags.len() > MAX_TAGS {
            return Err(Error::InvalidInstance(format!(
                "{} tags; the limit is {MAX_TAGS}",
                self.tags.len()
            )));
        }
        for tag in &self.tags {
            validate_text("tag", tag, MAX_TAG_LEN, false)?;
        }
        if self.weight > MAX_WEIGHT {
            return Err(Error::InvalidInstance(format!(
                "weight {} exceeds {MAX_WEIGHT}",
                self.weight
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> ServiceInfo {
        ServiceInfo::new("user-service-1", "user-service", "localhost", 8080)
    }

    fn err_of(s: ServiceInfo) -> String {
        match s.validate() {
            Err(Error::InvalidInstance(m)) => m,
            other => panic!("expected InvalidInstance, got {other:?}"),
        }
    }

    #[test]
    fn accepts_ordinary_instances() {
        ok().validate().unwrap();
        ServiceInfo::new("10.0.0.1:8080@blue", "svc.v2_x", "::1", 1)
            .validate()
            .unwrap();
        ServiceInfo::new("a", "b", "[fe80::1]", 65535)
            .validate()
            .unwrap();
    }

    #[test]
    fn rejects_each_kind_of_bad_input() {
        let mut s = ok();
        s.id.clear();
        assert!(err_of(s).contains("id must not be empty"));
        let mut s = ok();
        s.name = "a/b".into();
        assert!(err_of(s).contains("name `a/b`"));
        let mut s = ok();
        s.name = "..".into();
        assert!(err_of(s).contains("must not be `..`"));
        let mut s = ok();
        s.id = "a\nb".into();
        assert!(err_of(s).contains("id"));
        let mut s = ok();
        s.id = "x".repeat(MAX_ID_LEN + 1);
        assert!(err_of(s).contains("limit is 256"));
        let mut s = ok();
        s.port = 0;
        assert!(err_of(s).contains("port"));
        let mut s = ok();
        s.address.clear();
        assert!(err_of(s).contains("address must not be empty"));
        let mut s = ok();
        s.address = "http://x".into();
        assert!(err_of(s).contains("host name or IP"));
        let mut s = ok();
        s.name = "user service".into();
        assert!(err_of(s).contains("name"));
        let mut s = ok();
        s.tags = vec![String::new()];
        assert!(err_of(s).contains("tag must not be empty"));
        let mut s = ok();
        s.metadata.insert(String::new(), "v".into());
        assert!(err_of(s).contains("metadata key"));
        let mut s = ok();
        s.weight = MAX_WEIGHT + 1;
        assert!(err_of(s).contains("weight"));
        let mut s = ok();
        s.name = "über".into();
        assert!(err_of(s).contains("name"));
    }
}
