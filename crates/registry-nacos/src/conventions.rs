//! The plain metadata keys other Nacos clients write and read, both ways.
//!
//! Nacos itself has no field for an instance's version, scheme or tags; each client framework
//! puts them in the instance's string metadata under its own plain keys. waypost reads these keys
//! from every instance it did not register, and writes the common ones next to its own
//! `waypost.*` keys, so that Java and Go clients see a waypost instance's version, scheme and
//! tags.
//!
//! | key | `ServiceInfo` field | waypost reads | waypost writes | who writes it (source) |
//! |---|---|---|---|---|
//! | [`SECURE`] `secure` | `protocol` = `Https` when `true` | yes | `"true"` when the protocol is `Https`, else nothing | Spring Cloud Alibaba, when `spring.cloud.nacos.discovery.secure=true` (`alibaba/spring-cloud-alibaba`, `…/nacos/NacosDiscoveryProperties.java`, `init()`); its reader is `Boolean.parseBoolean` (`…/nacos/discovery/NacosServiceDiscovery.java`, `hostToServiceInstance`) |
//! | [`VERSION`] `version` | `version` | yes | the version, when not empty | go-micro's Nacos registry (`micro/plugins`, `v4/registry/nacos/nacos.go`, `Register`), go-kratos' (`go-kratos/kratos`, `contrib/registry/nacos/registry.go`, `Register`), both on `nacos-sdk-go`; Spring Cloud Alibaba users through `spring.cloud.nacos.discovery.metadata.version` |
//! | [`TAGS`] `tags` | `tags` | yes: a JSON array of strings or a comma-separated list | the tags joined with `,` (tags holding a `,` are left out), when there are any | no framework by itself: a user convention (`spring.cloud.nacos.discovery.metadata.tags=a,b`, or a Go client's `Metadata`) |
//! | [`KIND`] `kind` | `protocol` (`http`, `grpc`, …) | yes | no | go-kratos (`go-kratos/kratos`, `contrib/registry/nacos/registry.go`: the endpoint's URL scheme) |
//! | [`PROTOCOL`] `protocol` | `protocol` | yes | no | go-micro's servers, in every node's metadata (`micro/go-micro`, `server/rpc_server.go`, `newNodeMetadata`: `mucp`, which names no waypost protocol and is ignored) |
//!
//! `nacos-sdk-go` itself sends the metadata map as given (over HTTP as one JSON object in the
//! `metadata` form field of `POST /nacos/v1/ns/instance`: `nacos-group/nacos-sdk-go` 1.x
//! `clients/naming_client/naming_proxy.go`, 2.x `clients/naming_client/naming_http/
//! naming_http_proxy.go` for persistent instances; over gRPC for 2.x ephemeral ones), and writes
//! no key of its own except the optional `preserved.*` heart-beat keys
//! (`common/constant/preserved_metadata_keys.go`). Spring Cloud Alibaba also writes
//! `preserved.register.source=SPRING_CLOUD`, `IPv6` and `management.*` keys; none of them maps to a
//! field, so they stay in `metadata`.
//!
//! # Reading
//!
//! - **waypost's own keys win.** For each field, the `waypost.*` key is used when present
//!   (`waypost.version`, `waypost.protocol`, `waypost.tags`), the plain keys only otherwise: an
//!   operator who edits `version` in the Nacos console does not change what waypost reads of a
//!   waypost instance.
//! - **Protocol** of an instance without `waypost.protocol`: the first of `protocol`, `kind`
//!   that names a known protocol (`http`, `https`, `grpc`, `tcp`, any case); then `secure=true`
//!   turns `http` (or no protocol at all) into `https`. `grpc` and `tcp` stay as they are.
//!   Unknown words (`mucp`, `dubbo`) are ignored.
//! - **`secure`** is true exactly when it is `true` in any case, as Java's
//!   `Boolean.parseBoolean` reads it: `secure=maybe` means plain http, like in Spring Cloud.
//! - **`version`** longer than [`MAX_VERSION_LEN`] bytes or holding a control character is
//!   ignored (the version stays empty).
//! - **`tags`**: a value starting with `[` or `{` is read as JSON, which must be an array of
//!   strings; anything else as a comma-separated list. Each tag is trimmed; empty tags, tags longer than [`MAX_TAG_LEN`]
//!   bytes or holding a control character, and repeats are dropped, and at most [`MAX_TAGS`] are
//!   kept. JSON that is not an array of strings (`[1,2]`, `["a"`, `{"a":"b"}`) gives no tags.
//! - None of this rejects an instance: a bad plain key never hides an otherwise good instance
//!   and never logs a warning (the raw value stays visible in `metadata`).
//! - An instance of another client keeps every metadata key in `ServiceInfo::metadata`, the
//!   plain keys included (as Spring Cloud's `ServiceInstance::getMetadata` does); only keys
//!   under waypost's reserved prefix `waypost.` are never metadata.
//! - A waypost instance lists the plain keys it added in [`META_PLAIN`] (`waypost.plain`, e.g.
//!   `version,secure,tags`); exactly those are left out of its `metadata` when read back, so it
//!   reads back as registered.
//!
//! # Writing
//!
//! A plain key is only added when the instance's own metadata does not have it: a user's
//! metadata `version` (or `secure`, `tags`) is registered unchanged, is not listed in
//! `waypost.plain`, and reads back as metadata.
//!
//! [`MAX_VERSION_LEN`]: waypost_core_types::validate::MAX_VERSION_LEN
//! [`MAX_TAG_LEN`]: waypost_core_types::validate::MAX_TAG_LEN
//! [`MAX_TAGS`]: waypost_core_types::validate::MAX_TAGS

use std::collections::HashMap;

use waypost_core_types::validate::{MAX_TAGS, MAX_TAG_LEN, MAX_VERSION_LEN};
use waypost_core_types::{Protocol, ServiceInfo};

/// Spring Cloud Alibaba's scheme flag: `"true"` means https.
pub const SECURE: &str = "secure";
/// The version, as go-micro, go-kratos and Spring Cloud users write it.
pub const VERSION: &str = "version";
/// Tags: a comma-separated list (or a JSON array of strings).
pub const TAGS: &str = "tags";
/// go-kratos' endpoint scheme (`grpc`, `http`).
pub const KIND: &str = "kind";
/// A protocol word (`http`, `https`, `grpc`, `tcp`).
pub const PROTOCOL: &str = "protocol";
/// On a waypost instance: the comma-separated plain keys waypost added for other clients.
pub const META_PLAIN: &str = "waypost.plain";

/// The plain keys waypost writes, in the order it lists them in [`META_PLAIN`].
const WRITTEN: [&str; 3] = [VERSION, SECURE, TAGS];

/// Adds the plain keys for `s` to `md` (which already holds the user's metadata, whose keys
/// are kept), and lists the added ones in [`META_PLAIN`].
pub(crate) fn write_plain(s: &ServiceInfo, md: &mut HashMap<String, String>) {
    let mut added: Vec<&str> = Vec::with_capacity(WRITTEN.len());
    let mut add = |md: &mut HashMap<String, String>, key: &'static str, value: String| {
        if !md.contains_key(key) {
            md.insert(key.to_owned(), value);
            added.push(key);
        }
    };
    if !s.version.is_empty() {
        add(md, VERSION, s.version.clone());
    }
    if s.protocol == Protocol::Https {
        add(md, SECURE, "true".to_owned());
    }
    let joined = join_tags(&s.tags);
    if !joined.is_empty() {
        add(md, TAGS, joined);
    }
    if !added.is_empty() {
        md.insert(META_PLAIN.to_owned(), added.join(","));
    }
}

/// The tags as one comma-separated value; tags that hold a `,` (or are empty) are left out,
/// since a reader that splits on `,` would see other tags than ours.
fn join_tags(tags: &[String]) -> String {
    let mut out = String::new();
    for tag in tags.iter().filter(|t| !t.is_empty() && !t.contains(',')) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(tag);
    }
    out
}

/// Whether `key` is a plain key that waypost added to its own instance (listed in
/// [`META_PLAIN`]); only the keys waypost writes are honoured, whatever the list says.
pub(crate) fn added_by_us(md: &HashMap<String, String>, key: &str) -> bool {
    WRITTEN.contains(&key)
        && md
            .get(META_PLAIN)
            .is_some_and(|list| list.split(',').any(|k| k.trim() == key))
}

/// Java's `Boolean.parseBoolean`: `true` in any case, everything else false.
pub(crate) fn is_true(value: &str) -> bool {
    value.eq_ignore_ascii_case("true")
}

/// The version from the plain `version` key, when it is a version waypost can carry.
pub(crate) fn plain_version(md: &HashMap<String, String>) -> Option<String> {
    md.get(VERSION)
        .filter(|v| v.len() <= MAX_VERSION_LEN && !v.chars().any(char::is_control))
        .cloned()
}

/// The protocol from the plain keys (`protocol`, `kind`, `secure`); see the module docs.
pub(crate) fn plain_protocol(md: &HashMap<String, String>) -> Protocol {
    let named = [PROTOCOL, KIND]
        .iter()
        .filter_map(|k| md.get(*k))
        .filter(|v| !v.is_empty())
        .find_map(|v| v.parse::<Protocol>().ok());
    let secure = md.get(SECURE).is_some_and(|v| is_true(v));
    match named {
        None | Some(Protocol::Http) if secure => Protocol::Https,
        Some(p) => p,
        None => Protocol::Http,
    }
}

/// The tags of a plain `tags` value; see the module docs.
pub(crate) fn parse_tags(value: &str) -> Vec<String> {
    let trimmed = value.trim_start();
    let raw: Vec<String> = if trimmed.starts_with(['[', '{']) {
        serde_json::from_str::<Vec<String>>(trimmed).unwrap_or_default()
    } else {
        value.split(',').map(str::to_owned).collect()
    };
    let mut out: Vec<String> = Vec::new();
    for tag in raw {
        if out.len() == MAX_TAGS {
            break;
        }
        let tag = tag.trim();
        let usable =
            !tag.is_empty() && tag.len() <= MAX_TAG_LEN && !tag.chars().any(char::is_control);
        if usable && !out.iter().any(|t| t == tag) {
            out.push(tag.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn secure_is_read_as_java_reads_it() {
        assert!(is_true("true"));
        assert!(is_true("TRUE"));
        assert!(is_true("True"));
        for v in ["maybe", "1", "yes", "", " true", "false"] {
            assert!(!is_true(v), "{v:?}");
        }
        assert_eq!(plain_protocol(&md(&[("secure", "true")])), Protocol::Https);
        assert_eq!(plain_protocol(&md(&[("secure", "maybe")])), Protocol::Http);
        assert_eq!(plain_protocol(&md(&[("secure", "false")])), Protocol::Http);
        assert_eq!(plain_protocol(&md(&[])), Protocol::Http);
    }

    #[test]
    fn protocol_words_and_secure_combine() {
        // go-kratos writes the endpoint scheme as `kind`.
        assert_eq!(plain_protocol(&md(&[("kind", "grpc")])), Protocol::Grpc);
        assert_eq!(plain_protocol(&md(&[("kind", "http")])), Protocol::Http);
        assert_eq!(
            plain_protocol(&md(&[("kind", "http"), ("secure", "true")])),
            Protocol::Https
        );
        // `protocol` before `kind`; unknown words are skipped.
        assert_eq!(
            plain_protocol(&md(&[("protocol", "tcp"), ("kind", "grpc")])),
            Protocol::Tcp
        );
        assert_eq!(
            plain_protocol(&md(&[("protocol", "mucp"), ("kind", "grpc")])),
            Protocol::Grpc
        );
        assert_eq!(
            plain_protocol(&md(&[("protocol", "dubbo"), ("secure", "TRUE")])),
            Protocol::Https
        );
        // An empty word is no word (Protocol's parser would read it as http).
        assert_eq!(
            plain_protocol(&md(&[("protocol", ""), ("kind", "grpc")])),
            Protocol::Grpc
        );
        // gRPC over TLS stays gRPC.
        assert_eq!(
            plain_protocol(&md(&[("kind", "grpc"), ("secure", "true")])),
            Protocol::Grpc
        );
    }

    #[test]
    fn tags_in_both_forms_and_garbage() {
        assert_eq!(parse_tags("a,b , c"), ["a", "b", "c"]);
        assert_eq!(parse_tags(r#"["a","b c"]"#), ["a", "b c"]);
        assert_eq!(parse_tags(r#"  ["x"]"#), ["x"]);
        assert_eq!(parse_tags("a,,a, ,b"), ["a", "b"]);
        assert_eq!(parse_tags("single"), ["single"]);
        assert!(parse_tags("").is_empty());
        assert!(parse_tags("[1,2]").is_empty());
        assert!(parse_tags(r#"["a""#).is_empty());
        assert!(parse_tags("[").is_empty());
        // JSON, but not a list.
        assert!(parse_tags(r#"{"a":"1","b":"2"}"#).is_empty());
        assert_eq!(parse_tags("a\u{1b}[31m,b"), ["b"]);
        let long = "x".repeat(MAX_TAG_LEN + 1);
        assert_eq!(parse_tags(&format!("{long},ok")), ["ok"]);
        let many: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
        let tags = parse_tags(&many.join(","));
        assert_eq!(tags.len(), MAX_TAGS);
        assert_eq!(tags[0], "t0");
    }

    #[test]
    fn version_is_bounded() {
        assert_eq!(
            plain_version(&md(&[("version", "1.2")])).as_deref(),
            Some("1.2")
        );
        assert_eq!(plain_version(&md(&[("version", "1\n2")])), None);
        let long = "v".repeat(MAX_VERSION_LEN + 1);
        assert_eq!(plain_version(&md(&[("version", long.as_str())])), None);
        assert_eq!(plain_version(&md(&[])), None);
    }

    #[test]
    fn writing_adds_only_missing_keys_and_lists_them() {
        let s = ServiceInfo::new("a", "svc", "10.0.0.1", 443)
            .with_version("2.0")
            .with_protocol(Protocol::Https)
            .with_tag("blue")
            .with_tag("has,comma")
            .with_tag("canary");
        let mut m = HashMap::new();
        write_plain(&s, &mut m);
        assert_eq!(
            m,
            md(&[
                ("version", "2.0"),
                ("secure", "true"),
                ("tags", "blue,canary"),
                ("waypost.plain", "version,secure,tags"),
            ])
        );
        assert!(added_by_us(&m, "secure"));
        assert!(!added_by_us(&m, "region"));

        // The user's own `version` is kept and not listed.
        let mut m = md(&[("version", "users-own")]);
        write_plain(&s, &mut m);
        assert_eq!(m["version"], "users-own");
        assert_eq!(m[META_PLAIN], "secure,tags");
        assert!(!added_by_us(&m, "version"));

        // Nothing to add: no marker either.
        let plain = ServiceInfo::new("b", "svc", "10.0.0.1", 80);
        let mut m = HashMap::new();
        write_plain(&plain, &mut m);
        assert!(m.is_empty());

        // A hostile marker cannot hide a key waypost never writes.
        let m = md(&[("waypost.plain", "region,version"), ("region", "eu")]);
        assert!(!added_by_us(&m, "region"));
        assert!(added_by_us(&m, "version"));
    }
}
