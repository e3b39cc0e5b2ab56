//! Record formats of the key/path registries (etcd, ZooKeeper): how one instance is written
//! under `<prefix>/<name>/<id>`, in the layout of the framework that wrote it.
//!
//! Every format maps a stored record to a [`ServiceInfo`] and, where it supports writes, a
//! `ServiceInfo` to the bytes that framework's own clients decode. [`RecordFormat::Auto`] reads
//! every format the backend knows and marks each instance that did not come from waypost's own
//! format with [`FORMAT_KEY`] in its metadata, so a reader can tell where it came from.
//!
//! ```
//! use waypost_core_types::record::RecordFormat;
//! use waypost_core_types::ServiceInfo;
//!
//! let format: RecordFormat = "laravel-go".parse().unwrap();
//! let info = ServiceInfo::new("user-1", "user", "10.0.0.7", 8080);
//! let bytes = format.encode(&info).unwrap();
//! let back = format.decode("user", "user-1", &bytes).unwrap();
//! assert_eq!(back.info.port, 8080);
//! assert_eq!(back.format, RecordFormat::LaravelGo);
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::quote::quoted_up_to;
use crate::{Error, ServiceInfo};

mod curator;
mod laravel;

/// The metadata key [`RecordFormat::Auto`] sets on an instance decoded from a format other than
/// [`RecordFormat::LaravelGo`], to the name of that format (for example `kratos`).
pub const FORMAT_KEY: &str = "waypost.format";

/// Most characters of a peer-supplied text shown in a decoding error.
const SHOWN: usize = 64;

/// How instance records are written under a registry prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RecordFormat {
    /// The Laravel-Go module's `ServiceInfo` JSON at `<prefix>/<name>/<id>` (the default).
    #[default]
    LaravelGo,
    /// Apache Curator's service-discovery JSON as Spring Cloud Zookeeper writes it (ZooKeeper,
    /// default prefix `/services`).
    Curator,
    /// Reads every format the backend knows; writes [`RecordFormat::LaravelGo`]. Instances
    /// read from another format carry [`FORMAT_KEY`].
    Auto,
}

impl RecordFormat {
    /// Every format, in the order [`RecordFormat::Auto`] tries them (itself last).
    /// [`RecordFormat::Curator`] comes before [`RecordFormat::LaravelGo`]: the Laravel-Go reader
    /// ignores unknown fields and would take a Curator record (which has `name`, `id`,
    /// `address` and `port` too) for its own, while the Curator reader needs Curator's
    /// `registrationTimeUTC` and `serviceType`, which Laravel-Go JSON never has.
    pub const ALL: &'static [RecordFormat] = &[
        RecordFormat::Curator,
        RecordFormat::LaravelGo,
        RecordFormat::Auto,
    ];

    /// The name used in URLs (`?format=`) and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordFormat::LaravelGo => "laravel-go",
            RecordFormat::Curator => "curator",
            RecordFormat::Auto => "auto",
        }
    }

    /// The prefix the framework writes under when nobody configures one.
    pub fn default_prefix(self) -> &'static str {
        match self {
            RecordFormat::LaravelGo | RecordFormat::Auto => "/laravel-go/services",
            RecordFormat::Curator => "/services",
        }
    }

    /// Whether waypost can register instances in this format.
    pub fn writes(self) -> bool {
        match self {
            RecordFormat::LaravelGo | RecordFormat::Curator | RecordFormat::Auto => true,
        }
    }

    /// Decodes the record stored at `<prefix>/<name>/<id>`. A record must name the same
    /// instance and service as its key where the format stores them, and must pass
    /// [`ServiceInfo::validate`].
    ///
    /// # Errors
    /// Why the bytes are not an instance in this format (bounded, escaped: peer data).
    pub fn decode(self, name: &str, id: &str, value: &[u8]) -> Result<Decoded, String> {
        match self {
            RecordFormat::LaravelGo => laravel::decode(name, id, value).map(|info| Decoded {
                info,
                format: RecordFormat::LaravelGo,
            }),
            RecordFormat::Curator => curator::decode(name, id, value).map(|info| Decoded {
                info,
                format: RecordFormat::Curator,
            }),
            RecordFormat::Auto => decode_any(name, id, value),
        }
    }

    /// The bytes to store for `info` in this format.
    ///
    /// # Errors
    /// [`Error::InvalidInstance`] when the format cannot carry `info` (or does not support
    /// writes), [`Error::Codec`] if encoding fails.
    pub fn encode(self, info: &ServiceInfo) -> Result<Vec<u8>, Error> {
        match self {
            RecordFormat::LaravelGo | RecordFormat::Auto => info.to_json_vec(),
            RecordFormat::Curator => curator::encode(info),
        }
    }
}

/// One decoded record and the format it was in.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The instance.
    pub info: ServiceInfo,
    /// The format the record was written in (never [`RecordFormat::Auto`]).
    pub format: RecordFormat,
}

/// [`RecordFormat::Auto`]: the first format that decodes the record; every format's reason
/// when none does.
fn decode_any(name: &str, id: &str, value: &[u8]) -> Result<Decoded, String> {
    let mut reasons = Vec::new();
    for &format in RecordFormat::ALL {
        if format == RecordFormat::Auto {
            continue;
        }
        match format.decode(name, id, value) {
            Ok(mut decoded) => {
                if format != RecordFormat::LaravelGo {
                    decoded
                        .info
                        .metadata
                        .insert(FORMAT_KEY.to_owned(), format.as_str().to_owned());
                }
                return Ok(decoded);
            }
            Err(reason) => reasons.push(format!("{}: {reason}", format.as_str())),
        }
    }
    Err(format!(
        "no known format decodes it ({})",
        reasons.join("; ")
    ))
}

impl fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecordFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        RecordFormat::ALL
            .iter()
            .copied()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let known: Vec<&str> = RecordFormat::ALL.iter().map(|f| f.as_str()).collect();
                Error::InvalidConfig(format!(
                    "unknown record format {} (known: {})",
                    quoted_up_to(s, SHOWN),
                    known.join(", ")
                ))
            })
    }
}

impl Serialize for RecordFormat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RecordFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &f in RecordFormat::ALL {
            assert_eq!(f.as_str().parse::<RecordFormat>().unwrap(), f);
            assert_eq!(f.to_string(), f.as_str());
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(serde_json::from_str::<RecordFormat>(&json).unwrap(), f);
        }
        assert_eq!(
            "LARAVEL-GO".parse::<RecordFormat>().unwrap(),
            RecordFormat::LaravelGo
        );
        let err = "yaml\u{202e}"
            .parse::<RecordFormat>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown record format"), "{err}");
        assert!(!err.contains('\u{202e}'), "escaped: {err}");
    }

    #[test]
    fn auto_reads_laravel_without_a_mark() {
        let info = ServiceInfo::new("u-1", "u", "10.0.0.1", 80).with_metadata("k", "v");
        let bytes = RecordFormat::Auto.encode(&info).unwrap();
        assert_eq!(bytes, info.to_json_vec().unwrap(), "auto writes laravel-go");
        let d = RecordFormat::Auto.decode("u", "u-1", &bytes).unwrap();
        assert_eq!(d.format, RecordFormat::LaravelGo);
        assert_eq!(d.info.metadata.get(FORMAT_KEY), None);
        assert_eq!(d.info.metadata.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn curator_names_its_prefix_and_auto_marks_it() {
        assert_eq!(RecordFormat::Curator.as_str(), "curator");
        assert_eq!(RecordFormat::Curator.default_prefix(), "/services");
        assert!(RecordFormat::Curator.writes());
        let info = ServiceInfo::new("c-1", "c", "10.0.0.1", 80).with_metadata("k", "v");
        let bytes = RecordFormat::Curator.encode(&info).unwrap();
        let d = RecordFormat::Auto.decode("c", "c-1", &bytes).unwrap();
        assert_eq!(d.format, RecordFormat::Curator);
        assert_eq!(
            d.info.metadata.get(FORMAT_KEY).map(String::as_str),
            Some("curator")
        );
        assert_eq!(d.info.metadata.get("k").map(String::as_str), Some("v"));
        // What auto marked is written back without the mark.
        let again = RecordFormat::Curator.encode(&d.info).unwrap();
        assert_eq!(again, bytes);
        // Laravel-Go JSON is not a Curator record: auto reads it as Laravel-Go, unmarked.
        let go = RecordFormat::LaravelGo.encode(&info).unwrap();
        assert!(RecordFormat::Curator.decode("c", "c-1", &go).is_err());
        let d = RecordFormat::Auto.decode("c", "c-1", &go).unwrap();
        assert_eq!(d.format, RecordFormat::LaravelGo);
        assert_eq!(d.info, info);
        // An https Curator record: auto takes its sslPort, not the Laravel-Go reading of `port`.
        let https = info.clone().with_protocol(crate::Protocol::Https);
        let mut bytes = RecordFormat::Curator.encode(&https).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        bytes = text
            .replace(r#""port":80,"sslPort":80"#, r#""port":80,"sslPort":443"#)
            .into_bytes();
        let d = RecordFormat::Auto.decode("c", "c-1", &bytes).unwrap();
        assert_eq!((d.format, d.info.port), (RecordFormat::Curator, 443));
    }

    #[test]
    fn auto_says_why_nothing_decodes() {
        let err = RecordFormat::Auto
            .decode("u", "u-1", b"\x00garbage")
            .unwrap_err();
        assert!(err.starts_with("no known format decodes it"), "{err}");
        assert!(err.contains("laravel-go:"), "{err}");
        assert!(err.contains("curator:"), "{err}");
    }
}
