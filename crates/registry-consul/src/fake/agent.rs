//! What the agent does with a decoded request: register a service with its TTL checks,
//! deregister it, update a check; and services of other nodes put into the catalog by tests.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

use super::acl::{denied, Caller};
use super::decode;
use super::query::Query;
use super::respond::{ok_empty, text, Resp};
use super::state::{Check, Entry, Svc};
use super::Shared;

pub(crate) fn register(shared: &Arc<Shared>, q: &Query, caller: &Caller, body: &Bytes) -> Resp {
    let (svc, specs) = match decode::registration(body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if *caller == Caller::Anonymous {
        return denied("service:write", &svc.name);
    }
    let replace = matches!(q.get("replace-existing-checks"), Some("") | Some("true"));
    let now = Instant::now();
    {
        let mut st = shared.state.lock();
        let node = st.local_node.clone();
        let key = (node.clone(), svc.id.clone());
        let old = st.services.get(&key).cloned();
        let def_changed = old.as_ref().map(|o| o.svc != svc).unwrap_or(true);
        let n = specs.len();
        let mut new_ids = Vec::new();
        let mut checks_changed = false;
        for (i, spec) in specs.into_iter().enumerate() {
            let cid = spec.id.clone().unwrap_or_else(|| {
                if n == 1 {
                    format!("service:{}", svc.id)
                } else {
                    format!("service:{}:{}", svc.id, i + 1)
                }
            });
            new_ids.push(cid.clone());
            let ckey = (node.clone(), cid.clone());
            let name = spec
                .name
                .clone()
                .unwrap_or_else(|| format!("Service '{}' check", svc.name));
            match st.checks.get_mut(&ckey) {
                Some(c) => {
                    // Re-registration keeps status and output; the TTL restarts.
                    c.deadline = Some(now + spec.ttl);
                    if c.name != name
                        || c.ttl != Some(spec.ttl)
                        || c.deregister_after != spec.deregister_after
                        || c.notes != spec.notes
                    {
                        checks_changed = true;
                    }
                    c.name = name;
                    c.notes = spec.notes;
                    c.ttl = Some(spec.ttl);
                    c.deregister_after = spec.deregister_after;
                }
                None => {
                    checks_changed = true;
                    st.checks.insert(
                        ckey,
                        Check {
                            node: node.clone(),
                            id: cid,
                            name,
                            notes: spec.notes,
                            service_id: svc.id.clone(),
                            status: spec.status.unwrap_or_else(|| "critical".into()),
                            output: String::new(),
                            catalog_output: String::new(),
                            ttl: Some(spec.ttl),
                            deadline: Some(now + spec.ttl),
                            deregister_after: spec.deregister_after,
                            critical_since: None,
                            create_index: 0,
                            modify_index: 0,
                        },
                    );
                }
            }
        }
        if replace {
            let before = st.checks.len();
            st.checks.retain(|(n, id), c| {
                !(n == &node && c.service_id == svc.id && !new_ids.contains(id))
            });
            checks_changed |= st.checks.len() != before;
        }
        if def_changed || checks_changed {
            let idx = st.bump(&svc.name, def_changed);
            if let Some(o) = &old {
                if !o.svc.name.eq_ignore_ascii_case(&svc.name) {
                    st.bump(&o.svc.name, true);
                }
            }
            for c in st.checks.values_mut() {
                if c.node == node && c.service_id == svc.id && c.create_index == 0 {
                    c.create_index = idx;
                    c.modify_index = idx;
                }
            }
            let create_index = old.as_ref().map(|o| o.create_index).unwrap_or(idx);
            let modify_index = if def_changed {
                idx
            } else {
                old.as_ref().map(|o| o.modify_index).unwrap_or(idx)
            };
            st.services.insert(
                key,
                Entry {
                    node: node.clone(),
                    svc,
                    create_index,
                    modify_index,
                    server_entry: false,
                },
            );
        }
    }
    shared.notify();
    ok_empty()
}

pub(crate) fn deregister(shared: &Arc<Shared>, caller: &Caller, id: &str) -> Resp {
    {
        let mut st = shared.state.lock();
        let Some(e) = st.local(id) else {
            return text(
                404,
                format!("Unknown service ID \"{id}\". Ensure that the service ID is passed, not the service name."),
            );
        };
        if *caller == Caller::Anonymous {
            return denied("service:write", &e.svc.name);
        }
        st.remove_local_service(id);
    }
    shared.notify();
    ok_empty()
}

/// `PUT /v1/catalog/deregister`: removes one service (`ServiceID`), one check (`CheckID`) or
/// the whole node with its services, straight from the catalog. Removing what is not there
/// changes nothing and still answers `true`, as Consul does. The fake has no anti-entropy: a
/// service of the local agent removed this way stays removed (Consul's agent would sync it back).
pub(crate) fn catalog_deregister(shared: &Arc<Shared>, caller: &Caller, body: &Bytes) -> Resp {
    let req = match decode::catalog_deregistration(body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if *caller == Caller::Anonymous {
        return denied("node:write", &req.node);
    }
    let changed = {
        let mut st = shared.state.lock();
        match (&req.service_id, &req.check_id) {
            (Some(id), _) => st.remove_service(&req.node, id).is_some(),
            (None, Some(check)) => {
                let key = (req.node.clone(), check.clone());
                match st.checks.remove(&key) {
                    Some(c) => {
                        let name = st
                            .services
                            .get(&(req.node.clone(), c.service_id.clone()))
                            .map(|e| e.svc.name.clone())
                            .unwrap_or_default();
                        st.bump(&name, false);
                        true
                    }
                    None => false,
                }
            }
            (None, None) => {
                let ids: Vec<String> = st
                    .services
                    .keys()
                    .filter(|(n, _)| n == &req.node)
                    .map(|(_, id)| id.clone())
                    .collect();
                for id in &ids {
                    st.remove_service(&req.node, id);
                }
                st.checks.retain(|(n, _), _| n != &req.node);
                let removed_node =
                    req.node != st.local_node && st.nodes.remove(&req.node).is_some();
                !ids.is_empty() || removed_node
            }
        }
    };
    if changed {
        shared.notify();
    }
    super::respond::json_resp(&Value::Bool(true))
}

pub(crate) fn check_update(
    shared: &Arc<Shared>,
    caller: &Caller,
    id: &str,
    status: &str,
    output: &str,
) -> Resp {
    let changed = {
        let mut st = shared.state.lock();
        let key = (st.local_node.clone(), id.to_owned());
        let Some(c) = st.checks.get(&key) else {
            return text(
                404,
                format!("Unknown check ID \"{id}\". Ensure that the check ID is passed, not the check name."),
            );
        };
        if *caller == Caller::Anonymous {
            let name = st
                .local(&c.service_id)
                .map(|e| e.svc.name.clone())
                .unwrap_or_default();
            return denied("service:write", &name);
        }
        if c.ttl.is_none() {
            return text(
                500,
                format!("CheckID \"{id}\" does not have associated TTL"),
            );
        }
        let mut out = output.to_owned();
        if out.len() > 4096 {
            let n = out.len();
            let mut cut = 4096;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push_str(&format!(" ... (captured 4096 of {n} bytes)"));
        }
        st.update_check(&key, status, &out, Instant::now())
    };
    if changed {
        shared.notify();
    }
    ok_empty()
}

/// Puts a service of another node into the catalog: a node with an agent (`agent`, it gets a
/// `serfHealth` check) or an external node registered through the catalog.
pub(crate) fn add_remote(
    shared: &Shared,
    node: &str,
    node_address: &str,
    agent: bool,
    v: Value,
    status: &str,
) {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let name = s("Service").or_else(|| s("Name")).unwrap_or_default();
    let id = s("ID").unwrap_or_else(|| name.clone());
    let svc = Svc {
        id: id.clone(),
        name: name.clone(),
        tags: v
            .get("Tags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        address: s("Address").unwrap_or_default(),
        port: v.get("Port").and_then(Value::as_i64).unwrap_or(0),
        meta: v
            .get("Meta")
            .and_then(|m| serde_json::from_value(m.clone()).ok()),
        weights: v
            .get("Weights")
            .map(|w| {
                (
                    w.get("Passing").and_then(Value::as_i64).unwrap_or(1),
                    w.get("Warning").and_then(Value::as_i64).unwrap_or(1),
                )
            })
            .unwrap_or((1, 1)),
        enable_tag_override: false,
    };
    let mut st = shared.state.lock();
    st.ensure_node(node, node_address, agent);
    let idx = st.bump(&name, true);
    st.services.insert(
        (node.to_owned(), id.clone()),
        Entry {
            node: node.to_owned(),
            svc,
            create_index: idx,
            modify_index: idx,
            server_entry: false,
        },
    );
    st.checks.insert(
        (node.to_owned(), format!("service:{id}")),
        Check {
            node: node.to_owned(),
            id: format!("service:{id}"),
            name: format!("Service '{name}' check"),
            notes: String::new(),
            service_id: id,
            status: status.to_owned(),
            output: String::new(),
            catalog_output: String::new(),
            ttl: None,
            deadline: None,
            deregister_after: None,
            critical_since: None,
            create_index: idx,
            modify_index: idx,
        },
    );
}
