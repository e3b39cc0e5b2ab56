//! The key layout: `<prefix>/<name>/<id>`, as the Laravel-Go module and go-kratos write it, or
//! go-zero's `<key>/<id>` (no leading `/` at the root).

use waypost_core_types::record::RecordFormat;

/// Builds and parses the keys of one registry prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyLayout {
    /// What comes before `<name>/`: the prefix and a `/`, or nothing (go-zero's keys at the
    /// root of the key space).
    head: String,
}

impl KeyLayout {
    /// A layout under `prefix` (trailing `/` ignored). The empty prefix is the root: keys
    /// `/<name>/<id>`, except for go-zero, whose keys there are `<name>/<id>`.
    pub(crate) fn new(prefix: &str, format: RecordFormat) -> Self {
        let head = if prefix.is_empty() && format == RecordFormat::GoZero {
            String::new()
        } else {
            format!("{}/", prefix.trim_end_matches('/'))
        };
        KeyLayout { head }
    }

    /// `<prefix>/`: the range holding every instance (empty: the whole key space).
    pub(crate) fn all(&self) -> String {
        self.head.clone()
    }

    /// `<prefix>/<name>/`: the range holding one service's instances.
    pub(crate) fn service(&self, name: &str) -> String {
        format!("{}{name}/", self.head)
    }

    /// `<prefix>/<name>/<id>`: one instance.
    pub(crate) fn instance(&self, name: &str, id: &str) -> String {
        format!("{}{name}/{id}", self.head)
    }

    /// `(name, id)` of an instance key under this prefix; `None` for any other key.
    pub(crate) fn parse<'k>(&self, key: &'k [u8]) -> Option<(&'k str, &'k str)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.head.as_str())?;
        let (name, id) = rest.split_once('/')?;
        if name.is_empty() || id.is_empty() || id.contains('/') {
            return None;
        }
        Some((name, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_go() {
        let k = KeyLayout::new("/laravel-go/services/", RecordFormat::LaravelGo);
        assert_eq!(k.all(), "/laravel-go/services/");
        assert_eq!(k.service("user"), "/laravel-go/services/user/");
        assert_eq!(
            k.instance("user", "user-1"),
            "/laravel-go/services/user/user-1"
        );
        assert_eq!(
            k.parse(b"/laravel-go/services/user/user-1"),
            Some(("user", "user-1"))
        );
    }

    #[test]
    fn foreign_keys_do_not_parse() {
        let k = KeyLayout::new("/p", RecordFormat::Kratos);
        for key in [
            &b"/p/user"[..],
            b"/p/user/",
            b"/p//id",
            b"/p/a/b/c",
            b"/px/a/b",
            b"/q/a/b",
            b"/p/a/\xff",
        ] {
            assert_eq!(k.parse(key), None, "{:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn service_prefix_does_not_cover_longer_names() {
        // `user/` must not match `user-admin/...`: the trailing slash keeps ranges apart.
        let k = KeyLayout::new("/p", RecordFormat::LaravelGo);
        assert!(!k
            .instance("user-admin", "x")
            .starts_with(&k.service("user")));
    }

    #[test]
    fn empty_prefix_is_the_root() {
        let k = KeyLayout::new("", RecordFormat::LaravelGo);
        assert_eq!(k.instance("a", "b"), "/a/b");
        assert_eq!(k.parse(b"/a/b"), Some(("a", "b")));
        assert_eq!(k.parse(b"a/b"), None);
        let k = KeyLayout::new("/", RecordFormat::GoZero);
        assert_eq!(k.instance("a", "b"), "/a/b");
    }

    #[test]
    fn go_zero_keys_at_the_root_and_relative() {
        // zeromicro/go-zero core/discov/clients.go makeEtcdKey: `<key>/<id>`, Delimiter '/'.
        let k = KeyLayout::new("", RecordFormat::GoZero);
        assert_eq!(k.all(), "");
        assert_eq!(k.service("user.rpc"), "user.rpc/");
        assert_eq!(
            k.instance("user.rpc", "7587886412946786306"),
            "user.rpc/7587886412946786306"
        );
        assert_eq!(
            k.parse(b"user.rpc/7587886412946786306"),
            Some(("user.rpc", "7587886412946786306"))
        );
        for key in [
            &b"/user.rpc/1"[..],
            b"user.rpc",
            b"user.rpc/",
            b"a/b/c",
            b"/laravel-go/services/a/b",
        ] {
            assert_eq!(k.parse(key), None, "{:?}", String::from_utf8_lossy(key));
        }
        let k = KeyLayout::new("prod", RecordFormat::GoZero);
        assert_eq!(k.instance("user.rpc", "1"), "prod/user.rpc/1");
        assert_eq!(k.parse(b"prod/user.rpc/1"), Some(("user.rpc", "1")));
        assert_eq!(k.parse(b"production/user.rpc/1"), None);
    }
}

/// The first key of the range of keys starting with `prefix`: etcd refuses an empty key in a
/// read, so the whole key space starts at `\0`.
pub(crate) fn range_start(prefix: &str) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    }
}

/// The end of the range holding every key that starts with `prefix` (etcd's `WithPrefix`):
/// the prefix with its last byte below 0xff incremented, or `\0` (the end of the key space).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod range_tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/p/"), b"/p0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
