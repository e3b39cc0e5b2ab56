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
