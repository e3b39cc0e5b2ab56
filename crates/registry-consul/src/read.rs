//! Cluster-wide reads: `/v1/health/service/:name` and `/v1/catalog/services`, plain or blocking.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, StatusCode};
use tracing::{debug, warn};
use waypost_core_types::{Result, ServiceInfo};

use crate::client::{enc, ConsulClient};
use crate::codec::{decode_entry, Decoded};
use crate::config::{go_duration_string, ForeignServices};

/// What reads keep: our prefix, and whether foreign services count.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub(crate) prefix: String,
    pub(crate) foreign: ForeignServices,
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

/// The instances of one service name in scope, keyed by id, and the `X-Consul-Index`.
pub(crate) async fn read_instances(
    client: &ConsulClient,
    filter: &Filter,
    name: &str,
    blocking: Option<Blocking>,
) -> Result<(u64, BTreeMap<String, ServiceInfo>)> {
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
    let mut out = BTreeMap::new();
    for entry in entries {
        match decode_entry(entry, &filter.prefix) {
            Decoded::Ours(s) => {
                if s.name == name {
                    out.insert(s.id.clone(), s);
                }
            }
            Decoded::Foreign(s) => {
                if filter.foreign == ForeignServices::Include && s.name == name {
                    out.insert(s.id.clone(), s);
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
    Ok((index, out))
}

/// Every service name of the catalog, and the `X-Consul-Index`.
pub(crate) async fn read_names(
    client: &ConsulClient,
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
    for name in map.into_keys() {
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
