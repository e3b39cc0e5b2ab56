//! Which id an instance read from Consul gets in waypost.
//!
//! A Consul service ID is unique per agent (per node), not per cluster, and it defaults to the
//! service name: three nodes that each run `web` from the same definition usually all call
//! their instance `web`. Consul itself names an instance by node and service ID (the catalog
//! deregistration takes both; its UI links to `/services/<name>/instances/<node>/<id>`).
//!
//! The rule, applied to the instances of one service name that one read returned (after the
//! filters: prefix, foreign services, the `consul` service):
//!
//! 1. An instance whose service ID is on more than one node is `<node>/<id>`, on every node.
//! 2. An instance waypost did not register whose service ID is the service name (Consul's
//!    default ID, given when the definition names none) is `<node>/<id>` even when it is the
//!    only one, so that a second node starting the same definition adds one instance and does
//!    not rename the first (a watch sees one `Created`, not `Deleted` + two `Created`).
//! 3. Every other instance keeps its service ID: waypost's own registrations (unique ids through
//!    one agent) and any explicit, unique ID keep their ids exactly.
//!
//! An explicit ID that *becomes* shared (the same definition with the same explicit `ID`
//! started on a second node) turns into `<node>/<id>` on both nodes from then on, and back
//! when only one is left; this is the one case where an instance is renamed, and it needs a
//! definition that gives the same explicit ID to several nodes.
//!
//! Where a qualified id is needed, the node name must be usable as an id part (1 to
//! [`MAX_NODE_LEN`] bytes of ASCII letters, digits and `- _ . : @`, so never a `/`); an instance
//! on a node whose name is not is skipped with a warning.

use std::collections::{BTreeMap, HashMap, HashSet};

use tracing::warn;
use waypost_core_types::quote::quoted_up_to;
use waypost_core_types::validate::{validate_key_part, MAX_ID_LEN};
use waypost_core_types::{Error, Result, ServiceInfo};

/// Longest node name accepted in an instance id, in bytes.
pub const MAX_NODE_LEN: usize = 128;

/// One instance as read from `/v1/health/service/:name`.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    /// `Node.Node` ("" when the entry had none).
    pub(crate) node: String,
    /// Whether the node runs a Consul agent (it has a `serfHealth` check); a node without one
    /// was registered through the catalog (an external service).
    pub(crate) agent_node: bool,
    /// `Service.ID`.
    pub(crate) consul_id: String,
    /// Registered by waypost under our prefix.
    pub(crate) ours: bool,
    /// The instance; its `id` is assigned by [`assign_ids`].
    pub(crate) info: ServiceInfo,
}

/// An id as a caller gives it: a service ID, or `<node>/<service ID>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InstanceRef<'a> {
    /// A plain id: the instance listed under it (a service ID of the local agent for writes).
    Plain(&'a str),
    /// The instance with this service ID on this node.
    OnNode {
        /// Node name.
        node: &'a str,
        /// Service ID.
        id: &'a str,
    },
}

impl<'a> InstanceRef<'a> {
    /// Parses and checks an id given by a caller.
    ///
    /// # Errors
    /// [`Error::InvalidInstance`] for an empty or too long part, or a character outside the id
    /// alphabet (the message quotes the value, bounded and escaped).
    pub(crate) fn parse(id: &'a str) -> Result<Self> {
        match id.split_once('/') {
            None => {
                validate_key_part("id", id, MAX_ID_LEN)?;
                Ok(InstanceRef::Plain(id))
            }
            Some((node, rest)) => {
                validate_key_part("node of the id", node, MAX_NODE_LEN)?;
                validate_key_part("id", rest, MAX_ID_LEN)?;
                Ok(InstanceRef::OnNode { node, id: rest })
            }
        }
    }

    /// Whether `listed_id` (the id it was listed under) and `instance` are what this names.
    /// `<node>/<id>` names the instance whether or not it was listed qualified.
    pub(crate) fn matches(&self, listed_id: &str, instance: &Instance) -> bool {
        match *self {
            InstanceRef::Plain(id) => listed_id == id,
            InstanceRef::OnNode { node, id } => instance.node == node && instance.consul_id == id,
        }
    }
}

/// `<node>/<id>`.
pub(crate) fn qualified(node: &str, id: &str) -> String {
    format!("{node}/{id}")
}

/// Gives each instance of service `name` its waypost id (see the module documentation) and
/// keys them by it. Instances that cannot get an id are skipped with a warning.
pub(crate) fn assign_ids(name: &str, read: Vec<Instance>) -> BTreeMap<String, Instance> {
    let mut nodes_of: HashMap<&str, HashSet<&str>> = HashMap::new();
    for i in &read {
        nodes_of
            .entry(i.consul_id.as_str())
            .or_default()
            .insert(i.node.as_str());
    }
    let shared: HashSet<String> = nodes_of
        .into_iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|(id, _)| id.to_owned())
        .collect();
    let mut out = BTreeMap::new();
    for mut i in read {
        let default_id = !i.ours && i.consul_id == i.info.name;
        let id = if shared.contains(&i.consul_id) || default_id {
            if let Err(e) = validate_key_part("node", &i.node, MAX_NODE_LEN) {
                warn!(
                    service = %quoted_up_to(name, 128),
                    id = %quoted_up_to(&i.consul_id, 128),
                    "consul: skipping an instance whose id needs its node, on a node with an unusable name: {e}"
                );
                continue;
            }
            qualified(&i.node, &i.consul_id)
        } else {
            i.consul_id.clone()
        };
        if out.contains_key(&id) {
            warn!(
                service = %quoted_up_to(name, 128),
                id = %quoted_up_to(&id, 400),
                "consul: the answer lists this instance twice; keeping the first"
            );
            continue;
        }
        i.info.id.clone_from(&id);
        out.insert(id, i);
    }
    out
}

/// The error for an id that names an instance of another node's agent.
pub(crate) fn not_ours_to_remove(node: &str, id: &str) -> Error {
    Error::Unsupported(format!(
        "consul: `{}` is registered through the Consul agent of node `{}`; only that agent can \
         remove it (a catalog deregistration would be undone by the agent's anti-entropy sync), \
         so deregister it through that agent",
        quoted_up_to(id, 300),
        quoted_up_to(node, 130)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(node: &str, id: &str, name: &str, ours: bool) -> Instance {
        Instance {
            node: node.into(),
            agent_node: true,
            consul_id: id.into(),
            ours,
            info: ServiceInfo::new(id, name, "10.0.0.1", 80),
        }
    }

    fn ids(m: &BTreeMap<String, Instance>) -> Vec<&str> {
        m.keys().map(String::as_str).collect()
    }

    #[test]
    fn shared_ids_get_their_node_unique_ids_stay_plain() {
        let got = assign_ids(
            "web",
            vec![
                inst("n1", "web-1", "web", false),
                inst("n2", "web-1", "web", false),
                inst("n3", "web-1", "web", false),
                inst("n3", "web-9", "web", false),
                inst("n1", "mine", "web", true),
            ],
        );
        assert_eq!(
            ids(&got),
            ["mine", "n1/web-1", "n2/web-1", "n3/web-1", "web-9"]
        );
        for (k, i) in &got {
            assert_eq!(
                &i.info.id, k,
                "the instance carries the id it is listed under"
            );
        }
    }

    #[test]
    fn consuls_default_id_always_gets_its_node_so_scaling_renames_nothing() {
        let one = assign_ids("web", vec![inst("n1", "web", "web", false)]);
        assert_eq!(ids(&one), ["n1/web"]);
        let two = assign_ids(
            "web",
            vec![
                inst("n1", "web", "web", false),
                inst("n2", "web", "web", false),
            ],
        );
        assert_eq!(ids(&two), ["n1/web", "n2/web"], "n1/web keeps its id");
        // waypost's own registration named like its service keeps its id.
        let ours = assign_ids("web", vec![inst("n1", "web", "web", true)]);
        assert_eq!(ids(&ours), ["web"]);
    }

    #[test]
    fn unusable_node_names_skip_only_the_instances_that_need_them() {
        let huge = "n".repeat(MAX_NODE_LEN + 1);
        let got = assign_ids(
            "web",
            vec![
                inst("", "a", "web", false),
                inst("ok", "a", "web", false),
                inst("bad/node", "a", "web", false),
                inst(&huge, "a", "web", false),
                inst("ctl\u{1b}[2J", "a", "web", false),
                inst("", "unique", "web", false),
                inst("", "web", "web", false),
            ],
        );
        assert_eq!(ids(&got), ["ok/a", "unique"]);
    }

    #[test]
    fn a_duplicated_entry_is_kept_once() {
        let got = assign_ids(
            "web",
            vec![inst("n1", "a", "web", false), inst("n1", "a", "web", false)],
        );
        assert_eq!(ids(&got), ["a"], "one node, one instance");
    }

    #[test]
    fn references_parse_and_match() {
        assert_eq!(
            InstanceRef::parse("web-1").unwrap(),
            InstanceRef::Plain("web-1")
        );
        assert_eq!(
            InstanceRef::parse("node-2/web").unwrap(),
            InstanceRef::OnNode {
                node: "node-2",
                id: "web"
            }
        );
        let long_node = format!("{}/web", "n".repeat(MAX_NODE_LEN + 1));
        let long_id = format!("n/{}", "i".repeat(MAX_ID_LEN + 1));
        for bad in [
            "",
            "/web",
            "node/",
            "a/b/c",
            "a b",
            "n\u{0}/x",
            "n/x\u{7f}",
            long_node.as_str(),
            long_id.as_str(),
        ] {
            let e = InstanceRef::parse(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidInstance(_)), "{bad:?}: {e}");
            assert!(e.to_string().len() < 700, "bounded: {e}");
        }
        let i = inst("n2", "web-1", "web", false);
        let r = InstanceRef::parse("n2/web-1").unwrap();
        assert!(
            r.matches("web-1", &i),
            "node/id names a plainly listed instance too"
        );
        assert!(!InstanceRef::parse("n1/web-1").unwrap().matches("web-1", &i));
        assert!(InstanceRef::Plain("web-1").matches("web-1", &i));
        assert!(!InstanceRef::Plain("web-1").matches("n2/web-1", &i));
    }

    #[test]
    fn the_refusal_names_the_node_and_stays_bounded() {
        let e = not_ours_to_remove(&"n".repeat(10_000), "x\r\ny").to_string();
        assert!(e.contains("anti-entropy") && e.len() < 1200, "{e}");
        assert!(!e.contains('\r'), "{e}");
    }
}
