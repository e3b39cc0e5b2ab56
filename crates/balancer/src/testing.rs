//! Test helpers.

use std::sync::Arc;

use waypost_core_types::{Health, ServiceInfo};

/// Instances `name-0`, `name-1`, … of service `name`, healthy where `health` says so.
pub(crate) fn set(name: &str, health: &[bool]) -> Vec<Arc<ServiceInfo>> {
    health
        .iter()
        .enumerate()
        .map(|(i, h)| {
            Arc::new(
                ServiceInfo::new(format!("{name}-{i}"), name, "127.0.0.1", 8000 + i as u16)
                    .with_health(if *h {
                        Health::Healthy
                    } else {
                        Health::Unhealthy
                    }),
            )
        })
        .collect()
}

/// Healthy instances of `name` with the given weights.
pub(crate) fn weighted(name: &str, weights: &[u32]) -> Vec<Arc<ServiceInfo>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            Arc::new(
                ServiceInfo::new(format!("{name}-{i}"), name, "127.0.0.1", 8000 + i as u16)
                    .with_health(Health::Healthy)
                    .with_weight(*w),
            )
        })
        .collect()
}

/// The ids of the picks.
pub(crate) fn ids<'a>(picks: impl Iterator<Item = Option<&'a Arc<ServiceInfo>>>) -> Vec<String> {
    picks.map(|p| p.expect("a pick").id.clone()).collect()
}

/// The index (the number after the last `-`) of an instance made by [`set`] or [`weighted`].
pub(crate) fn index(s: &ServiceInfo) -> usize {
    s.id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("test id")
}

/// An instance `id` of service `name` with `health` and `weight`.
pub(crate) fn instance(name: &str, id: &str, health: Health, weight: u32) -> Arc<ServiceInfo> {
    Arc::new(
        ServiceInfo::new(id, name, "127.0.0.1", 8000)
            .with_health(health)
            .with_weight(weight),
    )
}

/// A writer for `name` holding `name-0`, `name-1`, … with the given health.
pub(crate) fn writer(name: &str, health: &[Health]) -> waypost_core_types::InstanceSetWriter {
    let mut w = waypost_core_types::InstanceSetWriter::new(name);
    for (i, h) in health.iter().enumerate() {
        w.upsert(instance(name, &format!("{name}-{i}"), *h, 100));
    }
    w
}
