//! Leases: one per distinct TTL, and how a TTL becomes an etcd lease TTL.
//!
//! etcd leases count whole seconds (an `i64`) and the server refuses more than its
//! `MaxLeaseTTL`, 9,000,000,000 s ([`MAX_LEASE_TTL`]). A TTL is rounded up to whole seconds (at
//! least 1 s); a TTL above the maximum is refused with a clear error, never wrapped or
//! saturated into something else.
//!
//! A registry holds its default lease (the configured TTL) for its whole life, and one more
//! lease for every other TTL its instances ask for ([`ServiceInfo::ttl`]). Each lease has its own
//! keep-alive task, is granted again after a loss like the default one, and is revoked when the
//! last instance using it is deregistered.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use waypost_core_types::{Error, Result, ServiceInfo};

/// The longest lease TTL etcd grants (its `MaxLeaseTTL`): 9,000,000,000 s, about 285 years.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(MAX_LEASE_TTL_SECS as u64);

const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

/// The etcd lease TTL for `ttl`: whole seconds rounded up, at least 1; `None` above
/// [`MAX_LEASE_TTL`]. Never overflows, `Duration::MAX` included.
pub(crate) fn lease_secs(ttl: Duration) -> Option<i64> {
    let secs = ttl
        .as_secs()
        .checked_add(u64::from(ttl.subsec_nanos() > 0))?
        .max(1);
    i64::try_from(secs)
        .ok()
        .filter(|s| *s <= MAX_LEASE_TTL_SECS)
}

/// The lease seconds of an instance's TTL (zero: the registry's `default_secs`).
///
/// # Errors
/// [`Error::InvalidInstance`] above [`MAX_LEASE_TTL`].
pub(crate) fn instance_lease_secs(info: &ServiceInfo, default_secs: i64) -> Result<i64> {
    if info.ttl.is_zero() {
        return Ok(default_secs);
    }
    lease_secs(info.ttl).ok_or_else(|| {
        Error::InvalidInstance(format!(
            "ttl {:?} is above etcd's longest lease TTL ({} s)",
            info.ttl, MAX_LEASE_TTL_SECS
        ))
    })
}

/// The lease id and how many times it was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseSlot {
    pub(crate) id: i64,
    pub(crate) generation: u64,
}

/// One lease of the registry: its TTL, its current id, and the signals its keep-alive task
/// answers.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) ttl_secs: i64,
    slot: watch::Sender<LeaseSlot>,
    /// A call found the lease gone: the keep-alive task checks at once.
    pub(crate) suspect: Notify,
    /// `renew` asks for an immediate keep-alive.
    pub(crate) renew_now: Notify,
    /// Keys of ours on this lease are known to be missing (logged once per episode).
    pub(crate) keys_missing: AtomicBool,
    /// Set when the last instance left: the keep-alive task ends.
    retired: watch::Sender<bool>,
}

impl Lease {
    pub(crate) fn new(ttl_secs: i64, id: i64) -> Self {
        Lease {
            ttl_secs,
            slot: watch::Sender::new(LeaseSlot { id, generation: 0 }),
            suspect: Notify::new(),
            renew_now: Notify::new(),
            keys_missing: AtomicBool::new(false),
            retired: watch::Sender::new(false),
        }
    }

    pub(crate) fn id(&self) -> i64 {
        self.slot.borrow().id
    }

    /// Records a newly granted id.
    pub(crate) fn replace(&self, id: i64) {
        self.slot.send_modify(|s| {
            s.id = id;
            s.generation += 1;
        });
    }

    /// Resolves once the lease is retired.
    pub(crate) async fn retired(&self) {
        let mut rx = self.retired.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    #[cfg(test)]
    pub(crate) fn is_retired(&self) -> bool {
        *self.retired.borrow()
    }

    fn retire(&self) {
        self.retired.send_replace(true);
    }
}

/// The registry's leases by TTL in seconds; the default one is always there.
#[derive(Debug)]
pub(crate) struct Leases {
    default_secs: i64,
    default: Arc<Lease>,
    map: Mutex<BTreeMap<i64, Arc<Lease>>>,
}

impl Leases {
    pub(crate) fn new(default: Lease) -> Self {
        let default = Arc::new(default);
        Leases {
            default_secs: default.ttl_secs,
            map: Mutex::new(BTreeMap::from([(default.ttl_secs, default.clone())])),
            default,
        }
    }

    pub(crate) fn default_secs(&self) -> i64 {
        self.default_secs
    }

    pub(crate) fn default_lease(&self) -> &Arc<Lease> {
        &self.default
    }

    pub(crate) fn get(&self, ttl_secs: i64) -> Option<Arc<Lease>> {
        self.map.lock().get(&ttl_secs).cloned()
    }

    /// Adds `lease` unless one with its TTL exists; returns the lease in the set and whether it
    /// is the one given.
    pub(crate) fn insert(&self, lease: Lease) -> (Arc<Lease>, bool) {
        let mut map = self.map.lock();
        if let Some(existing) = map.get(&lease.ttl_secs) {
            return (existing.clone(), false);
        }
        let lease = Arc::new(lease);
        map.insert(lease.ttl_secs, lease.clone());
        (lease, true)
    }

    pub(crate) fn all(&self) -> Vec<Arc<Lease>> {
        self.map.lock().values().cloned().collect()
    }

    /// Whether `id` is one of our leases.
    pub(crate) fn owns(&self, id: i64) -> bool {
        id != 0 && self.map.lock().values().any(|l| l.id() == id)
    }

    /// The TTLs (other than the default) whose lease no instance in `counts` uses.
    pub(crate) fn idle(&self, counts: &BTreeMap<i64, usize>) -> Vec<i64> {
        self.map
            .lock()
            .keys()
            .copied()
            .filter(|s| *s != self.default_secs && counts.get(s).copied().unwrap_or(0) == 0)
            .collect()
    }

    /// Removes and retires the lease of `ttl_secs` (never the default one).
    pub(crate) fn remove(&self, ttl_secs: i64) -> Option<Arc<Lease>> {
        if ttl_secs == self.default_secs {
            return None;
        }
        let lease = self.map.lock().remove(&ttl_secs)?;
        lease.retire();
        Some(lease)
    }

    /// Wakes every keep-alive task to check its lease (a call found a lease gone).
    pub(crate) fn suspect_all(&self) {
        for l in self.map.lock().values() {
            l.suspect.notify_one();
        }
    }
}

/// One instance this registry registered, with the TTL of the lease it hangs on.
#[derive(Debug, Clone)]
pub(crate) struct Owned {
    pub(crate) info: ServiceInfo,
    pub(crate) lease_secs: i64,
}

/// The instances this registry registered (put again after a lease loss or a deletion), and
/// how many use each lease TTL.
#[derive(Debug, Default)]
pub(crate) struct Ours {
    by_id: HashMap<String, Owned>,
    per_ttl: BTreeMap<i64, usize>,
}

impl Ours {
    pub(crate) fn get(&self, id: &str) -> Option<&Owned> {
        self.by_id.get(id)
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(crate) fn insert(&mut self, owned: Owned) {
        *self.per_ttl.entry(owned.lease_secs).or_default() += 1;
        if let Some(old) = self.by_id.insert(owned.info.id.clone(), owned) {
            self.uncount(old.lease_secs);
        }
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<Owned> {
        let old = self.by_id.remove(id)?;
        self.uncount(old.lease_secs);
        Some(old)
    }

    fn uncount(&mut self, secs: i64) {
        if let Some(n) = self.per_ttl.get_mut(&secs) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ttl.remove(&secs);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.by_id.clear();
        self.per_ttl.clear();
    }

    /// How many instances use each lease TTL.
    pub(crate) fn counts(&self) -> &BTreeMap<i64, usize> {
        &self.per_ttl
    }

    /// The instances on the lease of `ttl_secs`.
    pub(crate) fn on_lease(&self, ttl_secs: i64) -> Vec<ServiceInfo> {
        self.by_id
            .values()
            .filter(|o| o.lease_secs == ttl_secs)
            .map(|o| o.info.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(lease_secs(Duration::from_nanos(1)), Some(1));
        assert_eq!(lease_secs(Duration::ZERO), Some(1));
        assert_eq!(lease_secs(Duration::from_millis(1500)), Some(2));
        assert_eq!(lease_secs(Duration::from_secs(5)), Some(5));
        assert_eq!(lease_secs(MAX_LEASE_TTL), Some(9_000_000_000));
    }

    #[test]
    fn ttls_above_etcds_maximum_are_refused_without_overflow() {
        assert_eq!(lease_secs(MAX_LEASE_TTL + Duration::from_nanos(1)), None);
        assert_eq!(lease_secs(Duration::from_secs(u64::MAX)), None);
        assert_eq!(lease_secs(Duration::MAX), None);
        let info = ServiceInfo::new("a", "s", "h", 1).with_ttl(Duration::MAX);
        let err = instance_lease_secs(&info, 30).unwrap_err();
        assert!(matches!(err, Error::InvalidInstance(_)), "{err:?}");
        assert!(err.to_string().contains("9000000000 s"), "{err}");
        let info = info.with_ttl(Duration::ZERO);
        assert_eq!(instance_lease_secs(&info, 30).unwrap(), 30);
    }

    #[test]
    fn ours_counts_instances_per_ttl() {
        let mut ours = Ours::default();
        let owned = |id: &str, secs| Owned {
            info: ServiceInfo::new(id, "s", "h", 1),
            lease_secs: secs,
        };
        ours.insert(owned("a", 5));
        ours.insert(owned("b", 5));
        ours.insert(owned("c", 30));
        assert_eq!(ours.counts(), &BTreeMap::from([(5, 2), (30, 1)]));
        // Registering `a` again with another TTL moves it.
        ours.insert(owned("a", 30));
        assert_eq!(ours.counts(), &BTreeMap::from([(5, 1), (30, 2)]));
        ours.remove("b");
        assert_eq!(ours.counts(), &BTreeMap::from([(30, 2)]));
        assert_eq!(ours.on_lease(30).len(), 2);

        let leases = Leases::new(Lease::new(30, 1));
        leases.insert(Lease::new(5, 2));
        leases.insert(Lease::new(7, 3));
        ours.insert(owned("d", 7));
        assert_eq!(leases.idle(ours.counts()), [5]);
        let five = leases.remove(5).expect("removed");
        assert!(five.is_retired());
        assert!(leases.remove(30).is_none(), "the default lease stays");
        assert!(leases.owns(3) && !leases.owns(2) && !leases.owns(0));
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;
    use crate::EtcdConfig;

    #[test]
    fn configured_ttl_zero_and_max_are_clear_errors_not_panics() {
        let base = EtcdConfig::new(["http://127.0.0.1:2379"]);
        for ttl in [
            Duration::ZERO,
            Duration::MAX,
            MAX_LEASE_TTL + Duration::from_secs(1),
        ] {
            let c = base.clone().with_ttl(ttl);
            let err = c.validate().unwrap_err();
            assert!(matches!(err, Error::InvalidConfig(_)), "{ttl:?}: {err:?}");
            assert!(err.to_string().contains("ttl"), "{err}");
            // Never an overflow, even unvalidated.
            assert!((1..=9_000_000_000).contains(&c.ttl_secs()));
        }
        // The configured TTL's bound is 365 days; ttl_secs never goes past etcd's limit even for
        // a config that was not validated.
        let year = base.clone().with_ttl(Duration::from_secs(365 * 24 * 3600));
        year.validate().unwrap();
        assert_eq!(year.ttl_secs(), 365 * 24 * 3600);
        let longest = base.with_ttl(MAX_LEASE_TTL);
        assert!(longest.validate().is_err());
        assert_eq!(longest.ttl_secs(), 9_000_000_000);
    }
}
