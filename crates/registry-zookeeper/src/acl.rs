//! ACLs of the nodes we create, and the explanation of a denied write.

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

    /// The ACL entries as `(permission, scheme, id)`.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> Vec<(Permission, String, String)> {
        self.acls()
            .iter()
            .map(|a| (a.permission(), a.scheme().to_owned(), a.id().to_owned()))
            .collect()
    }
}

/// Explains why a session authenticated as digest `user` may not create nodes under a node with
/// the ACL `acl` (`(permission, scheme, id)` entries). Password digests are never printed.
pub(crate) fn explain_denial(acl: &[(Permission, String, String)], user: &str) -> String {
    let creators: Vec<&(Permission, String, String)> = acl
        .iter()
        .filter(|(p, _, _)| p.has(Permission::CREATE))
        .collect();
    let same_user = creators
        .iter()
        .any(|(_, scheme, id)| scheme == "digest" && id.split(':').next() == Some(user));
    if same_user {
        return format!(
            "the password given for digest user `{user}` does not match the one that owns it"
        );
    }
    let owners: Vec<String> = creators
        .iter()
        .map(|(_, scheme, id)| match scheme.as_str() {
            "digest" => format!("digest:{}", id.split(':').next().unwrap_or_default()),
            _ => format!("{scheme}:{id}"),
        })
        .collect();
    format!(
        "digest user `{user}` is not among the identities that may create there [{}]",
        owners.join(", ")
    )
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
    fn explains_denials_without_digests() {
        let other_pw = vec![
            entry(Permission::READ, "world", "anyone"),
            entry(Permission::ALL, "digest", "alice:HASH2"),
        ];
        let m = explain_denial(&other_pw, "alice");
        assert!(m.contains("does not match"), "{m}");
        assert!(!m.contains("HASH"), "digests must not be printed: {m}");
        let bobs = vec![
            entry(Permission::READ, "world", "anyone"),
            entry(Permission::ALL, "digest", "bob:HASH3"),
        ];
        let m = explain_denial(&bobs, "alice");
        assert!(m.contains("[digest:bob]") && !m.contains("HASH"), "{m}");
        // A READ-only entry for alice does not count as ownership.
        let read_only = vec![entry(Permission::READ, "digest", "alice:HASH1")];
        assert!(!explain_denial(&read_only, "alice").contains("does not match"));
    }
}
