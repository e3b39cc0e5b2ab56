//! `waypost ls`: the services with their instance counts and health, or one service's instances.

use std::collections::{BTreeMap, BTreeSet};

use waypost::{Error, Health, ServiceInfo};

use super::common::{self, bounded, cell, json_object, json_str};
use crate::output::Table;
use crate::{CliResult, Context, Exit};

/// The arguments of `waypost ls`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without SERVICE: one row per service (SERVICE, INSTANCES, HEALTHY, \
                        UNHEALTHY, UNKNOWN, PROTOCOLS, VERSIONS), sorted by name; with -o json \
                        one object per service: {\"service\",\"instances\",\"healthy\",\
                        \"unhealthy\",\"unknown\",\"protocols\",\"versions\"}.\n\
                        With SERVICE: one row per instance (ID, ADDRESS, PORT, PROTOCOL, \
                        HEALTH, VERSION, WEIGHT, AGE, TTL), sorted by id; with -o json one \
                        instance per line in waypost's Go-compatible ServiceInfo JSON.\n\
                        A SERVICE without instances exits with 3."
)]
pub struct Args {
    /// Show this service's instances instead of the list of services.
    #[arg(value_name = "SERVICE")]
    pub service: Option<String>,
}

/// One service's counts.
#[derive(Debug, Default)]
struct Summary {
    instances: usize,
    healthy: usize,
    unhealthy: usize,
    unknown: usize,
    protocols: BTreeSet<&'static str>,
    versions: BTreeSet<String>,
}

/// Runs `waypost ls`.
///
/// # Errors
/// Usage (2) for a bad URL or service name; NotFound (3) for a service without instances;
/// Unavailable (4) when the registry cannot be reached.
pub async fn run(ctx: &Context, args: Args) -> CliResult {
    let registry = ctx.open_registry().await?;
    let result = match &args.service {
        None => bounded("listing services", ctx.timeout, registry.list_services())
            .await
            .map(|all| services(ctx, &all)),
        Some(name) => bounded(
            &format!("listing service `{}`", cell(name)),
            ctx.timeout,
            registry.list_instances(name),
        )
        .await
        .and_then(|list| {
            if list.is_empty() {
                Err(Error::ServiceNotFound(name.clone()).into())
            } else {
                instances(ctx, list);
                Ok(())
            }
        }),
    };
    common::close(&registry, ctx.timeout).await;
    result.map(|()| Exit::Ok)
}

fn services(ctx: &Context, all: &[ServiceInfo]) {
    let mut by_name: BTreeMap<&str, Summary> = BTreeMap::new();
    for info in all {
        let s = by_name.entry(&info.name).or_default();
        s.instances += 1;
        match info.health {
            Health::Healthy => s.healthy += 1,
            Health::Unhealthy => s.unhealthy += 1,
            Health::Unknown => s.unknown += 1,
        }
        s.protocols.insert(info.protocol.as_str());
        if !info.version.is_empty() {
            s.versions.insert(info.version.clone());
        }
    }
    let p = &ctx.printer;
    if p.json() {
        for (name, s) in &by_name {
            let list = |set: Vec<&str>| serde_json::Value::from(set).to_string();
            p.line(&json_object(&[
                ("service", json_str(name)),
                ("instances", s.instances.to_string()),
                ("healthy", s.healthy.to_string()),
                ("unhealthy", s.unhealthy.to_string()),
                ("unknown", s.unknown.to_string()),
                ("protocols", list(s.protocols.iter().copied().collect())),
                (
                    "versions",
                    list(s.versions.iter().map(String::as_str).collect()),
                ),
            ]));
        }
        return;
    }
    let mut table = Table::new([
        "SERVICE",
        "INSTANCES",
        "HEALTHY",
        "UNHEALTHY",
        "UNKNOWN",
        "PROTOCOLS",
        "VERSIONS",
    ]);
    for (name, s) in &by_name {
        let join = |it: &mut dyn Iterator<Item = &str>| {
            let v: Vec<&str> = it.collect();
            if v.is_empty() {
                "-".to_owned()
            } else {
                cell(&v.join(","))
            }
        };
        let unhealthy = if s.unhealthy > 0 {
            common::good_or_bad(p, false, &s.unhealthy.to_string())
        } else {
            "0".to_owned()
        };
        table.row([
            cell(name),
            s.instances.to_string(),
            s.healthy.to_string(),
            unhealthy,
            s.unknown.to_string(),
            join(&mut s.protocols.iter().copied()),
            join(&mut s.versions.iter().map(String::as_str)),
        ]);
    }
    p.text(&table.render());
}

fn instances(ctx: &Context, mut list: Vec<ServiceInfo>) {
    list.sort_by(|a, b| a.id.cmp(&b.id));
    let p = &ctx.printer;
    if p.json() {
        for info in &list {
            p.line(&common::instance_json(info));
        }
        return;
    }
    let mut table = Table::new([
        "ID", "ADDRESS", "PORT", "PROTOCOL", "HEALTH", "VERSION", "WEIGHT", "AGE", "TTL",
    ]);
    for info in &list {
        table.row([
            cell(&info.id),
            cell(&info.address),
            info.port.to_string(),
            info.protocol.as_str().to_owned(),
            common::health(p, info.health),
            if info.version.is_empty() {
                "-".to_owned()
            } else {
                cell(&info.version)
            },
            info.weight.to_string(),
            common::age(info),
            common::ttl(info.ttl),
        ]);
    }
    p.text(&table.render());
}
