//! Cluster-wide reads: `/v1/health/service/:name` and `/v1/catalog/services`, plain or blocking.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, StatusCode};
use tracing::{debug, warn};
use waypost_core_types::{Result, ServiceInfo};

use crate::client::{enc, ConsulClient};
use crate::codec::{decode_entry, entry_node, Decoded};
use crate::config::{go_duration_string, ForeignServices};
use crate::identity::{assign_ids, Instance};

/// The service every Consul server registers itself as.
pub(crate) const CONSUL_SERVICE: &str = "consul";

/// What reads keep: our prefix, whether foreign services count, and whether the `consul`
/// service does.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub(crate) prefix: String,
    pub(crate) foreign: ForeignServices,
    pub(crate) include_consul: bool,
}

impl Filter {
    /// Whether instances of service `name` are listed at all.
    pub(crate) fn lists_name(&self, name: &str) -> bool {
        self.include_consul || name != CONSUL_SERVICE
    }
}

/// The instances of a read, as [`ServiceInfo`]s.
pub(crate) fn infos(instances: BTreeMap<String, Instance>) -> Vec<ServiceInfo> {
    instances.into_values().map(|i| i.info).collect()
}

/// A blocking query: wait for an index above `index`, at most `wait`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blocking {
    pub(crate) index: u64,
    pub(crate) wait: Duration,
}

impl Blocking {
    /// Consul answers within `wait + wait/16`; give it that plus a margin.
    fn http_timeout(&self, base: Duration) -> Duration {
        self.wait + self.wait / 16 + base
    }

    fn query(&self) -> String {
        format!(
            "index={}&wait={}",
            self.index.max(1),
            go_duration_string(self.wait)
        )
    }
}

fn join_query(parts: &[String]) -> String {
    let parts: Vec<&str> = parts
        .iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// The instances of one service name in scope, keyed by their waypost id (see
/// [`identity`](crate::identity)), and the `X-Consul-Index`.
pub(crate) async fn read_instances(
    client: &ConsulClient,
    filter: &Filter,
    name: &str,
    blocking: Option<Blocking>,
) -> Result<(u64, BTreeMap<String, Instance>)> {
    let q = join_query(&[
        client.dc_param(),
        blocking.map(|b| b.query()).unwrap_or_default(),
    ]);
    let path = format!("/v1/health/service/{}{q}", enc(name));
    let timeout = blocking.map(|b| b.http_timeout(client.request_timeout()));
    let reply = client.send(Method::GET, &path, None, timeout).await?;
    if reply.status != StatusCode::OK {
        return Err(reply.error(&format!("reading service `{name}`")));
    }
    let index = reply.index.unwrap_or(1).max(1);
    let entries: Vec<serde_json::Value> = reply.json(&format!("reading service `{name}`"))?;
    if !filter.lists_name(name) {
        // Read all the same: a watch on it still blocks on Consul's index.
        debug!(service = %name, "consul: the consul service is left out (include_consul_service)");
        return Ok((index, BTreeMap::new()));
    }
    let mut read = Vec::with_capacity(entries.len());
    for entry in entries {
        let (node, agent_node) = entry_node(&entry);
        let instance = |info: ServiceInfo, ours: bool| Instance {
            node,
            agent_node,
            consul_id: info.id.clone(),
            ours,
            info,
        };
        match decode_entry(entry, &filter.prefix) {
            Decoded::Ours(s) => {
                if s.name == name {
                    read.push(instance(s, true));
                }
            }
            Decoded::Foreign(s) => {
                if filter.foreign == ForeignServices::Include && s.name == name {
                    read.push(instance(s, false));
                } else {
                    debug!(service = %name, id = %s.id, "consul: skipping a service not registered by waypost");
                }
            }
            Decoded::OtherPrefix => {
                debug!(service = %name, "consul: skipping an instance registered under another prefix");
            }
            Decoded::Invalid(why) => {
                warn!(service = %name, "consul: skipping an unusable catalog entry: {why}");
            }
        }
    }
    Ok((index, assign_ids(name, read)))
}

/// Every service name of the catalog the filter lists, and the `X-Consul-Index`.
pub(crate) async fn read_names(
    client: &ConsulClient,
    filter: &Filter,
    blocking: Option<Blocking>,
) -> Result<(u64, Vec<String>)> {
    let q = join_query(&[
        client.dc_param(),
        blocking.map(|b| b.query()).unwrap_or_default(),
    ]);
    let timeout = blocking.map(|b| b.http_timeout(client.request_timeout()));
    let reply = client
        .send(
            Method::GET,
            &format!("/v1/catalog/services{q}"),
            None,
            timeout,
        )
        .await?;
    if reply.status != StatusCode::OK {
        return Err(reply.error("listing the catalog"));
    }
    let index = reply.index.unwrap_or(1).max(1);
    let map: BTreeMap<String, serde_json::Value> = reply.json("listing the catalog")?;
    let mut names = Vec::with_capacity(map.len());
    for name in map.into_keys().filter(|n| filter.lists_name(n)) {
        match waypost_core_types::validate::validate_key_part(
            "name",
            &name,
            waypost_core_types::validate::MAX_NAME_LEN,
        ) {
            Ok(()) => names.push(name),
            Err(e) => warn!("consul: skipping catalog service with an unusable name: {e}"),
        }
    }
    Ok((index, names))
}
