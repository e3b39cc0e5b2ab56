//! Which address a service advertises in the registry.
//!
//! Other processes call what is registered, so it must be an address they can reach: never
//! `0.0.0.0` or `::`, and not a loopback address unless asked for. In order:
//!
//! 1. the address given to [`Announcer::with_advertise_addr`](crate::Announcer::with_advertise_addr);
//! 2. the environment variable [`ADVERTISE_ADDR_ENV`] (`WAYPOST_ADVERTISE_ADDR`);
//! 3. the listener's own IP, when it is bound to one specific, non-loopback address;
//! 4. the first non-loopback address of the machine's interfaces, IPv4 before IPv6, global
//!    before link-local.
//!
//! Each of the first two is `host` or `host:port` (`[v6]:port` for IPv6 with a port); without a
//! port, the port is the listener's. A loopback address is accepted in step 1 and 2 (it was
//! asked for), and in steps 3 and 4 only with
//! [`Announcer::allow_loopback`](crate::Announcer::allow_loopback), for single-machine setups
//! and tests.

use std::net::{IpAddr, SocketAddr};

use waypost_core_types::quote::quoted;
use waypost_core_types::{Error, Result};

/// The environment variable that sets the advertised address: `host` or `host:port`.
pub const ADVERTISE_ADDR_ENV: &str = "WAYPOST_ADVERTISE_ADDR";

/// Where the advertised address came from, for the log line that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSource {
    /// Set on the announcer.
    Explicit,
    /// From [`ADVERTISE_ADDR_ENV`].
    Environment,
    /// The IP the listener is bound to.
    Listener,
    /// An interface address of the machine.
    Interface,
}

/// An address to register: host (an IP or a DNS name, without brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// Host, as registered.
    pub host: String,
    /// Port, as registered.
    pub port: u16,
    /// Where it came from.
    pub source: AddressSource,
}

/// What [`resolve`] works from; the environment and the interfaces are passed in so that each
/// step can be tested on its own.
#[derive(Debug, Clone)]
pub(crate) struct Inputs<'a> {
    pub explicit: Option<&'a str>,
    pub env: Option<String>,
    pub bound: SocketAddr,
    pub allow_loopback: bool,
}

/// The address to advertise for a listener bound at `bound`; see the [module docs](self).
///
/// # Errors
/// [`Error::InvalidConfig`] for a malformed explicit or environment address, or when no usable
/// address is found (then set [`ADVERTISE_ADDR_ENV`]).
pub(crate) fn resolve(
    inputs: Inputs<'_>,
    interfaces: impl FnOnce() -> Vec<IpAddr>,
) -> Result<Advertised> {
    if let Some(text) = inputs.explicit {
        return parse_host_port(text, inputs.bound.port(), AddressSource::Explicit);
    }
    if let Some(text) = inputs.env.as_deref().filter(|t| !t.trim().is_empty()) {
        return parse_host_port(text.trim(), inputs.bound.port(), AddressSource::Environment);
    }
    let port = inputs.bound.port();
    if port == 0 {
        return Err(Error::InvalidConfig(
            "lifecycle: the listener's port is 0; pass the bound address (listener.local_addr())"
                .into(),
        ));
    }
    let ip = inputs.bound.ip();
    if !ip.is_unspecified() && (!ip.is_loopback() || inputs.allow_loopback) {
        return Ok(Advertised {
            host: ip.to_string(),
            port,
            source: AddressSource::Listener,
        });
    }
    if ip.is_loopback() {
        // Bound to loopback only: no other machine can reach it, whatever the interfaces say.
        return Err(Error::InvalidConfig(format!(
            "lifecycle: the listener is bound to {ip}, which other hosts cannot reach; bind to \
             0.0.0.0 or a specific address, set {ADVERTISE_ADDR_ENV}, or allow loopback"
        )));
    }
    match pick_interface(&interfaces()) {
        Some(found) => Ok(Advertised {
            host: found.to_string(),
            port,
            source: AddressSource::Interface,
        }),
        None if inputs.allow_loopback => Ok(Advertised {
            host: if ip.is_ipv6() { "::1" } else { "127.0.0.1" }.into(),
            port,
            source: AddressSource::Interface,
        }),
        None => Err(Error::InvalidConfig(format!(
            "lifecycle: no non-loopback interface address found; set {ADVERTISE_ADDR_ENV}"
        ))),
    }
}

/// The machine's interface addresses (empty if they cannot be read).
pub(crate) fn machine_interfaces() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}

/// The best interface address: not loopback, unspecified or multicast; IPv4 before IPv6 (a `::`
/// listener accepts IPv4 too on Linux), global before link-local, then in the order the system
/// lists them.
fn pick_interface(addrs: &[IpAddr]) -> Option<IpAddr> {
    let usable = |ip: &&IpAddr| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast();
    let rank = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) if !v4.is_link_local() => 0,
        IpAddr::V6(v6) if !is_v6_link_local(v6) => 1,
        IpAddr::V4(_) => 2,
        IpAddr::V6(_) => 3,
    };
    addrs
        .iter()
        .filter(usable)
        .min_by_key(|ip| rank(ip))
        .copied()
}

fn is_v6_link_local(ip: &std::net::Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xffc0) == 0xfe80
}

/// Parses `host`, `host:port`, `v6` or `[v6]:port`; `default_port` when none is given.
fn parse_host_port(text: &str, default_port: u16, source: AddressSource) -> Result<Advertised> {
    let bad = |why: &str| {
        Error::InvalidConfig(format!(
            "lifecycle: advertised address `{}` {why}",
            quoted(text)
        ))
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("has no closing `]`"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("has text after `]`"))?,
                ),
            ),
        }
    } else if text.matches(':').count() > 1 {
        (text, None) // A bare IPv6 address.
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p)
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !p.starts_with('0') =>
        {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("has a port outside 1..=65535"))?
        }
        Some(_) => return Err(bad("has an invalid port")),
    };
    if port == 0 {
        return Err(bad("has no port, and the listener's is 0"));
    }
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        if ip.is_unspecified() {
            return Err(bad("is unspecified; advertise an address others can reach"));
        }
        return Ok(Advertised {
            host: ip.to_string(),
            port,
            source,
        });
    }
    let valid_name = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid_name {
        return Err(bad("is neither an IP address nor a DNS name"));
    }
    Ok(Advertised {
        host: host.to_ascii_lowercase(),
        port,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(explicit: Option<&str>, env: Option<&str>, bound: &str) -> Inputs<'static> {
        Inputs {
            explicit: explicit.map(|s| Box::leak(s.to_owned().into_boxed_str()) as &str),
            env: env.map(str::to_owned),
            bound: bound.parse().unwrap(),
            allow_loopback: false,
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn no_interfaces() -> Vec<IpAddr> {
        panic!("interfaces must not be read in this case")
    }

    #[test]
    fn explicit_wins_then_env() {
        let got = resolve(
            inputs(Some("10.1.2.3"), Some("10.9.9.9:1"), "0.0.0.0:8080"),
            no_interfaces,
        )
        .unwrap();
        assert_eq!(
            (got.host.as_str(), got.port, got.source),
            ("10.1.2.3", 8080, AddressSource::Explicit)
        );
        let got = resolve(
            inputs(None, Some("users.svc.cluster.local:9000"), "0.0.0.0:8080"),
            no_interfaces,
        )
        .unwrap();
        assert_eq!(
            (got.host.as_str(), got.port, got.source),
            ("users.svc.cluster.local", 9000, AddressSource::Environment)
        );
        let got = resolve(
            inputs(Some("[fd00::7]:81"), None, "[::]:8080"),
            no_interfaces,
        )
        .unwrap();
        assert_eq!((got.host.as_str(), got.port), ("fd00::7", 81));
        let got = resolve(inputs(Some("fd00::7"), None, "[::]:8080"), no_interfaces).unwrap();
        assert_eq!((got.host.as_str(), got.port), ("fd00::7", 8080));
        // Loopback is allowed when asked for explicitly.
        let got = resolve(
            inputs(Some("127.0.0.1"), None, "127.0.0.1:8080"),
            no_interfaces,
        )
        .unwrap();
        assert_eq!(got.host, "127.0.0.1");
        // An empty environment variable is as good as unset.
        let got = resolve(inputs(None, Some("  "), "0.0.0.0:8080"), || {
            ips(&["10.0.0.5"])
        })
        .unwrap();
        assert_eq!(got.source, AddressSource::Interface);
    }

    #[test]
    fn malformed_explicit_addresses_are_bounded_errors() {
        for bad in [
            "0.0.0.0",
            "[::]:80",
            "h:+80",
            "h:080",
            "h:0",
            "h:65536",
            "h:",
            ":80",
            "[fd00::1",
            "[fd00::1]x",
            "a b",
            "-a.com",
            "a..b",
            "x\u{1b}[2J",
        ] {
            let err = resolve(inputs(Some(bad), None, "0.0.0.0:8080"), no_interfaces).unwrap_err();
            assert!(matches!(err, Error::InvalidConfig(_)), "{bad}: {err}");
            assert!(!err.to_string().chars().any(char::is_control), "{err}");
        }
        let long = "a".repeat(100_000);
        let err = resolve(inputs(Some(&long), None, "0.0.0.0:8080"), no_interfaces).unwrap_err();
        assert!(err.to_string().len() < 300);
    }

    #[test]
    fn listener_ip_is_used_when_specific() {
        let got = resolve(inputs(None, None, "10.0.0.9:7000"), no_interfaces).unwrap();
        assert_eq!(
            (got.host.as_str(), got.port, got.source),
            ("10.0.0.9", 7000, AddressSource::Listener)
        );
    }

    #[test]
    fn interfaces_never_give_loopback_or_unspecified() {
        let got = resolve(inputs(None, None, "0.0.0.0:8080"), || {
            ips(&[
                "127.0.0.1",
                "::1",
                "0.0.0.0",
                "fe80::1",
                "169.254.0.9",
                "fd00::2",
                "192.0.2.2",
            ])
        })
        .unwrap();
        assert_eq!(
            (got.host.as_str(), got.source),
            ("192.0.2.2", AddressSource::Interface)
        );
        let got = resolve(inputs(None, None, "[::]:8080"), || {
            ips(&["::1", "fe80::1", "fd00::2"])
        })
        .unwrap();
        assert_eq!(got.host, "fd00::2");
        let got = resolve(inputs(None, None, "0.0.0.0:8080"), || {
            ips(&["127.0.0.1", "fe80::1"])
        })
        .unwrap();
        assert_eq!(got.host, "fe80::1");
        let err = resolve(inputs(None, None, "0.0.0.0:8080"), || {
            ips(&["127.0.0.1", "::1"])
        })
        .unwrap_err();
        assert!(err.to_string().contains(ADVERTISE_ADDR_ENV), "{err}");
    }

    #[test]
    fn loopback_only_when_allowed() {
        let err = resolve(inputs(None, None, "127.0.0.1:8080"), no_interfaces).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)));
        let mut allowed = inputs(None, None, "127.0.0.1:8080");
        allowed.allow_loopback = true;
        assert_eq!(resolve(allowed, no_interfaces).unwrap().host, "127.0.0.1");
        let mut allowed = inputs(None, None, "0.0.0.0:8080");
        allowed.allow_loopback = true;
        assert_eq!(
            resolve(allowed, || ips(&["127.0.0.1"])).unwrap().host,
            "127.0.0.1"
        );
    }

    #[test]
    fn port_zero_is_an_error() {
        assert!(resolve(inputs(None, None, "0.0.0.0:0"), no_interfaces).is_err());
    }

    #[test]
    fn this_machine_has_a_usable_address_or_says_so() {
        // On any machine: the answer is never loopback or unspecified without allow_loopback.
        match resolve(inputs(None, None, "0.0.0.0:8080"), machine_interfaces) {
            Ok(a) => {
                let ip: IpAddr = a.host.parse().unwrap();
                assert!(!ip.is_loopback() && !ip.is_unspecified(), "{a:?}");
            }
            Err(e) => assert!(e.to_string().contains(ADVERTISE_ADDR_ENV)),
        }
    }
}
