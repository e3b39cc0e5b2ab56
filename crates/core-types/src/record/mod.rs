//! Record formats of the key/path registries (etcd, ZooKeeper): how one instance is written
//! under `<prefix>/<name>/<id>`, in the layout of the framework that wrote it.
//!
//! Every format maps a stored record to a [`ServiceInfo`] and, where it supports writes, a
//! `ServiceInfo` to the bytes that framework's own clients decode. [`RecordFormat::Auto`] reads
//! every format the backend knows ([`RecordFormat::decode_among`]) and marks each instance that did not come from waypost's own
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
mod gozero;
pub mod kratos;
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
    /// go-kratos' `registry.ServiceInstance` JSON at `<prefix>/<name>/<id>` (prefix
    /// `/microservices`); see [`kratos`] for the mapping.
    Kratos,
    /// go-zero's `host:port` value at `<key>/<id>` (go-zero's keys have no leading `/`): the
    /// address and port only, protocol gRPC (zrpc).
    GoZero,
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
        RecordFormat::Kratos,
        RecordFormat::GoZero,
        RecordFormat::Auto,
    ];

    /// The name used in URLs (`?format=`) and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordFormat::LaravelGo => "laravel-go",
            RecordFormat::Curator => "curator",
            RecordFormat::Kratos => "kratos",
            RecordFormat::GoZero => "go-zero",
            RecordFormat::Auto => "auto",
        }
    }

    /// The prefix the framework writes under when nobody configures one (go-zero: the root of
    /// the key space, its keys have no leading `/`).
    pub fn default_prefix(self) -> &'static str {
        match self {
            RecordFormat::LaravelGo | RecordFormat::Auto => "/laravel-go/services",
            RecordFormat::Curator => "/services",
            RecordFormat::Kratos => "/microservices",
            RecordFormat::GoZero => "",
        }
    }

    /// Whether waypost can register instances in this format.
    pub fn writes(self) -> bool {
        match self {
            RecordFormat::LaravelGo
            | RecordFormat::Curator
            | RecordFormat::Kratos
            | RecordFormat::GoZero
            | RecordFormat::Auto => true,
        }
    }

    /// Decodes the record stored at `<prefix>/<name>/<id>`. A record must name the same
    /// instance and service as its key where the format stores them, and must pass
    /// [`ServiceInfo::validate`].
    ///
    /// # Errors
    /// Why the bytes are not an instance in this format (bounded, escaped: peer data).
    pub fn decode(self, name: &str, id: &str, value: &[u8]) -> Result<Decoded, String> {
        let info = match self {
            RecordFormat::LaravelGo => laravel::decode(name, id, value)?,
            RecordFormat::Curator => curator::decode(name, id, value)?,
            RecordFormat::Kratos => kratos::decode(name, id, value)?,
            RecordFormat::GoZero => gozero::decode(name, id, value)?,
            RecordFormat::Auto => return decode_any(RecordFormat::ALL, name, id, value),
        };
        Ok(Decoded { info, format: self })
    }

    /// Like [`decode`](Self::decode), except that [`RecordFormat::Auto`] tries only the formats
    /// in `known` (in the order of [`ALL`](Self::ALL)): what a backend reads, so that, say, a
    /// ZooKeeper registry in `auto` never takes a `host:port` node for a go-zero instance.
    ///
    /// # Errors
    /// As [`decode`](Self::decode).
    pub fn decode_among(
        self,
        known: &[RecordFormat],
        name: &str,
        id: &str,
        value: &[u8],
    ) -> Result<Decoded, String> {
        match self {
            RecordFormat::Auto => decode_any(known, name, id, value),
            format => format.decode(name, id, value),
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
            RecordFormat::Kratos => kratos::encode(info),
            RecordFormat::GoZero => Ok(gozero::encode(info)),
        }
    }
}

/// `host:port` or `[ipv6]:port` (port required, 1–65535 without a leading zero), checked as
/// [`check_endpoint`](crate::validate::check_endpoint) checks it; the host without brackets.
fn host_port(text: &str) -> Result<(String, u16), &'static str> {
    let (host, port) = crate::validate::check_endpoint(text)?;
    let port = port.ok_or("no port")?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok((host.to_owned(), port))
}

/// One decoded record and the format it was in.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The instance.
    pub info: ServiceInfo,
    /// The format the record was written in (never [`RecordFormat::Auto`]).
    pub format: RecordFormat,
}

/// [`RecordFormat::Auto`]: the first format of `known` (in the order of [`RecordFormat::ALL`])
/// that decodes the record; every format's reason when none does.
fn decode_any(
    known: &[RecordFormat],
    name: &str,
    id: &str,
    value: &[u8],
) -> Result<Decoded, String> {
    let mut reasons = Vec::new();
    for &format in RecordFormat::ALL {
        if format == RecordFormat::Auto || !known.contains(&format) {
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
    fn auto_reads_kratos_and_go_zero_with_a_mark() {
        // go-kratos/kratos contrib/registry/etcd/service.go (json.Marshal of ServiceInstance).
        let kratos = br#"{"id":"k-1","name":"users","version":"v1","metadata":null,"endpoints":["grpc://10.0.0.7:9000"]}"#;
        let d = RecordFormat::Auto.decode("users", "k-1", kratos).unwrap();
        assert_eq!(d.format, RecordFormat::Kratos);
        assert_eq!(
            d.info.metadata.get(FORMAT_KEY).map(String::as_str),
            Some("kratos")
        );
        assert_eq!(
            (d.info.port, d.info.protocol),
            (9000, crate::Protocol::Grpc)
        );
        // zeromicro/go-zero core/discov/publisher.go: the value is `host:port`.
        let d = RecordFormat::Auto
            .decode("user.rpc", "7587886412946786306", b"10.0.0.9:8080")
            .unwrap();
        assert_eq!(d.format, RecordFormat::GoZero);
        assert_eq!(
            d.info.metadata.get(FORMAT_KEY).map(String::as_str),
            Some("go-zero")
        );
        assert_eq!(d.info.endpoint(), "10.0.0.9:8080");
        // Laravel-Go JSON is never taken for another format.
        let laravel = ServiceInfo::new("u-1", "u", "10.0.0.1", 80)
            .to_json_vec()
            .unwrap();
        let d = RecordFormat::Auto.decode("u", "u-1", &laravel).unwrap();
        assert_eq!(d.format, RecordFormat::LaravelGo);
    }

    #[test]
    fn defaults_per_format() {
        assert_eq!(RecordFormat::Kratos.default_prefix(), "/microservices");
        assert_eq!(RecordFormat::GoZero.default_prefix(), "");
        assert_eq!(RecordFormat::Auto.default_prefix(), "/laravel-go/services");
        assert!(RecordFormat::ALL.iter().all(|f| f.writes()));
        assert_eq!(
            "go-zero".parse::<RecordFormat>().unwrap(),
            RecordFormat::GoZero
        );
        assert_eq!(
            "Kratos".parse::<RecordFormat>().unwrap(),
            RecordFormat::Kratos
        );
    }

    #[test]
    fn auto_among_a_backends_formats_tries_only_those() {
        let zk = [
            RecordFormat::LaravelGo,
            RecordFormat::Curator,
            RecordFormat::Auto,
        ];
        let err = RecordFormat::Auto
            .decode_among(&zk, "user.rpc", "1", b"10.0.0.9:8080")
            .unwrap_err();
        assert!(
            err.contains("curator:") && !err.contains("go-zero"),
            "{err}"
        );
        let d = RecordFormat::Auto
            .decode_among(&[RecordFormat::GoZero], "user.rpc", "1", b"10.0.0.9:8080")
            .unwrap();
        assert_eq!(d.format, RecordFormat::GoZero);
        // A named format decodes as itself, whatever the list.
        let d = RecordFormat::GoZero
            .decode_among(&zk, "user.rpc", "1", b"10.0.0.9:8080")
            .unwrap();
        assert_eq!(d.format, RecordFormat::GoZero);
    }

    /// Mutated records (bytes flipped, cut, repeated, inserted) in every format: no decoder
    /// panics, whatever a decoder accepts is a valid instance named as its key says, and every
    /// reason is bounded.
    #[test]
    fn mutated_records_never_panic_and_never_pass_invalid() {
        use rand::{Rng, SeedableRng};
        let info = ServiceInfo::new("u-1", "users", "10.0.0.7", 8080)
            .with_version("1.2.0")
            .with_metadata("region", "eu")
            .with_tag("api")
            .with_protocol(crate::Protocol::Https);
        let formats = [
            RecordFormat::LaravelGo,
            RecordFormat::Curator,
            RecordFormat::Kratos,
            RecordFormat::GoZero,
        ];
        let seeds: Vec<Vec<u8>> = formats.iter().map(|f| f.encode(&info).unwrap()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(18);
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..4_000 {
            let mut bytes = seeds[round % seeds.len()].clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..=bytes.len());
                match rng.random_range(0..4) {
                    0 if at < bytes.len() => bytes[at] = rng.random(),
                    1 => bytes.truncate(at),
                    2 => {
                        let piece: Vec<u8> = bytes[at..].iter().take(16).copied().collect();
                        bytes.splice(at..at, piece);
                    }
                    _ => {
                        const PIECES: &[u8] = b"{}[]\":,0-e\\\x7f\xff 9";
                        bytes.insert(at, PIECES[rng.random_range(0..PIECES.len())]);
                    }
                }
            }
            for format in formats.iter().copied().chain([RecordFormat::Auto]) {
                match format.decode("users", "u-1", &bytes) {
                    Ok(d) => {
                        accepted += 1;
                        d.info.validate().unwrap();
                        assert_eq!((d.info.name.as_str(), d.info.id.as_str()), ("users", "u-1"));
                    }
                    Err(reason) => {
                        refused += 1;
                        assert!(reason.len() < 4_096, "{format}: {} bytes", reason.len())
                    }
                }
            }
        }
        // Both outcomes were exercised: some mutations leave a valid record (a changed
        // metadata value), most do not.
        assert!(accepted > 100 && refused > 1_000, "{accepted} / {refused}");
    }

    #[test]
    fn auto_says_why_nothing_decodes() {
        let err = RecordFormat::Auto
            .decode("u", "u-1", b"\x00garbage")
            .unwrap_err();
        assert!(err.starts_with("no known format decodes it"), "{err}");
        assert!(err.contains("laravel-go:"), "{err}");
        assert!(err.contains("curator:"), "{err}");
        assert!(err.contains("kratos:") && err.contains("go-zero:"), "{err}");
    }
}
