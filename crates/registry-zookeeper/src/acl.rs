//! ACLs of the nodes we create, and a check of our permission on the prefix.

use zookeeper_client::{Acl, Acls, CreateMode, CreateOptions, Permission};

/// With digest credentials: anyone may read, only the creator's credentials may change.
static READ_ANYONE_ALL_CREATOR: [Acl; 2] = [
    Acl::new_const(Permission::READ, "world", "anyone"),
    Acl::new_const(Permission::ALL, "auth", ""),
];

/// Which ACL our nodes get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AclPolicy {
    authenticated: bool,
}

impl AclPolicy {
    /// The policy for a session with (`true`) or without digest credentials.
    pub(crate) fn new(authenticated: bool) -> Self {
        AclPolicy { authenticated }
    }

    fn acls(&self) -> Acls<'static> {
        if self.authenticated {
            Acls::new(&READ_ANYONE_ALL_CREATOR)
        } else {
            Acls::anyone_all()
        }
    }

    /// Options for persistent parent nodes.
    pub(crate) fn persistent(&self) -> CreateOptions<'static> {
        CreateMode::Persistent.with_acls(self.acls())
    }

    /// Options for ephemeral instance nodes.
    pub(crate) fn ephemeral(&self) -> CreateOptions<'static> {
        CreateMode::Ephemeral.with_acls(self.acls())
    }

    /// The ACL entries as `(permission, scheme, id)`, for tests and messages.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> Vec<(Permission, String, String)> {
        self.acls()
            .iter()
            .map(|a| (a.permission(), a.scheme().to_owned(), a.id().to_owned()))
            .collect()
    }
}

/// What an ACL says about one permission for our identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// An entry grants it to anyone or to one of our identities.
    Granted,
    /// An entry uses a scheme we cannot evaluate here (ip ranges, sasl, x509): let the server
    /// decide.
    Unknown,
    /// No entry grants it; the text explains what we found.
    Denied(String),
}

/// Whether `acl` grants `perm` to a session with the identities `me` (`(scheme, id)` pairs as
/// the server's `whoami` reports them), where `user` is our digest user, if any.
pub(crate) fn check(
    acl: &[(Permission, String, String)],
    me: &[(String, String)],
    user: Option<&str>,
    perm: Permission,
) -> Verdict {
    let mut unknown = false;
    for (p, scheme, id) in acl {
        if !p.has(perm) {
            continue;
        }
        if scheme == "world" && id == "anyone" {
            return Verdict::Granted;
        }
        if me.iter().any(|(s, i)| s == scheme && i == id) {
            return Verdict::Granted;
        }
        if !matches!(scheme.as_str(), "world" | "digest" | "auth") {
            unknown = true;
        }
    }
    if unknown {
        return Verdict::Unknown;
    }
    let owners: Vec<String> = acl
        .iter()
        .filter(|(p, _, _)| p.has(perm))
        .map(|(_, scheme, id)| match scheme.as_str() {
            // Never print password digests.
            "digest" => format!("digest:{}", id.split(':').next().unwrap_or_default()),
            _ => format!("{scheme}:{id}"),
        })
        .collect();
    let same_user_other_password = user.is_some_and(|u| {
        acl.iter().any(|(p, scheme, id)| {
            p.has(perm) && scheme == "digest" && id.split(':').next() == Some(u)
        })
    });
    let reason = match user {
        Some(u) if same_user_other_password => {
            format!("the password given for digest user `{u}` does not match the one that owns it")
        }
        Some(u) => format!(
            "digest user `{u}` is not among its writers [{}]",
            owners.join(", ")
        ),
        None => format!(
            "it is writable only by [{}] and no credentials are configured",
            owners.join(", ")
        ),
    };
    Verdict::Denied(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: Permission, s: &str, i: &str) -> (Permission, String, String) {
        (p, s.into(), i.into())
    }

    #[test]
    fn node_acls() {
        let open = AclPolicy::new(false).entries();
        assert_eq!(open, vec![entry(Permission::ALL, "world", "anyone")]);
        let authed = AclPolicy::new(true).entries();
        assert_eq!(
            authed,
            vec![
                entry(Permission::READ, "world", "anyone"),
                entry(Permission::ALL, "auth", "")
            ]
        );
    }

    #[test]
    fn permission_check() {
        let me = vec![
            ("ip".to_string(), "127.0.0.1".to_string()),
            ("digest".to_string(), "alice:HASH1".to_string()),
        ];
        let open = vec![entry(Permission::ALL, "world", "anyone")];
        assert_eq!(
            check(&open, &me, Some("alice"), Permission::CREATE),
            Verdict::Granted
        );
        let mine = vec![
            entry(Permission::READ, "world", "anyone"),
            entry(Permission::ALL, "digest", "alice:HASH1"),
        ];
        assert_eq!(
            check(&mine, &me, Some("alice"), Permission::CREATE),
            Verdict::Granted
        );
        let other_pw = vec![
            entry(Permission::READ, "world", "anyone"),
            entry(Permission::ALL, "digest", "alice:HASH2"),
        ];
        match check(&other_pw, &me, Some("alice"), Permission::CREATE) {
            Verdict::Denied(m) => {
                assert!(m.contains("does not match"), "{m}");
                assert!(!m.contains("HASH"), "digests must not be printed: {m}");
            }
            v => panic!("{v:?}"),
        }
        let bobs = vec![entry(Permission::ALL, "digest", "bob:HASH3")];
        match check(&bobs, &me, Some("alice"), Permission::CREATE) {
            Verdict::Denied(m) => assert!(m.contains("digest:bob") && !m.contains("HASH"), "{m}"),
            v => panic!("{v:?}"),
        }
        match check(&bobs, &[], None, Permission::CREATE) {
            Verdict::Denied(m) => assert!(m.contains("no credentials"), "{m}"),
            v => panic!("{v:?}"),
        }
        let by_ip = vec![entry(Permission::ALL, "ip", "10.0.0.0/8")];
        assert_eq!(
            check(&by_ip, &me, None, Permission::CREATE),
            Verdict::Unknown
        );
        let read_only = vec![entry(Permission::READ, "world", "anyone")];
        assert!(matches!(
            check(&read_only, &me, Some("alice"), Permission::CREATE),
            Verdict::Denied(_)
        ));
    }
}
