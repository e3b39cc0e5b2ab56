//! The mechanics every registry URL shares: `scheme://user:password@host1:port,host2/path?key=value`.
//!
//! Each backend crate parses its own URL (its `FromStr` for its config) on top of
//! [`RegistryUrl`]: this module splits the URL, percent-decodes the parts, reads typed query
//! parameters and rejects the ones nobody took. Errors are [`Error::InvalidConfig`] starting with
//! `registry URL:`; they say what is wrong and where, and never repeat the password or the whole
//! URL (a typo in the scheme must not print the credentials that follow it).
//!
//! ```
//! use std::time::Duration;
//! use waypost_core_types::url::RegistryUrl;
//!
//! let mut url = RegistryUrl::parse("etcd://app:p%2Fss@h1:2379,h2/svc?ttl=15s&watch_buffer=64")?;
//! assert_eq!(url.scheme(), "etcd");
//! assert_eq!(url.username(), Some("app"));
//! assert_eq!(url.password().map(|p| p.expose()), Some("p/ss"));
//! assert_eq!(url.hosts_with_port(2379)?, ["h1:2379", "h2:2379"]);
//! assert_eq!(url.path(), "/svc");
//! assert_eq!(url.take_duration("ttl")?, Some(Duration::from_secs(15)));
//! assert_eq!(url.take_parsed::<usize>("watch_buffer")?, Some(64));
//! url.finish()?; // every parameter was used
//! # Ok::<(), waypost_core_types::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::quote::quoted;
use crate::time::parse_duration;
use crate::{Error, Result, Secret};

/// An [`Error::InvalidConfig`] with the `registry URL:` prefix.
pub fn invalid(msg: impl fmt::Display) -> Error {
    Error::InvalidConfig(format!("registry URL: {msg}"))
}

/// The scheme of a registry URL, lower-cased, without looking at the rest (what the facade
/// dispatches on).
///
/// # Errors
/// [`Error::InvalidConfig`] when there is no `scheme://` or the scheme is malformed; the
/// message never contains the URL.
pub fn scheme(url: &str) -> Result<String> {
    let url = url.trim();
    let Some((scheme, _)) = url.split_once("://") else {
        return Err(invalid(
            "no `scheme://` at the start (expected e.g. `etcd://host:2379`)",
        ));
    };
    let well_formed = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !well_formed {
        return Err(invalid(
            "malformed scheme before `://` (expected e.g. `etcd://host:2379`)",
        ));
    }
    Ok(scheme.to_ascii_lowercase())
}

fn decode(what: &str, s: &str) -> Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            invalid(format!(
                "the {what} is not valid UTF-8 after percent-decoding"
            ))
        })
}

/// A registry URL split into its parts, with the query parameters still to be taken.
///
/// `Debug` shows the password as `[redacted]`, and the query parameters by name only (a value
/// may be a token, as Consul's `token=`).
#[derive(Clone)]
pub struct RegistryUrl {
    scheme: String,
    username: Option<String>,
    password: Option<Secret>,
    hosts: Vec<String>,
    path: String,
    query: BTreeMap<String, String>,
}

impl fmt::Debug for RegistryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryUrl")
            .field("scheme", &self.scheme)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("hosts", &self.hosts)
            .field("path", &self.path)
            .field("parameters", &self.query.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RegistryUrl {
    /// Splits `scheme://[user[:password]@]host[:port][,host[:port]…][/path][?key=value&…]`.
    ///
    /// The user name, password, path and query are percent-decoded (write a `/`, `@`, `:`, `?`
    /// or `#` in a password as `%2F`, `%40`, `%3A`, `%3F`, `%23`; a `%` not followed by two hex
    /// digits stays as it is). A password with one of these characters left unencoded is
    /// rejected, never guessed at: the user info ends at the first `/`, `?` or `#`, so an `@`
    /// after one of them (`user:pa/ss@host`) is an error that says which character to encode,
    /// and `#` anywhere is an error. Neither error quotes any part of the URL.
    ///
    /// Each host is checked with
    /// [`check_endpoint`](crate::validate::check_endpoint): a DNS name, an IPv4 address or a
    /// bracketed IPv6 address, with an optional port of 1 to 65535 in plain digits. Fragments,
    /// parameters without a value and parameters given twice are errors.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] saying what is wrong, never quoting the password or the URL.
    pub fn parse(url: &str) -> Result<Self> {
        let scheme = scheme(url)?;
        let url = url.trim();
        let rest = &url[url.find("://").map_or(0, |i| i + 3)..];
        if rest.contains('#') {
            return Err(invalid(
                "`#` is not allowed (fragments have no meaning here; write `#` in a password \
                 as `%23`)",
            ));
        }
        let (before_query, query_text) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        if path.contains('@') {
            // `user:pa/ss@host`: the `/` ended the authority early. Say so without quoting any
            // of it, because the part before the `@` is a password.
            return Err(invalid(
                "`@` after a `/`: percent-encode `/` in a user name or password as `%2F` \
                 (and `@` in a path as `%40`)",
            ));
        }
        if query_text.contains('@') && !authority.contains('@') {
            // `user:pa?ss@host`: the `?` ended the authority early (same reasoning as above).
            return Err(invalid(
                "`@` after a `?`: percent-encode `?` in a user name or password as `%3F` \
                 (and `@` in a parameter value as `%40`)",
            ));
        }
        let (userinfo, hostlist) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = match ui.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (ui, None),
                };
                let u = decode("user name", u)?;
                let p = p.map(|p| decode("password", p)).transpose()?;
                (Some(u).filter(|u| !u.is_empty()), p.map(Secret::new))
            }
        };
        let mut hosts = Vec::new();
        if !hostlist.is_empty() {
            for (i, h) in hostlist.split(',').enumerate() {
                if h.is_empty() {
                    return Err(invalid(format!("host #{} is empty", i + 1)));
                }
                check_host(h).map_err(|why| invalid(format!("host #{}: {why}", i + 1)))?;
                hosts.push(h.to_owned());
            }
        }
        let mut query = BTreeMap::new();
        for pair in query_text.split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(invalid(format!(
                    "parameter {} has no value (write `key=value`)",
                    ParamName(&decode("parameter name", pair)?)
                )));
            };
            let k = decode("parameter name", k)?;
            let v = decode(&format!("value of {}", ParamName(&k)), v)?;
            if query.insert(k.clone(), v).is_some() {
                return Err(invalid(format!(
                    "parameter {} is given twice",
                    ParamName(&k)
                )));
            }
        }
        Ok(RegistryUrl {
            scheme,
            username,
            password,
            hosts,
            path: decode("path", path)?,
            query,
        })
    }

    /// The scheme, lower-cased.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The user name, if the URL has one (an empty one reads as none).
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The password, if the URL has one (`user:@host` gives an empty one).
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// Takes the user name and password out.
    pub fn take_credentials(&mut self) -> (Option<String>, Option<Secret>) {
        (self.username.take(), self.password.take())
    }

    /// The hosts as written (`host`, `host:port`, `[v6]`, `[v6]:port`).
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The hosts, with `default_port` added to those without one.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when there is no host.
    pub fn hosts_with_port(&self, default_port: u16) -> Result<Vec<String>> {
        if self.hosts.is_empty() {
            return Err(invalid(format!(
                "a `{}://` URL needs at least one host",
                quoted(&self.scheme)
            )));
        }
        Ok(self
            .hosts
            .iter()
            .map(|h| {
                if has_port(h) {
                    h.clone()
                } else {
                    format!("{h}:{default_port}")
                }
            })
            .collect())
    }

    /// The percent-decoded path, with its leading `/` (empty when there is none).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path without trailing slashes, or `None` when that leaves nothing (`""` or `/`).
    pub fn path_prefix(&self) -> Option<String> {
        let trimmed = self.path.trim_end_matches('/');
        (!trimmed.is_empty()).then(|| trimmed.to_owned())
    }

    /// Fails unless the URL has no user name or password.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`].
    pub fn no_credentials(&self) -> Result<()> {
        if self.username.is_some() || self.password.is_some() {
            return Err(invalid(format!(
                "a `{}://` URL takes no user name or password",
                quoted(&self.scheme)
            )));
        }
        Ok(())
    }

    /// Fails unless the URL has no host.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`].
    pub fn no_hosts(&self) -> Result<()> {
        if !self.hosts.is_empty() {
            return Err(invalid(format!(
                "a `{}://` URL takes no host",
                quoted(&self.scheme)
            )));
        }
        Ok(())
    }

    /// Fails unless the path is empty or `/`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] with `hint` (what to use instead).
    pub fn no_path(&self, hint: &str) -> Result<()> {
        if !self.path.trim_matches('/').is_empty() {
            return Err(invalid(format!(
                "a `{}://` URL has no path; {hint}",
                quoted(&self.scheme)
            )));
        }
        Ok(())
    }

    /// Takes a query parameter as text.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.query.remove(key)
    }

    /// Takes a query parameter that is a secret (its value is never quoted in errors).
    pub fn take_secret(&mut self, key: &str) -> Option<Secret> {
        self.take(key).map(Secret::new)
    }

    /// Takes a duration parameter (`500ms`, `30s`, `1m30s`, as Go writes them).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the parameter.
    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        self.take(key)
            .map(|v| parse_duration(&v).map_err(|e| invalid(format!("parameter `{key}`: {e}"))))
            .transpose()
    }

    /// Takes a port parameter: 1 to 65535 in plain digits (see
    /// [`check_port`](crate::validate::check_port)).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the parameter.
    pub fn take_port(&mut self, key: &str) -> Result<Option<u16>> {
        self.take(key)
            .map(|v| {
                crate::validate::check_port(&v)
                    .map_err(|why| invalid(format!("parameter `{key}`: `{}`: {why}", quoted(&v))))
            })
            .transpose()
    }

    /// Takes a parameter parsed with [`FromStr`] (numbers, `true`/`false`, enums).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the parameter and its value.
    pub fn take_parsed<T: FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        self.take(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    invalid(format!(
                        "parameter `{key}`: `{}` is not a valid {}",
                        quoted(&v),
                        short_type_name::<T>()
                    ))
                })
            })
            .transpose()
    }

    /// Ends parsing: fails if a parameter was not taken by anyone.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first unknown parameter.
    pub fn finish(self) -> Result<()> {
        match self.query.keys().next() {
            Some(key) => Err(invalid(format!(
                "unknown parameter {} for a `{}://` URL",
                ParamName(key),
                quoted(&self.scheme)
            ))),
            None => Ok(()),
        }
    }
}

/// A parameter name for an error text: shown only when it has the shape of every parameter name
/// (lower-case ASCII letters and `_`, at most 32 characters). Anything else may be part of a
/// password whose `?` ended the user info early, so it is described, not shown.
struct ParamName<'a>(&'a str);

impl fmt::Display for ParamName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.0;
        if !name.is_empty()
            && name.len() <= 32
            && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            write!(f, "`{name}`")
        } else {
            write!(
                f,
                "(a name not shown: {} bytes, not a known parameter)",
                name.len()
            )
        }
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Whether `host` (`h`, `h:1`, `[::1]`, `[::1]:1`) carries a port.
fn has_port(host: &str) -> bool {
    match host.rfind(':') {
        None => false,
        // `[::1]` has colons but no port; `[::1]:80` has one.
        Some(i) => !host.starts_with('[') || host[..i].ends_with(']'),
    }
}

/// Checks one `host[:port]` of the host list with the rules every backend shares
/// ([`check_endpoint`](crate::validate::check_endpoint)). The reason does not quote the host:
/// when a password holds an unencoded `/` or `?`, what looks like the host is part of the
/// password.
fn check_host(h: &str) -> std::result::Result<(), &'static str> {
    crate::validate::check_endpoint(h).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        match RegistryUrl::parse(url).and_then(RegistryUrl::finish) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{url}: expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn splits_every_part() {
        let mut u = RegistryUrl::parse(
            " ETCD://a%40b:p%3Aw%2F@h1:1,[::1]:2,[::2],h4/x/%20y/?k=v%26w&d=2s ",
        )
        .unwrap();
        assert_eq!(u.scheme(), "etcd");
        assert_eq!(u.username(), Some("a@b"));
        assert_eq!(u.password().map(Secret::expose), Some("p:w/"));
        assert_eq!(
            u.hosts_with_port(9).unwrap(),
            ["h1:1", "[::1]:2", "[::2]:9", "h4:9"]
        );
        assert_eq!(u.path(), "/x/ y/");
        assert_eq!(u.path_prefix().as_deref(), Some("/x/ y"));
        assert_eq!(u.take("k").as_deref(), Some("v&w"));
        assert_eq!(u.take_duration("d").unwrap(), Some(Duration::from_secs(2)));
        assert!(!format!("{u:?}").contains("p:w/"));
        let t = RegistryUrl::parse("consul://h?token=T0ken").unwrap();
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("T0ken") && shown.contains("token"),
            "{shown}"
        );
        u.finish().unwrap();
        let u = RegistryUrl::parse("memory://").unwrap();
        assert!(u.hosts().is_empty() && u.path_prefix().is_none());
        assert!(u.username().is_none() && u.password().is_none());
    }

    #[test]
    fn port_parameters() {
        let mut u = RegistryUrl::parse("x://h?a=80&b=+80&c=080&d=0&e=65536").unwrap();
        assert_eq!(u.take_port("a").unwrap(), Some(80));
        for k in ["b", "c", "d", "e"] {
            let e = u.take_port(k).unwrap_err().to_string();
            assert!(e.contains(&format!("parameter `{k}`")), "{e}");
        }
    }

    #[test]
    fn typed_parameters() {
        let mut u = RegistryUrl::parse("x://h?n=12&b=true&bad=zz&t=soon").unwrap();
        assert_eq!(u.take_parsed::<usize>("n").unwrap(), Some(12));
        assert_eq!(u.take_parsed::<bool>("b").unwrap(), Some(true));
        assert_eq!(u.take_parsed::<u16>("missing").unwrap(), None);
        let e = u.take_parsed::<u16>("bad").unwrap_err().to_string();
        assert!(e.contains("`bad`") && e.contains("u16"), "{e}");
        assert!(u.take_port("missing").unwrap().is_none());
        let e = u.take_duration("t").unwrap_err().to_string();
        assert!(e.contains("`t`") && e.contains("invalid duration"), "{e}");
        u.finish().unwrap();
    }

    #[test]
    fn malformed_urls_are_clear_errors() {
        assert!(err("etcd://h?colour=blue").contains("unknown parameter `colour`"));
        assert!(err("etcd://h?ttl=1s&ttl=2s").contains("twice"));
        assert!(err("etcd://h?ttl").contains("no value"));
        assert!(err("etcd://h1,,h2").contains("host #2 is empty"));
        assert!(err("etcd://h:99999").contains("invalid port"));
        assert!(err("etcd://h:0").contains("invalid port"));
        assert!(err("etcd://h:x").contains("invalid port"));
        assert!(err("etcd://::1").contains("more than one"));
        assert!(err("etcd://[::1").contains("unclosed"));
        assert!(err("etcd://h#frag").contains("`#` is not allowed"));
        assert!(err("etcd://%ff@h").contains("user name is not valid UTF-8"));
        assert!(err("1tcd://h").contains("malformed scheme"));
        assert_eq!(scheme("ZK://h").unwrap(), "zk");
    }

    #[test]
    fn hosts_and_ports_follow_the_shared_rules() {
        for bad in [
            "etcd://[]:2379",
            "etcd://[zz]:2379",
            "etcd://h%00st:2379",
            "etcd://h\0st:2379",
            "etcd://h\tst:2379",
            "etcd://%68ost:2379",
            "etcd://!ocalhost:2379",
            "etcd://h:+80",
            "etcd://h:080",
            "etcd://h:",
            "etcd://h:65536",
            "etcd://256.0.0.1",
        ] {
            let e = err(bad);
            assert!(e.contains("host #1"), "{bad:?}: {e}");
        }
        let u = RegistryUrl::parse("etcd://a-b.c_d:1,10.0.0.1:65535,[fe80::1]").unwrap();
        assert_eq!(u.hosts(), ["a-b.c_d:1", "10.0.0.1:65535", "[fe80::1]"]);
    }

    #[test]
    fn unencoded_specials_in_a_password_are_rejected_with_a_hint() {
        for (url, hint) in [
            ("etcd://admin:Qz7k/x@h:2379", "%2F"),
            ("etcd://admin:Qz7k?x@h:2379", "%3F"),
            ("etcd://admin:Qz7k#x@h:2379", "%23"),
        ] {
            let e = err(url);
            assert!(e.contains(hint) && !e.contains("Qz7k"), "{url}: {e}");
        }
        // `@` in a password: the user info ends at the last `@` of the authority.
        let u = RegistryUrl::parse("etcd://admin:p@ss@h:2379").unwrap();
        assert_eq!(u.password().map(Secret::expose), Some("p@ss"));
        assert_eq!(u.hosts(), ["h:2379"]);
        // A lone `%` stays as it is; encoded specials decode.
        let u = RegistryUrl::parse("etcd://admin:100%25%2F%3F%23%40x%zz@h").unwrap();
        assert_eq!(u.password().map(Secret::expose), Some("100%/?#@x%zz"));
    }

    #[test]
    fn parameter_names_are_shown_only_when_they_look_like_one() {
        assert!(err("etcd://h?colour=1").contains("unknown parameter `colour`"));
        for url in [
            "etcd:///admin:?Pw7Marker=h",
            "etcd:///admin:?Pw7Marker",
            "etcd://h?Pw7Marker=1&Pw7Marker=2",
            "etcd://h?Pw7Marker=%ff",
        ] {
            let e = err(url);
            assert!(
                !e.contains("Pw7Marker") && e.contains("not shown"),
                "{url}: {e}"
            );
        }
    }

    #[test]
    fn errors_quote_bounded_input() {
        let long = "k".repeat(100_000);
        for url in [
            format!("etcd://h?{long}=1"),
            format!("etcd://h?{long}"),
            format!("etcd://h?watch_buffer={long}"),
            format!("etcd://h?ttl={long}"),
        ] {
            let e = err(&url);
            assert!(e.len() < 400, "{} bytes: {}", e.len(), &e[..100]);
        }
    }

    /// The password (and the URL as a whole) never ends up in an error, whatever the typo.
    #[test]
    fn errors_never_quote_the_password_or_the_url() {
        for url in [
            "etcd:/admin:PASSWORD@h:2379",
            "etcd//admin:PASSWORD@h",
            "admin:PASSWORD@h:2379",
            "etcd:admin:PASSWORD@h:2379/p",
            "et cd://admin:PASSWORD@h",
            "etcd://admin:PASSWORD/x@h:2379",
            "etcd://admin:PASSWORD@h:2379?a",
            "etcd://admin:PASSWORD@h:bad",
            "etcd://admin:PASSWORD%ff@h",
            "etcd://admin:PASSWORD@h#x",
            "etcd://admin:PASSWORD?x@h:2379",
            "etcd://admin:PASSWORD?x=1@h:2379",
            "etcd://admin:1234?x=1@h:2379",
            "etcd://PASSWORD:x@h:0",
        ] {
            let e = err(url);
            assert!(!e.contains("PASSWORD") && !e.contains("1234"), "{url}: {e}");
            assert!(!e.contains("admin"), "{url}: {e}");
            assert!(e.starts_with("registry URL: "), "{url}: {e}");
        }
        // The typical case: an unencoded `/` in the password.
        let e = err("etcd://admin:Qz7k/x@h:2379");
        assert!(!e.contains("Qz7k"), "{e}");
        assert!(e.contains("%2F"), "{e}");
        assert!(err("etcd:/admin:PASSWORD@h:2379").contains("no `scheme://`"));
    }
}
