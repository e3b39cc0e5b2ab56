//! [`Secret`]: a password or token that never shows.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A password, token or other credential.
///
/// `Debug` and `Display` print `[redacted]`; serializing writes `"[redacted]"` too, so a saved
/// or logged config never carries the value. Read it with [`expose`](Self::expose) where it is
/// sent to the server. Deserializing accepts a plain string.
///
/// ```
/// use waypost_core_types::Secret;
///
/// let token = Secret::new("s3cr3t");
/// assert_eq!(format!("{token:?} {token}"), "[redacted] [redacted]");
/// assert_eq!(serde_json::to_string(&token).unwrap(), r#""[redacted]""#);
/// assert_eq!(token.expose(), "s3cr3t");
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

/// What every redacted secret prints as.
pub const REDACTED: &str = "[redacted]";

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, to hand to the server. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Reads a string. Any other value is an error that does not repeat it (serde's own message
    /// would write a number or a byte string out in full).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a password or token as a string")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }

            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Secret, E> {
                Err(E::custom("a password or token must be a string"))
            }

            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom("a password or token must be a string (quote it)"))
            }

            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom("a password or token must be a string (quote it)"))
            }

            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom("a password or token must be a string (quote it)"))
            }

            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom("a password or token must be a string (quote it)"))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// An address or list of addresses (`http://user:pass@h:1`) for `Debug` output: whatever comes
/// before the last `@` (credentials a user wrote into an address, which may hold `,`, `/` or
/// `@` of their own) is shown as `[redacted]`, after a leading `scheme://`.
///
/// ```
/// use waypost_core_types::secret::redact_userinfo;
///
/// assert_eq!(redact_userinfo("http://admin:p,w@h:1"), "http://[redacted]@h:1");
/// assert_eq!(redact_userinfo("h:1,h:2"), "h:1,h:2");
/// ```
pub fn redact_userinfo(addresses: &str) -> std::borrow::Cow<'_, str> {
    match addresses.rfind('@') {
        None => std::borrow::Cow::Borrowed(addresses),
        Some(at) => {
            let start = addresses.find("://").map_or(0, |i| i + 3).min(at);
            std::borrow::Cow::Owned(format!(
                "{}{REDACTED}{}",
                &addresses[..start],
                &addresses[at..]
            ))
        }
    }
}

/// [`redact_userinfo`] over each address of a list, for `Debug` output.
pub struct RedactedList<'a>(pub &'a [String]);

impl fmt::Debug for RedactedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|a| redact_userinfo(a)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_in_addresses_is_redacted() {
        assert_eq!(
            redact_userinfo("https://a:b@c@h:1,x@y:2,z:3"),
            "https://[redacted]@y:2,z:3"
        );
        assert_eq!(redact_userinfo("a:/SECRET,@h"), "[redacted]@h");
        let list = ["u:SECRET@h:1".to_owned(), "h:2".to_owned()];
        assert_eq!(
            format!("{:?}", RedactedList(&list)),
            r#"["[redacted]@h:1", "h:2"]"#
        );
    }

    #[test]
    fn never_shows_and_reads_plain_strings() {
        let s: Secret = serde_json::from_str(r#""hunter2""#).unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert!(!format!("{s:?}{s}{}", serde_json::to_string(&s).unwrap()).contains("hunter2"));
        #[derive(Debug, serde::Serialize)]
        struct Config {
            password: Secret,
        }
        for wrong in ["12345678", "1.5", "true", "[1]"] {
            let e = serde_json::from_str::<Secret>(wrong)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("must be a string") || e.contains("a password or token"),
                "{e}"
            );
            assert!(!e.contains("12345678"), "{e}");
        }
        let c = Config { password: s };
        assert_eq!(format!("{c:?}"), "Config { password: [redacted] }");
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"password":"[redacted]"}"#
        );
    }
}
