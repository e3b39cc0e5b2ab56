//! Test vectors: JSON exactly as Go's `encoding/json` writes the Go module's `ServiceInfo`.

use std::time::Duration;

use waypost_core_types::{Error, Health, Protocol, ServiceEvent, ServiceInfo, Timestamp};

/// The Laravel-Go module's example instance (README "内存注册中心"), after `Register` stamped its
/// times, as `json.Marshal` writes it: struct field order, sorted map keys, RFC3339Nano times with
/// the zone kept, `time.Duration` as integer nanoseconds, the zero `time.Time` for `last_check`.
const GO_EXAMPLE: &str = r#"{"id":"user-service-1","name":"user-service","version":"1.0.0","address":"localhost","port":8080,"protocol":"http","health":"healthy","metadata":{"environment":"production","region":"us-west-1"},"tags":["api","user"],"created_at":"2024-01-15T10:30:00.123456789+08:00","updated_at":"2024-01-15T10:30:05Z","last_check":"0001-01-01T00:00:00Z","ttl":30000000000}"#;

/// A Go value with nil map and slice (`null`), a UTC time with a millisecond fraction, a
/// one-and-a-half-second TTL, and the grpc protocol.
const NIL_FIELDS: &str = r#"{"id":"order-1","name":"order-service","version":"","address":"10.0.0.7","port":9090,"protocol":"grpc","health":"unknown","metadata":null,"tags":null,"created_at":"2023-12-31T23:59:59.5Z","updated_at":"2023-12-31T23:59:59.5Z","last_check":"2024-01-01T00:00:00.001Z","ttl":1500000000}"#;

#[test]
fn go_example_decodes_to_the_expected_value() {
    let s = ServiceInfo::from_json(GO_EXAMPLE.as_bytes()).unwrap();
    let want = ServiceInfo::new("user-service-1", "user-service", "localhost", 8080)
        .with_version("1.0.0")
        .with_protocol(Protocol::Http)
        .with_health(Health::Healthy)
        .with_metadata("environment", "production")
        .with_metadata("region", "us-west-1")
        .with_tag("api")
        .with_tag("user")
        .with_ttl(Duration::from_secs(30));
    let mut want = want;
    want.created_at = Timestamp::parse("2024-01-15T10:30:00.123456789+08:00").unwrap();
    want.updated_at = Timestamp::parse("2024-01-15T10:30:05Z").unwrap();
    assert_eq!(s, want);
    assert!(s.last_check.is_zero());
}

#[test]
fn go_example_reencodes_byte_for_byte() {
    let s = ServiceInfo::from_json(GO_EXAMPLE.as_bytes()).unwrap();
    assert_eq!(s.to_json().unwrap(), GO_EXAMPLE);
}

#[test]
fn nil_map_and_slice_decode_as_empty() {
    let s = ServiceInfo::from_json(NIL_FIELDS.as_bytes()).unwrap();
    assert!(s.metadata.is_empty());
    assert!(s.tags.is_empty());
    assert_eq!(s.protocol, Protocol::Grpc);
    assert_eq!(s.health, Health::Unknown);
    assert_eq!(s.ttl, Duration::from_millis(1500));
    assert_eq!(s.last_check.to_go_string(), "2024-01-01T00:00:00.001Z");
    // Re-encoded, empty collections are written as `{}` and `[]`, which Go reads as empty too;
    // everything else is unchanged.
    let out = s.to_json().unwrap();
    assert_eq!(
        out,
        NIL_FIELDS
            .replace(r#""metadata":null"#, r#""metadata":{}"#)
            .replace(r#""tags":null"#, r#""tags":[]"#)
    );
}

#[test]
fn weight_is_written_only_when_not_default() {
    let s = ServiceInfo::from_json(GO_EXAMPLE.as_bytes()).unwrap();
    assert_eq!(s.weight, waypost_core_types::DEFAULT_WEIGHT);
    let heavy = s.clone().with_weight(300);
    let json = heavy.to_json().unwrap();
    assert!(
        json.ends_with(r#","ttl":30000000000,"weight":300}"#),
        "{json}"
    );
    assert_eq!(ServiceInfo::from_json(json.as_bytes()).unwrap().weight, 300);
}

#[test]
fn unknown_fields_are_ignored() {
    let with_extra = GO_EXAMPLE.replacen('{', r#"{"cluster":"a","extra":{"x":[1,2]},"#, 1);
    let s = ServiceInfo::from_json(with_extra.as_bytes()).unwrap();
    assert_eq!(s.id, "user-service-1");
}

#[test]
fn go_event_json() {
    let s = ServiceInfo::from_json(GO_EXAMPLE.as_bytes()).unwrap();
    let json = format!(r#"{{"type":"created","service":{GO_EXAMPLE}}}"#);
    let ev: ServiceEvent = serde_json::from_str(&json).unwrap();
    assert_eq!(ev, ServiceEvent::created(s));
    assert_eq!(serde_json::to_string(&ev).unwrap(), json);
}

#[test]
fn garbage_is_a_clear_error() {
    for bad in [
        &b"not json"[..],
        br#"{"id":"a"}"#,
        br#"{"id":"a","name":"b","address":"h","port":70000}"#,
        br#"{"id":"a","name":"b","address":"h","port":80,"protocol":"ftp"}"#,
        br#"{"id":"a","name":"b","address":"h","port":80,"created_at":"yesterday"}"#,
        b"\xff\xfe",
    ] {
        match ServiceInfo::from_json(bad) {
            Err(Error::Codec(msg)) => assert!(!msg.is_empty()),
            other => panic!(
                "{:?}: expected a codec error, got {other:?}",
                String::from_utf8_lossy(bad)
            ),
        }
    }
    // Valid JSON, invalid instance: rejected by validation.
    let bad = br#"{"id":"a/b","name":"b","address":"h","port":80}"#;
    assert!(matches!(
        ServiceInfo::from_json(bad),
        Err(Error::InvalidInstance(_))
    ));
    let zero_port = br#"{"id":"a","name":"b","address":"h","port":0}"#;
    assert!(matches!(
        ServiceInfo::from_json(zero_port),
        Err(Error::InvalidInstance(_))
    ));
}

#[test]
fn negative_go_duration_reads_as_zero() {
    let json = GO_EXAMPLE.replace("30000000000", "-5");
    assert_eq!(
        ServiceInfo::from_json(json.as_bytes()).unwrap().ttl,
        Duration::ZERO
    );
}

/// A TTL beyond Go's `time.Duration` (about 292 years, `Duration::MAX` included) validates and
/// is written as Go's largest duration, which reads back as that; zero stays zero.
#[test]
fn extreme_ttls_validate_and_encode_as_go_durations() {
    let max = ServiceInfo::new("a", "svc", "h", 1).with_ttl(Duration::MAX);
    max.validate().unwrap();
    let json = max.to_json().unwrap();
    assert!(json.contains(&format!(r#""ttl":{}"#, i64::MAX)), "{json}");
    let back = ServiceInfo::from_json(json.as_bytes()).unwrap();
    assert_eq!(back.ttl, Duration::from_nanos(i64::MAX as u64));
    let zero = ServiceInfo::new("a", "svc", "h", 1).with_ttl(Duration::ZERO);
    assert!(zero.to_json().unwrap().contains(r#""ttl":0"#));
}
