//! The fake agent's catalog: the local node (a Consul server: it runs an agent and lists the
//! `consul` service), other nodes (with an agent, as servers, or external nodes registered
//! through the catalog, without an agent), services keyed by node and service ID as Consul keys
//! them, TTL checks, and Consul's index model (a global raft index, a per-service-name index,
//! the extinction index and the services-table index).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

pub(crate) const SERF_OUTPUT: &str = "Agent alive and reachable";

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Svc {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) tags: Vec<String>,
    pub(crate) address: String,
    pub(crate) port: i64,
    pub(crate) meta: Option<BTreeMap<String, String>>,
    pub(crate) weights: (i64, i64),
    pub(crate) enable_tag_override: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) node: String,
    pub(crate) svc: Svc,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
    /// The `consul` service of a server node: in the catalog, not in the agent's own services.
    pub(crate) server_entry: bool,
}

/// The service every Consul server registers itself as, and its port (the server RPC port).
pub(crate) const CONSUL_SERVICE: &str = "consul";
const CONSUL_SERVER_PORT: i64 = 8300;

#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub(crate) node: String,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) notes: String,
    pub(crate) service_id: String,
    pub(crate) status: String,
    /// Output as the agent holds it.
    pub(crate) output: String,
    /// Output as the catalog shows it (synced only with status changes).
    pub(crate) catalog_output: String,
    pub(crate) ttl: Option<Duration>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) deregister_after: Option<Duration>,
    pub(crate) critical_since: Option<Instant>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) id: String,
    /// Runs a Consul agent: has a `serfHealth` check. External nodes (registered through the
    /// catalog) have none.
    pub(crate) agent: bool,
}

/// A node UUID derived from its name (stable, distinct for distinct names in practice).
pub(crate) fn node_uuid(node: &str) -> String {
    let h = node
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("5f8a0ad0-2c1b-4d0e-9d5e-{:012}", h % 1_000_000_000_000)
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) index: u64,
    pub(crate) local_node: String,
    pub(crate) nodes: BTreeMap<String, Node>,
    /// (node, service id) → entry.
    pub(crate) services: BTreeMap<(String, String), Entry>,
    /// (node, check id) → check.
    pub(crate) checks: BTreeMap<(String, String), Check>,
    pub(crate) name_index: HashMap<String, u64>,
    pub(crate) extinction: u64,
    pub(crate) services_index: u64,
}

impl State {
    pub(crate) fn new(node: &str, address: &str) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            node.to_owned(),
            Node {
                name: node.to_owned(),
                address: address.to_owned(),
                id: "5f8a0ad0-2c1b-4d0e-9d5e-000000000001".to_owned(),
                agent: true,
            },
        );
        let mut st = State {
            index: 10,
            local_node: node.to_owned(),
            nodes,
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            name_index: HashMap::new(),
            extinction: 0,
            services_index: 10,
        };
        st.insert_server_entry(node, 9);
        st.name_index.insert(CONSUL_SERVICE.into(), 9);
        st
    }

    /// Lists node `node` as a Consul server: the `consul` service (ID `consul`, port 8300,
    /// empty address, no service check), as every server registers itself.
    pub(crate) fn insert_server_entry(&mut self, node: &str, index: u64) {
        let svc = Svc {
            id: CONSUL_SERVICE.into(),
            name: CONSUL_SERVICE.into(),
            tags: Vec::new(),
            address: String::new(),
            port: CONSUL_SERVER_PORT,
            meta: Some(BTreeMap::from([("raft_version".into(), "3".into())])),
            weights: (1, 1),
            enable_tag_override: false,
        };
        self.services.insert(
            (node.to_owned(), CONSUL_SERVICE.to_owned()),
            Entry {
                node: node.to_owned(),
                svc,
                create_index: index,
                modify_index: index,
                server_entry: true,
            },
        );
    }

    /// Adds node `node` if it is new; returns whether it was.
    pub(crate) fn ensure_node(&mut self, node: &str, address: &str, agent: bool) -> bool {
        if self.nodes.contains_key(node) {
            return false;
        }
        self.nodes.insert(
            node.to_owned(),
            Node {
                name: node.to_owned(),
                address: address.to_owned(),
                id: node_uuid(node),
                agent,
            },
        );
        true
    }

    /// Removes the instance `id` of `node` and its checks, as `PUT /v1/catalog/deregister`
    /// with `ServiceID` does; `None` when there is none.
    pub(crate) fn remove_service(&mut self, node: &str, id: &str) -> Option<Entry> {
        let e = self.services.remove(&(node.to_owned(), id.to_owned()))?;
        self.checks
            .retain(|(n, _), c| !(n == node && c.service_id == id));
        self.after_removal(&e.svc.name);
        Some(e)
    }

    /// Records an observable change of service `name`.
    pub(crate) fn bump(&mut self, name: &str, services_table: bool) -> u64 {
        self.index += 1;
        self.name_index
            .insert(name.to_ascii_lowercase(), self.index);
        if services_table {
            self.services_index = self.index;
        }
        self.index
    }

    /// After removing an instance of `name`: the extinction index when it was the last.
    pub(crate) fn after_removal(&mut self, name: &str) {
        let idx = self.bump(name, true);
        if self.instances_of(name).is_empty() {
            self.extinction = idx;
            self.name_index.remove(&name.to_ascii_lowercase());
        }
    }

    pub(crate) fn instances_of(&self, name: &str) -> Vec<&Entry> {
        let lower = name.to_ascii_lowercase();
        self.services
            .values()
            .filter(|e| e.svc.name.to_ascii_lowercase() == lower)
            .collect()
    }

    /// `X-Consul-Index` of `/v1/health/service/:name`.
    pub(crate) fn health_index(&self, name: &str) -> u64 {
        let idx = if self.instances_of(name).is_empty() {
            if self.extinction > 0 {
                self.extinction
            } else {
                self.index
            }
        } else {
            self.name_index
                .get(&name.to_ascii_lowercase())
                .copied()
                .unwrap_or(self.index)
        };
        idx.max(1)
    }

    /// A service of the local agent (the server's own `consul` entry is not one).
    pub(crate) fn local(&self, id: &str) -> Option<&Entry> {
        self.services
            .get(&(self.local_node.clone(), id.to_owned()))
            .filter(|e| !e.server_entry)
    }

    pub(crate) fn remove_local_service(&mut self, id: &str) -> Option<Entry> {
        self.local(id)?;
        let node = self.local_node.clone();
        self.remove_service(&node, id)
    }

    fn node_json(&self, node: &str) -> Value {
        let n = &self.nodes[node];
        json!({
            "ID": n.id, "Node": n.name, "Address": n.address, "Datacenter": "dc1",
            "TaggedAddresses": {"lan": n.address, "lan_ipv4": n.address,
                                "wan": n.address, "wan_ipv4": n.address},
            "Meta": {"consul-network-segment": "", "consul-version": "1.18.0"},
            "CreateIndex": 9, "ModifyIndex": 9
        })
    }

    pub(crate) fn service_json(e: &Entry) -> Value {
        let s = &e.svc;
        let mut m = Map::new();
        m.insert("ID".into(), json!(s.id));
        m.insert("Service".into(), json!(s.name));
        m.insert("Tags".into(), json!(s.tags));
        m.insert("Address".into(), json!(s.address));
        if s.address.parse::<std::net::Ipv4Addr>().is_ok() {
            let ta = json!({"Address": s.address, "Port": s.port});
            m.insert(
                "TaggedAddresses".into(),
                json!({"lan_ipv4": ta, "wan_ipv4": ta}),
            );
        }
        m.insert("Meta".into(), json!(s.meta));
        if s.port != 0 {
            m.insert("Port".into(), json!(s.port));
        }
        m.insert(
            "Weights".into(),
            json!({"Passing": s.weights.0, "Warning": s.weights.1}),
        );
        m.insert("EnableTagOverride".into(), json!(s.enable_tag_override));
        m.insert(
            "Proxy".into(),
            json!({"Mode": "", "MeshGateway": {}, "Expose": {}}),
        );
        m.insert("Connect".into(), json!({}));
        m.insert("PeerName".into(), json!(""));
        m.insert("CreateIndex".into(), json!(e.create_index));
        m.insert("ModifyIndex".into(), json!(e.modify_index));
        Value::Object(m)
    }

    fn check_json(&self, c: &Check) -> Value {
        let (sname, stags) = if c.service_id.is_empty() {
            (String::new(), Vec::new())
        } else {
            self.services
                .get(&(c.node.clone(), c.service_id.clone()))
                .map(|e| (e.svc.name.clone(), e.svc.tags.clone()))
                .unwrap_or_default()
        };
        json!({
            "Node": c.node, "CheckID": c.id, "Name": c.name, "Status": c.status,
            "Notes": c.notes, "Output": c.catalog_output, "ServiceID": c.service_id,
            "ServiceName": sname, "ServiceTags": stags,
            "Type": if c.ttl.is_some() { "ttl" } else { "" },
            "Interval": "", "Timeout": "", "ExposedPort": 0, "Definition": {},
            "CreateIndex": c.create_index, "ModifyIndex": c.modify_index
        })
    }

    fn serf_json(node: &str) -> Value {
        json!({
            "Node": node, "CheckID": "serfHealth", "Name": "Serf Health Status",
            "Status": "passing", "Notes": "", "Output": SERF_OUTPUT, "ServiceID": "",
            "ServiceName": "", "ServiceTags": [], "Type": "", "Interval": "", "Timeout": "",
            "ExposedPort": 0, "Definition": {}, "CreateIndex": 9, "ModifyIndex": 9
        })
    }

    /// The body of `/v1/health/service/:name`.
    pub(crate) fn health_entries(&self, name: &str, passing: bool, tags: &[String]) -> Value {
        let mut out = Vec::new();
        for e in self.instances_of(name) {
            if !tags
                .iter()
                .all(|t| e.svc.tags.iter().any(|own| own.eq_ignore_ascii_case(t)))
            {
                continue;
            }
            let mut checks = Vec::new();
            if self.nodes.get(&e.node).is_some_and(|n| n.agent) {
                checks.push(Self::serf_json(&e.node));
            }
            let mut statuses = Vec::new();
            for c in self
                .checks
                .values()
                .filter(|c| c.node == e.node && c.service_id == e.svc.id)
            {
                statuses.push(c.status.clone());
                checks.push(self.check_json(c));
            }
            if passing && statuses.iter().any(|s| s != "passing") {
                continue;
            }
            out.push(json!({
                "Node": self.node_json(&e.node),
                "Service": Self::service_json(e),
                "Checks": checks,
            }));
        }
        Value::Array(out)
    }

    /// The body of `/v1/catalog/service/:name`: flat `ServiceNode` objects, one per instance,
    /// with the node's name in `Node` and the node's UUID in `ID` (no health information).
    pub(crate) fn catalog_service_entries(&self, name: &str, tags: &[String]) -> Value {
        let mut out = Vec::new();
        for e in self.instances_of(name) {
            if !tags
                .iter()
                .all(|t| e.svc.tags.iter().any(|own| own.eq_ignore_ascii_case(t)))
            {
                continue;
            }
            let n = &self.nodes[&e.node];
            let s = Self::service_json(e);
            let mut m = Map::new();
            m.insert("ID".into(), json!(n.id));
            m.insert("Node".into(), json!(n.name));
            m.insert("Address".into(), json!(n.address));
            m.insert("Datacenter".into(), json!("dc1"));
            m.insert(
                "TaggedAddresses".into(),
                json!({"lan": n.address, "lan_ipv4": n.address, "wan": n.address, "wan_ipv4": n.address}),
            );
            m.insert(
                "NodeMeta".into(),
                json!({"consul-network-segment": "", "consul-version": "1.18.0"}),
            );
            m.insert("ServiceKind".into(), json!(""));
            m.insert("ServiceID".into(), s["ID"].clone());
            m.insert("ServiceName".into(), s["Service"].clone());
            m.insert("ServiceTags".into(), s["Tags"].clone());
            m.insert("ServiceAddress".into(), s["Address"].clone());
            if let Some(ta) = s.get("TaggedAddresses") {
                m.insert("ServiceTaggedAddresses".into(), ta.clone());
            }
            m.insert("ServiceWeights".into(), s["Weights"].clone());
            m.insert(
                "ServiceMeta".into(),
                json!(e.svc.meta.clone().unwrap_or_default()),
            );
            m.insert("ServicePort".into(), json!(e.svc.port));
            m.insert("ServiceSocketPath".into(), json!(""));
            m.insert(
                "ServiceEnableTagOverride".into(),
                json!(e.svc.enable_tag_override),
            );
            m.insert("ServiceProxy".into(), s["Proxy"].clone());
            m.insert("ServiceConnect".into(), json!({}));
            m.insert("ServiceLocality".into(), Value::Null);
            m.insert("CreateIndex".into(), json!(e.create_index));
            m.insert("ModifyIndex".into(), json!(e.modify_index));
            out.push(Value::Object(m));
        }
        Value::Array(out)
    }

    /// The body of `/v1/catalog/services`.
    pub(crate) fn catalog_services(&self) -> Value {
        let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for e in self.services.values() {
            names
                .entry(e.svc.name.clone())
                .or_default()
                .extend(e.svc.tags.iter().cloned());
        }
        json!(names)
    }

    /// `AgentService` JSON of a local service.
    pub(crate) fn agent_service_json(e: &Entry) -> Value {
        let s = &e.svc;
        json!({
            "ID": s.id, "Service": s.name, "Tags": s.tags,
            "Meta": s.meta.clone().unwrap_or_default(), "Port": s.port, "Address": s.address,
            "Weights": {"Passing": s.weights.0, "Warning": s.weights.1},
            "EnableTagOverride": s.enable_tag_override, "Datacenter": "dc1"
        })
    }

    /// Sets a check's status as a TTL update does; returns whether the catalog changed.
    pub(crate) fn update_check(
        &mut self,
        key: &(String, String),
        status: &str,
        output: &str,
        now: Instant,
    ) -> bool {
        let Some(c) = self.checks.get_mut(key) else {
            return false;
        };
        if let Some(ttl) = c.ttl {
            c.deadline = Some(now + ttl);
        }
        if status == "critical" {
            if c.critical_since.is_none() {
                c.critical_since = Some(now);
            }
        } else {
            c.critical_since = None;
        }
        c.output = output.to_owned();
        if c.status == status {
            // Same status: the catalog's output syncs lazily; no index change.
            return false;
        }
        c.status = status.to_owned();
        c.catalog_output = output.to_owned();
        let service_id = c.service_id.clone();
        let node = c.node.clone();
        let name = self
            .services
            .get(&(node, service_id))
            .map(|e| e.svc.name.clone())
            .unwrap_or_default();
        let idx = self.bump(&name, false);
        if let Some(c) = self.checks.get_mut(key) {
            c.modify_index = idx;
        }
        true
    }

    /// Expires TTL checks; returns whether anything changed.
    pub(crate) fn expire_ttls(&mut self, now: Instant) -> bool {
        let expired: Vec<((String, String), String)> = self
            .checks
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, c)| {
                let out = if c.output.is_empty() {
                    "TTL expired".to_owned()
                } else {
                    format!(
                        "TTL expired (last output before timeout follows): {}",
                        c.output
                    )
                };
                (k.clone(), out)
            })
            .collect();
        let mut changed = false;
        for (k, out) in expired {
            if let Some(c) = self.checks.get_mut(&k) {
                c.deadline = None;
                let was = c.status.clone();
                c.status = "critical".into();
                c.output = out.clone();
                c.catalog_output = out;
                if c.critical_since.is_none() {
                    c.critical_since = Some(now);
                }
                if was != "critical" {
                    let sid = c.service_id.clone();
                    let node = c.node.clone();
                    let name = self
                        .services
                        .get(&(node, sid))
                        .map(|e| e.svc.name.clone())
                        .unwrap_or_default();
                    let idx = self.bump(&name, false);
                    if let Some(c) = self.checks.get_mut(&k) {
                        c.modify_index = idx;
                    }
                    changed = true;
                }
            }
        }
        changed
    }

    /// Removes services whose DeregisterCriticalServiceAfter check stayed critical too long.
    pub(crate) fn reap(&mut self, now: Instant, min_after: Duration) -> Vec<String> {
        let victims: BTreeSet<String> = self
            .checks
            .values()
            .filter(|c| c.node == self.local_node && !c.service_id.is_empty())
            .filter_map(|c| {
                let after = c.deregister_after?.max(min_after);
                let since = c.critical_since?;
                (now.duration_since(since) > after).then(|| c.service_id.clone())
            })
            .collect();
        let mut removed = Vec::new();
        for id in victims {
            if self.remove_local_service(&id).is_some() {
                removed.push(id);
            }
        }
        removed
    }
}
