//! The znode layout: `<prefix>/<name>/<id>`.

use waypost_core_types::validate::{validate_key_part, MAX_ID_LEN, MAX_NAME_LEN};

/// Checks an absolute znode path (`/a/b`): starts with `/`, no empty, `.` or `..` segment, no
/// trailing `/` (except the root itself), no control characters, not under `/zookeeper`.
pub(crate) fn validate_znode_path(what: &str, path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "{what} `{}` must start with `/`",
            path.escape_debug()
        ));
    }
    if path == "/" {
        return Ok(());
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(format!(
                "{what} `{}` has an empty segment or a trailing `/`",
                path.escape_debug()
            ));
        }
        if segment == "." || segment == ".." {
            return Err(format!(
                "{what} `{}` must not contain `{segment}`",
                path.escape_debug()
            ));
        }
        if segment
            .chars()
            .any(|c| c.is_control() || c == '\u{fffe}' || c == '\u{ffff}')
        {
            return Err(format!(
                "{what} `{}` contains a control character",
                path.escape_debug()
            ));
        }
    }
    if path == "/zookeeper" || path.starts_with("/zookeeper/") {
        return Err(format!(
            "{what} `{path}` lies in ZooKeeper's reserved `/zookeeper` tree"
        ));
    }
    Ok(())
}

/// Where a znode under the prefix sits in the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place<'a> {
    /// The prefix itself.
    Prefix,
    /// A service directory `<prefix>/<name>`.
    Service(&'a str),
    /// An instance `<prefix>/<name>/<id>`.
    Instance { name: &'a str, id: &'a str },
    /// Outside the prefix, deeper than an instance, or with a name or id we would never write.
    Foreign,
}

/// The paths of one registry (relative to its chroot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Paths {
    prefix: String,
}

impl Paths {
    /// Paths under `prefix` (already validated; a trailing `/` is dropped).
    pub(crate) fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_end_matches('/');
        Paths {
            prefix: if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.into()
            },
        }
    }

    /// The prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/<name>`.
    pub(crate) fn service(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// `<prefix>/<name>/<id>`.
    pub(crate) fn instance(&self, name: &str, id: &str) -> String {
        format!("{}/{name}/{id}", self.prefix)
    }

    /// Classifies a path.
    pub(crate) fn place<'a>(&self, path: &'a str) -> Place<'a> {
        if path == self.prefix {
            return Place::Prefix;
        }
        let Some(rest) = path
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return Place::Foreign;
        };
        let mut parts = rest.split('/');
        let name = parts.next().unwrap_or_default();
        if validate_key_part("name", name, MAX_NAME_LEN).is_err() {
            return Place::Foreign;
        }
        match (parts.next(), parts.next()) {
            (None, _) => Place::Service(name),
            (Some(id), None) if validate_key_part("id", id, MAX_ID_LEN).is_ok() => {
                Place::Instance { name, id }
            }
            _ => Place::Foreign,
        }
    }
}

/// Every ancestor of `path` and the path itself, shortest first (`/a/b` → `/a`, `/a/b`).
pub(crate) fn ancestors_and_self(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for (i, c) in path.char_indices().skip(1) {
        if c == '/' {
            out.push(&path[..i]);
        }
    }
    if path.len() > 1 {
        out.push(path);
    }
    out
}

/// The parent of a path (`/a/b` → `/a`).
pub(crate) fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = Paths::new("/laravel-go/services");
        assert_eq!(p.prefix(), "/laravel-go/services");
        assert_eq!(p.service("user"), "/laravel-go/services/user");
        assert_eq!(p.instance("user", "u-1"), "/laravel-go/services/user/u-1");
        assert_eq!(Paths::new("/a/").prefix(), "/a");
    }

    #[test]
    fn classifies_paths() {
        let p = Paths::new("/laravel-go/services");
        assert_eq!(p.place("/laravel-go/services"), Place::Prefix);
        assert_eq!(p.place("/laravel-go/services/user"), Place::Service("user"));
        assert_eq!(
            p.place("/laravel-go/services/user/u-1"),
            Place::Instance {
                name: "user",
                id: "u-1"
            }
        );
        assert_eq!(p.place("/laravel-go/services/user/u-1/x"), Place::Foreign);
        assert_eq!(p.place("/laravel-go/servicesX/user"), Place::Foreign);
        assert_eq!(p.place("/other"), Place::Foreign);
        assert_eq!(p.place("/laravel-go/services/bad name"), Place::Foreign);
        assert_eq!(p.place("/laravel-go/services/user/bad id"), Place::Foreign);
        assert_eq!(p.place("/laravel-go/services//x"), Place::Foreign);
    }

    #[test]
    fn validates_znode_paths() {
        for ok in [
            "/",
            "/a",
            "/a/b-c/d_e",
            "/laravel-go/services",
            "/zookeeper2",
        ] {
            validate_znode_path("p", ok).unwrap();
        }
        for bad in [
            "",
            "a",
            "/a/",
            "//a",
            "/a//b",
            "/./a",
            "/a/..",
            "/a\u{1}",
            "/zookeeper",
            "/zookeeper/q",
        ] {
            assert!(validate_znode_path("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ancestors() {
        assert_eq!(ancestors_and_self("/a/b/c"), vec!["/a", "/a/b", "/a/b/c"]);
        assert_eq!(ancestors_and_self("/a"), vec!["/a"]);
        assert!(ancestors_and_self("/").is_empty());
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
    }
}
