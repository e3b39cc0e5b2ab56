//! go-zero's record: the value `host:port` at `<key>/<id>`, as go-zero's etcd publisher writes
//! it for a zrpc server.
//!
//! From the go-zero sources (`zeromicro/go-zero`): `core/discov/publisher.go` puts the value
//! given to `NewPublisher` (for zrpc, the server's listen address `host:port`, see
//! `zrpc/internal/rpcpubserver.go`) at `makeEtcdKey(key, id)` under a lease, where the id is
//! the lease id or the one set by `WithId`; `core/discov/clients.go` builds that key as
//! `fmt.Sprintf("%s%c%d", key, internal.Delimiter, id)` with `Delimiter = '/'`
//! (`core/discov/internal/vars.go`); `core/discov/internal/registry.go` and
//! `core/discov/subscriber.go` read every value under `<key>/` and use the values as the
//! addresses to dial. The key (`user.rpc` in go-zero's configs) has no leading `/`.
//!
//! Reading: the name and id come from the key (any id waypost accepts, not only go-zero's
//! decimal numbers), the value is `host:port` or `[ipv6]:port` with nothing around it. go-zero
//! registers zrpc (gRPC) servers, so the protocol is [`Protocol::Grpc`]; health is
//! [`Health::Unknown`](crate::Health::Unknown); there is no version, metadata or tag.
//! Writing: [`ServiceInfo::endpoint`] only. The format keeps the address and port, nothing else.

use crate::quote::quoted_up_to;
use crate::{Protocol, ServiceInfo};

use super::host_port;
use super::SHOWN;

/// Decodes the `host:port` stored at `<key>/<id>`.
pub(super) fn decode(name: &str, id: &str, value: &[u8]) -> Result<ServiceInfo, String> {
    let text = std::str::from_utf8(value).map_err(|_| "not UTF-8 `host:port`".to_owned())?;
    let (host, port) = host_port(text)
        .map_err(|why| format!("`{}` is not `host:port`: {why}", quoted_up_to(text, SHOWN)))?;
    let info = ServiceInfo::new(id, name, host, port).with_protocol(Protocol::Grpc);
    info.validate().map_err(|e| e.to_string())?;
    Ok(info)
}

/// The value go-zero's subscribers dial: `address:port` (IPv6 in brackets).
pub(super) fn encode(info: &ServiceInfo) -> Vec<u8> {
    info.endpoint().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Health;

    /// What go-zero's publisher stores for a zrpc server (`zeromicro/go-zero`
    /// `core/discov/publisher.go`: the value is the listen address, the key
    /// `<Etcd.Key>/<lease id>`), e.g. `user.rpc/7587886412946786306` -> `10.0.0.9:8080`.
    const LEASE_ID: &str = "7587886412946786306";

    #[test]
    fn decodes_host_port() {
        let info = decode("user.rpc", LEASE_ID, b"10.0.0.9:8080").unwrap();
        assert_eq!(
            (info.id.as_str(), info.name.as_str()),
            (LEASE_ID, "user.rpc")
        );
        assert_eq!((info.address.as_str(), info.port), ("10.0.0.9", 8080));
        assert_eq!(info.protocol, Protocol::Grpc);
        assert_eq!(info.health, Health::Unknown);
        assert!(info.metadata.is_empty() && info.tags.is_empty() && info.version.is_empty());
        let v6 = decode("user.rpc", LEASE_ID, b"[::1]:8080").unwrap();
        assert_eq!((v6.address.as_str(), v6.port), ("::1", 8080));
        let named = decode("user.rpc", "1", b"user-rpc-0.user-rpc:8080").unwrap();
        assert_eq!(named.address, "user-rpc-0.user-rpc");
    }

    #[test]
    fn encodes_exactly_and_round_trips() {
        let info = ServiceInfo::new("42", "user.rpc", "10.0.0.9", 8080).with_version("lost");
        assert_eq!(encode(&info), b"10.0.0.9:8080");
        let v6 = ServiceInfo::new("43", "user.rpc", "::1", 9000);
        assert_eq!(encode(&v6), b"[::1]:9000");
        let back = decode("user.rpc", "43", &encode(&v6)).unwrap();
        assert_eq!((back.address.as_str(), back.port), ("::1", 9000));
        let back = decode("user.rpc", "42", &encode(&info)).unwrap();
        assert_eq!(back.endpoint(), info.endpoint());
    }

    #[test]
    fn rejects_garbage() {
        for (junk, want) in [
            (&b""[..], "empty host"),
            (b"10.0.0.9", "no port"),
            (b"10.0.0.9:", "port"),
            (b"10.0.0.9:0", "port"),
            (b"10.0.0.9:080", "port"),
            (b"10.0.0.9:65536", "port"),
            (b"10.0.0.9:80 ", "port"),
            (b" 10.0.0.9:80", "space"),
            (b":80", "empty host"),
            (b"::1:80", "brackets"),
            (b"[::1]80", "junk after"),
            (b"[::1:80", "unclosed"),
            (b"[zz]:80", "IPv6"),
            (b"\xff:80", "UTF-8"),
            (br#"{"id":"x"}:80"#, "more than one"),
            (br#"{x}:80"#, "invalid character"),
            (b"a b:80", "space"),
        ] {
            let err = decode("n", "1", junk).unwrap_err();
            assert!(err.contains(want), "{junk:?}: {err}");
        }
        let hostile = format!("{}\u{202e}", "x".repeat(10_000));
        let err = decode("n", "1", hostile.as_bytes()).unwrap_err();
        assert!(err.len() < 300 && !err.contains('\u{202e}'), "{err}");
    }
}
