//! What the cache tells its balancer: every set is prepared before any lookup picks in it, and a
//! service dropped from the cache (evicted, idle, cleared, closed) is forgotten.
#![allow(clippy::unwrap_used)] // tests

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::healthy;
use parking_lot::Mutex;
use waypost_core_types::{
    CallGuard, Health, InstanceSet, LoadBalancer, SelectContext, ServiceDiscovery, ServiceInfo,
    ServiceRegistry,
};
use waypost_discovery::CachedDiscovery;
use waypost_registry_memory::MemoryRegistry;

/// Picks the first instance of the selection tier; records what it prepared, picked in and
/// forgot.
#[derive(Debug, Default)]
struct Recorder {
    prepared: Mutex<HashSet<u64>>,
    picked: Mutex<HashSet<u64>>,
    unprepared_picks: AtomicUsize,
    forgotten: Mutex<Vec<String>>,
}

impl LoadBalancer for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn select<'a>(
        &self,
        instances: &'a [Arc<ServiceInfo>],
        _: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        let tier = Health::selection_tier(instances.iter().map(|s| &**s))?;
        instances.iter().find(|s| s.health == tier)
    }
    fn select_set<'a>(
        &self,
        set: &'a InstanceSet,
        _: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        let tier = set.selection_tier()?;
        set.iter().find(|s| s.health == tier)
    }
    fn pick<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<(&'a Arc<ServiceInfo>, CallGuard)> {
        if !self.prepared.lock().contains(&set.generation()) {
            self.unprepared_picks.fetch_add(1, Ordering::SeqCst);
        }
        self.picked.lock().insert(set.generation());
        Some((self.select_set(set, ctx)?, CallGuard::noop()))
    }
    fn prepare(&self, set: &InstanceSet) {
        self.prepared.lock().insert(set.generation());
    }
    fn forget(&self, service: &str) {
        self.forgotten.lock().push(service.to_owned());
    }
}

/// Registrations and deregistrations while two workers look the service up: every set a lookup
/// picked in had been prepared before it was published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_set_picked_in_was_prepared_first() {
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .register(&healthy("s-0", "svc", 8000))
        .await
        .unwrap();
    let balancer = Arc::new(Recorder::default());
    let d = CachedDiscovery::new(registry.clone(), balancer.clone());
    d.discover_one("svc").await.unwrap();
    let looking = {
        let d = d.clone();
        tokio::spawn(async move {
            for _ in 0..20_000 {
                let _ = d.discover_one("svc").await;
                tokio::task::yield_now().await;
            }
        })
    };
    let mut expected: Vec<String> = vec!["s-0".into()];
    for i in 1..=100u16 {
        registry
            .register(&healthy(&format!("s-{i}"), "svc", 8000 + i))
            .await
            .unwrap();
        expected.push(format!("s-{i}"));
        if i % 3 == 0 {
            registry.deregister(&format!("s-{}", i - 1)).await.unwrap();
            expected.retain(|id| *id != format!("s-{}", i - 1));
        }
        expected.sort();
        // Wait until the cache shows both changes, then pick in its set.
        let cached = || async {
            let all = d.discover("svc").await.unwrap();
            all.iter().map(|s| s.id.clone()).collect::<Vec<_>>()
        };
        for _ in 0..10_000 {
            if cached().await == expected {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(cached().await, expected);
        d.discover_one("svc").await.unwrap();
    }
    looking.await.unwrap();
    assert_eq!(balancer.unprepared_picks.load(Ordering::SeqCst), 0);
    // At least the 100 sets this task picked in after its changes (each a new set); the looker
    // adds the sets in between when it ran at the right moments, which a loaded machine does
    // not promise.
    let picked = balancer.picked.lock().len();
    assert!(picked >= 100, "picked in {picked} sets");
    d.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropped_services_are_forgotten_by_the_balancer() {
    let registry = Arc::new(MemoryRegistry::new());
    for name in ["a", "b", "c", "d"] {
        registry
            .register(&healthy(&format!("{name}-1"), name, 8000))
            .await
            .unwrap();
    }
    let balancer = Arc::new(Recorder::default());
    let d = CachedDiscovery::builder(registry.clone())
        .balancer(balancer.clone())
        .idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let forgotten = || balancer.forgotten.lock().clone();
    for name in ["a", "b", "c"] {
        d.discover_one(name).await.unwrap();
    }
    assert!(forgotten().is_empty());

    // Evicted.
    assert!(d.evict("a"));
    assert_eq!(forgotten(), ["a"]);
    assert!(!d.evict("a"));
    assert_eq!(forgotten(), ["a"], "forgotten once");

    // Idle: "c" is looked up all along, "b" is not.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        d.discover_one("c").await.unwrap();
    }
    assert_eq!(forgotten(), ["a", "b"]);
    assert_eq!(d.cached_services(), 1);

    // Cleared.
    d.discover_one("d").await.unwrap();
    d.clear_cache();
    let mut rest = forgotten().split_off(2);
    rest.sort();
    assert_eq!(rest, ["c", "d"]);

    // Closed: what is cached then is forgotten too.
    d.discover_one("a").await.unwrap();
    d.close().await.unwrap();
    assert_eq!(forgotten().last().map(String::as_str), Some("a"));
    assert_eq!(forgotten().len(), 5);
}
