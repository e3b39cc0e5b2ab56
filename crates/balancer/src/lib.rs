//! Load balancers of waypost: pick one healthy instance among a service's instances.
//!
//! Every balancer implements [`LoadBalancer`]: it picks among the `Healthy` instances, and when
//! none of them can be picked, among the `Unknown` ones (a newly registered instance that nothing
//! has checked yet); it never picks an `Unhealthy` one
//! ([`Health::SELECTION_ORDER`](waypost_core_types::Health::SELECTION_ORDER)). It honours
//! [`SelectContext::avoid`] as a preference (avoided instances are used only when no other
//! candidate is left) and returns `None` for an empty or all-unhealthy list.
//!
//! | balancer | module | idea |
//! |---|---|---|
//! | [`RoundRobin`] | `round_robin` | the Laravel-Go module's rotation, per service, lock-free |
//! | [`Random`] | `random` | uniform, from a real RNG |
//! | [`WeightedRandom`] | `weighted` | random in proportion to [`ServiceInfo::weight`] |
//! | [`SmoothWeightedRoundRobin`] | `smooth_weighted` | nginx's deterministic weighted rotation (an O(1) schedule at any size) |
//! | [`LeastRequest`] | `least_request` | two random choices, fewer calls in flight wins |
//! | [`PeakEwma`] | `peak_ewma` | two random choices, lower latency × load wins |
//! | [`ConsistentHash`] | `consistent_hash` | a hash ring with virtual nodes on a caller's key |
//!
//! Balancers that learn from calls ([`LeastRequest`], [`PeakEwma`]) count them through a
//! [`CallGuard`](waypost_core_types::CallGuard) ([`LoadBalancer::pick`] on a set, or
//! [`LoadBalancer::begin`] after a [`select`](LoadBalancer::select)), which reports the outcome
//! when finished or dropped. Most users reach the balancers through the `waypost` facade and
//! `waypost-discovery`.
//!
//! # Versioned sets: the same cost at 10 or 100,000 instances
//!
//! A discovery cache hands balancers an [`InstanceSet`](waypost_core_types::InstanceSet), whose
//! generation changes with every change. On every change it calls [`LoadBalancer::prepare`]
//! (off the request path, before it publishes the set), and per request
//! [`LoadBalancer::pick`]. `prepare` builds what picks need, once per generation and per service:
//! the positions of the selection tier when some instances are not of it, an alias table
//! ([`WeightedRandom`]), one period of the schedule ([`SmoothWeightedRoundRobin`]), the map
//! from the set's positions to per-instance entries that stay put while their instance stays
//! ([`LeastRequest`], [`PeakEwma`]), the hash ring updated from the previous one ([`ConsistentHash`]). A pick finds
//! it by the generation (one integer comparison, through a per-thread cache), so it costs the
//! same at any size. A pick on a generation nobody prepared stays correct: the cheap balancers
//! prepare it on the spot (O(n)), [`ConsistentHash`] looks it up on the latest ring it has
//! (see [`SYNC_BUILD_MAX`]). [`LoadBalancer::forget`] drops a service's state.
//!
//! ```
//! use std::sync::Arc;
//! use waypost_balancer::LeastRequest;
//! use waypost_core_types::{
//!     Health, InstanceSetWriter, LoadBalancer, Outcome, SelectContext, ServiceInfo,
//! };
//!
//! let mut users = InstanceSetWriter::new("user-service");
//! for i in 1..=3 {
//!     users.upsert(Arc::new(
//!         ServiceInfo::new(format!("user-{i}"), "user-service", "10.0.0.1", 8080 + i)
//!             .with_health(Health::Healthy),
//!     ));
//! }
//! let lb = LeastRequest::new();
//! lb.prepare(users.current()); // on every change, off the request path
//! let (picked, call) = lb
//!     .pick(users.current(), &SelectContext::default())
//!     .expect("a healthy instance");
//! assert!(picked.id.starts_with("user-"));
//! call.finish(Outcome::Success); // … after calling `picked`
//! ```
//!
//! The slice API ([`LoadBalancer::select`], [`LoadBalancer::begin`]) stays for callers that hold
//! a plain list; weighted, smooth weighted and consistent-hash picks on a slice compare the list
//! with the last one they saw (O(n)). The two paths keep separate per-instance state: use one
//! per balancer.
//!
//! # After a failure
//!
//! | balancer | what a failed call does | how long it lasts | what tunes it |
//! |---|---|---|---|
//! | [`RoundRobin`], [`Random`], [`WeightedRandom`], [`SmoothWeightedRoundRobin`] | nothing: they do not learn from calls; a retry skips the instance through [`SelectContext::avoid`] | until health checks mark it `Unhealthy` | the health monitor's interval and thresholds; the client's outlier ejection |
//! | [`LeastRequest`] | ends its in-flight count, like a success | — | — |
//! | [`PeakEwma`] | the instance costs at least the penalty (1 s), fading exponentially | about 4 s next to 20 ms instances, 2.3 s next to 100 ms ones; another failure renews it | [`PeakEwmaBuilder::failure_penalty`], [`PeakEwmaBuilder::penalty_decay`] (latency itself: [`PeakEwmaBuilder::decay`], 10 s) |
//! | [`ConsistentHash`] | nothing; its keys go to the next instance on the ring only while it is avoided or not of the selection tier, and come back | until health checks mark it `Unhealthy`, then until it recovers | the health monitor |
//!
//! ```
//! use std::sync::Arc;
//! use waypost_balancer::RoundRobin;
//! use waypost_core_types::{Health, LoadBalancer, Outcome, SelectContext, ServiceInfo};
//!
//! let instances: Vec<Arc<ServiceInfo>> = (1..=3)
//!     .map(|i| Arc::new(ServiceInfo::new(format!("user-{i}"), "user-service", "10.0.0.1", 8080 + i)
//!         .with_health(Health::Healthy)))
//!     .collect();
//! let lb = RoundRobin::new();
//! let picked = lb.select(&instances, &SelectContext::default()).expect("a healthy instance");
//! assert_eq!(picked.id, "user-1");
//! let call = lb.begin(picked); // a no-op guard for round robin
//! call.finish(Outcome::Success);
//! ```

mod by_id;
mod consistent_hash;
mod least_request;
mod peak_ewma;
mod pick;
mod prepared;
mod random;
mod ring;
mod round_robin;
mod smooth_weighted;
mod state;
#[cfg(test)]
mod testing;
mod tracked;
mod weighted;

use std::sync::Arc;

pub use consistent_hash::{ConsistentHash, DEFAULT_REPLICAS, SYNC_BUILD_MAX};
pub use least_request::LeastRequest;
pub use peak_ewma::{PeakEwma, PeakEwmaBuilder, TimeSource};
pub use random::Random;
pub use round_robin::RoundRobin;
pub use smooth_weighted::SmoothWeightedRoundRobin;
pub use waypost_core_types::{LoadBalancer, SelectContext};
pub use weighted::WeightedRandom;

use waypost_core_types::{Error, Result, ServiceInfo};

/// The names [`by_name`] accepts, one per balancer.
pub const BALANCER_NAMES: &[&str] = &[
    "round_robin",
    "random",
    "weighted_random",
    "smooth_weighted_round_robin",
    "least_request",
    "p2c_peak_ewma",
    "consistent_hash",
];

/// A balancer chosen by name at run time (from configuration), with default options.
///
/// Accepts the names in [`BALANCER_NAMES`] (which are the balancers'
/// [`LoadBalancer::name`]s), plus the aliases `round-robin`, `rr`, `weighted`, `swrr`,
/// `least-request`, `p2c`, `peak_ewma`, `ewma` and `ring`.
///
/// # Errors
/// [`Error::InvalidConfig`] for an unknown name.
pub fn by_name(name: &str) -> Result<Arc<dyn LoadBalancer>> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "round_robin" | "round-robin" | "rr" => Arc::new(RoundRobin::new()),
        "random" => Arc::new(Random::new()),
        "weighted_random" | "weighted" => Arc::new(WeightedRandom::new()),
        "smooth_weighted_round_robin" | "swrr" => Arc::new(SmoothWeightedRoundRobin::new()),
        "least_request" | "least-request" | "p2c" => Arc::new(LeastRequest::new()),
        "p2c_peak_ewma" | "peak_ewma" | "ewma" => Arc::new(PeakEwma::new()),
        "consistent_hash" | "ring" => Arc::new(ConsistentHash::new()),
        other => {
            return Err(Error::InvalidConfig(format!(
                "unknown load balancer `{other}`; expected one of {}",
                BALANCER_NAMES.join(", ")
            )))
        }
    })
}

/// Keeps only the healthy instances (a helper for callers that want to inspect candidates).
pub fn healthy(instances: &[Arc<ServiceInfo>]) -> impl Iterator<Item = &Arc<ServiceInfo>> {
    instances.iter().filter(|s| s.is_healthy())
}

/// The instances a balancer picks from: the healthy ones, or the `Unknown` ones when none is
/// healthy (see [`Health::SELECTION_ORDER`](waypost_core_types::Health::SELECTION_ORDER));
/// empty when every instance is unhealthy.
pub fn candidates(instances: &[Arc<ServiceInfo>]) -> impl Iterator<Item = &Arc<ServiceInfo>> {
    let tier = waypost_core_types::Health::selection_tier(instances.iter().map(|s| &**s));
    instances.iter().filter(move |s| Some(s.health) == tier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypost_core_types::Health;

    #[test]
    fn names_round_trip() {
        for n in BALANCER_NAMES {
            assert_eq!(by_name(n).unwrap().name(), *n);
        }
        assert!(matches!(by_name("fastest"), Err(Error::InvalidConfig(_))));
    }

    /// Every balancer on the Laravel-Go module's demo set never returns the unhealthy instance,
    /// and returns none on an empty or all-unhealthy list.
    #[test]
    fn every_balancer_skips_unhealthy() {
        let s = testing::set("all", &[true, true, false, true]);
        let down = testing::set("down", &[false, false]);
        for n in BALANCER_NAMES {
            let lb = by_name(n).unwrap();
            for k in 0..200 {
                let key = format!("k{k}");
                let ctx = SelectContext::with_hash_key(key.as_bytes());
                let p = lb.select(&s, &ctx).unwrap();
                assert_ne!(p.id, "all-2", "{n} picked an unhealthy instance");
            }
            assert!(lb.select(&[], &SelectContext::default()).is_none(), "{n}");
            assert!(lb.select(&down, &SelectContext::default()).is_none(), "{n}");
        }
    }

    fn with_health(name: &str, health: &[Health]) -> Vec<Arc<ServiceInfo>> {
        health
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Arc::new(
                    ServiceInfo::new(format!("{name}-{i}"), name, "127.0.0.1", 8000 + i as u16)
                        .with_health(*h),
                )
            })
            .collect()
    }

    /// The selection rule, for every balancer, with and without a hash key and an avoid list:
    /// healthy instances first; unknown ones only when none is healthy; unhealthy ones never.
    #[test]
    fn every_balancer_prefers_healthy_then_unknown_never_unhealthy() {
        use Health::{Healthy as H, Unhealthy as D, Unknown as U};
        let newcomer = with_health("new", &[U]);
        let mixed = with_health("mix", &[U, H, D, U, H]);
        let no_healthy = with_health("nh", &[D, U, D, U]);
        let avoid = vec!["mix-1".to_string(), "nh-1".to_string()];
        for n in BALANCER_NAMES {
            let lb = by_name(n).unwrap();
            for k in 0..200 {
                let key = format!("k{k}");
                let keyed = SelectContext::with_hash_key(key.as_bytes());
                let avoiding = SelectContext {
                    hash_key: None,
                    avoid: &avoid,
                };
                for ctx in [SelectContext::default(), keyed, avoiding] {
                    let p = lb.select(&newcomer, &ctx).expect(n);
                    assert_eq!(p.id, "new-0", "{n}");
                    let p = lb.select(&mixed, &ctx).expect(n);
                    assert_eq!(p.health, H, "{n} picked {} among healthy ones", p.id);
                    let p = lb.select(&no_healthy, &ctx).expect(n);
                    assert_eq!(p.health, U, "{n} picked {}", p.id);
                }
                // Avoiding the only healthy instance left falls back to it, not to an unknown one.
                let p = lb.select(
                    &mixed,
                    &SelectContext {
                        hash_key: None,
                        avoid: &avoid,
                    },
                );
                assert!(p.is_some_and(|p| p.health == H), "{n}");
            }
        }
        let ids = |v: &[Arc<ServiceInfo>]| candidates(v).map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&mixed), ["mix-1", "mix-4"]);
        assert_eq!(ids(&no_healthy), ["nh-1", "nh-3"]);
        assert!(ids(&with_health("d", &[D, D])).is_empty());
    }

    /// Whether `picked` follows the selection rules on `set` for `avoid`: of the selection
    /// tier, never unhealthy, not avoided while another candidate is left; `None` only when
    /// the set has no candidate.
    fn follows_rules(
        set: &waypost_core_types::InstanceSet,
        avoid: &[String],
        picked: Option<&Arc<ServiceInfo>>,
    ) -> Result<(), String> {
        let tier = set.selection_tier();
        let free = set
            .iter()
            .filter(|s| Some(s.health) == tier && !avoid.contains(&s.id))
            .count();
        match (tier, picked) {
            (None, None) => Ok(()),
            (None, Some(p)) => Err(format!("picked {} from a set with no candidate", p.id)),
            (Some(_), None) => Err("no pick from a set with candidates".into()),
            (Some(t), Some(p)) if p.health != t => {
                Err(format!("picked {} ({:?}) in tier {t:?}", p.id, p.health))
            }
            (Some(_), Some(p)) if free > 0 && avoid.contains(&p.id) => {
                Err(format!("picked avoided {} with {free} others left", p.id))
            }
            (Some(_), Some(p)) if set.iter().all(|s| !Arc::ptr_eq(s, p)) => {
                Err(format!("picked {} from outside the set", p.id))
            }
            _ => Ok(()),
        }
    }

    /// On versioned sets changed by a writer (mixed health, random avoid lists, with and
    /// without a hash key), with every generation prepared or none: `pick` and `select_set`
    /// follow the selection rules, and so do picks on the previous (older) set.
    #[test]
    fn set_picks_follow_the_rules_through_changes() {
        use rand::{Rng, SeedableRng};
        use Health::{Healthy as H, Unhealthy as D, Unknown as U};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for n in BALANCER_NAMES {
            for prepare in [true, false] {
                let lb = by_name(n).unwrap();
                let mut w = testing::writer("w", &[U, H, D, U, H, H, D]);
                let mut previous = Arc::clone(w.current());
                for step in 0..300 {
                    let id = format!("w-{}", rng.random_range(0..12));
                    if rng.random_bool(0.3) {
                        w.remove(&id);
                    } else {
                        let h = [H, U, D][rng.random_range(0..3)];
                        let weight = 50 * rng.random_range(1..4);
                        w.upsert(testing::instance("w", &id, h, weight));
                    }
                    let set = Arc::clone(w.current());
                    if prepare {
                        lb.prepare(&set);
                    }
                    let avoid: Vec<String> = (0..rng.random_range(0..3))
                        .map(|_| format!("w-{}", rng.random_range(0..12)))
                        .collect();
                    for k in 0..20 {
                        let key = format!("k{k}");
                        let ctx = SelectContext {
                            hash_key: (k % 2 == 0).then_some(key.as_bytes()),
                            avoid: &avoid,
                        };
                        let picked = lb.pick(&set, &ctx).map(|(s, guard)| {
                            guard.finish(waypost_core_types::Outcome::Success);
                            s
                        });
                        let why = |e: String| format!("{n}, prepare {prepare}, step {step}: {e}");
                        follows_rules(&set, &avoid, picked).map_err(why).unwrap();
                        follows_rules(&set, &avoid, lb.select_set(&set, &ctx))
                            .map_err(why)
                            .unwrap();
                        let old = lb.select_set(&previous, &ctx);
                        follows_rules(&previous, &avoid, old).map_err(why).unwrap();
                    }
                    previous = set;
                }
                lb.forget("w");
                let set = Arc::clone(w.current());
                let picked = lb.select_set(&set, &SelectContext::default());
                follows_rules(&set, &[], picked).unwrap();
            }
        }
    }

    /// The set path agrees with the slice path where both are deterministic.
    #[test]
    fn set_and_slice_agree() {
        use Health::{Healthy as H, Unhealthy as D, Unknown as U};
        let w = testing::writer("a", &[H, H, D, H, U]);
        let set = Arc::clone(w.current());
        let slice = set.to_vec();
        for n in [
            "round_robin",
            "smooth_weighted_round_robin",
            "consistent_hash",
        ] {
            let (on_set, on_slice) = (by_name(n).unwrap(), by_name(n).unwrap());
            on_set.prepare(&set);
            for k in 0..50 {
                let key = format!("user-{k}");
                let ctx = SelectContext::with_hash_key(key.as_bytes());
                let a = on_set.select_set(&set, &ctx).map(|s| s.id.clone());
                let b = on_slice.select(&slice, &ctx).map(|s| s.id.clone());
                assert_eq!(a, b, "{n}, pick {k}");
            }
        }
    }
}
