//! What the registry knows: its own registrations and other clients' instances, and the hubs
//! they are published to.
//!
//! Instances this registry registered are known locally (keyed by our id); the server is the
//! truth for everyone else's instances. What a watch sees of a service is "the server's foreign
//! instances + our own": our changes are published as soon as the server acknowledged them (so
//! they are in order and never coalesced), other clients' changes arrive as Nacos pushes, each of
//! which triggers a fresh query (pushes may be delivered out of order by the SDK, a query is not)
//! whose answer replaces the service in the hubs that follow it. Every publication happens under
//! the one lock of [`State`], so the hubs see the changes in the order they were made.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use nacos_sdk::api::naming::{NamingEventListener, ServiceInstance};
use tokio::time::Instant;
use waypost_core_types::{Scope, ServiceInfo, SnapshotReason, WatchHub};

use crate::codec::from_instance;

/// How long an id we deregistered is ignored in server answers that may still show it.
const TOMBSTONE_TTL: Duration = Duration::from_secs(30);

/// One of our registrations.
#[derive(Clone)]
pub(crate) struct Reg {
    pub(crate) info: ServiceInfo,
    /// The SDK connection it was registered through.
    pub(crate) slot: usize,
    pub(crate) inst: ServiceInstance,
}

/// A service subscribed with the SDK.
pub(crate) struct Subscribed {
    /// Other clients' instances, as last queried.
    pub(crate) foreign: BTreeMap<String, ServiceInfo>,
    pub(crate) listener: Arc<dyn NamingEventListener>,
    /// How many feeds follow the service; unsubscribed at zero.
    pub(crate) users: usize,
}

/// One hub being fed: the services it follows (one for `watch_service`, every known one for
/// `watch`).
pub(crate) struct Feed {
    pub(crate) id: u64,
    pub(crate) scope: Scope,
    pub(crate) hub: WatchHub,
    pub(crate) names: BTreeSet<String>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) ours: HashMap<String, Reg>,
    /// Ids we deregistered (with their service), ignored in server answers that still show them.
    pub(crate) tombstones: HashMap<String, (String, Instant)>,
    /// Failed registrations the SDK may still redo, to take back once the server answers: by
    /// (service, slot), which stays reserved meanwhile.
    pub(crate) pending_retract: HashMap<(String, usize), ServiceInstance>,
    pub(crate) subscribed: HashMap<String, Subscribed>,
    pub(crate) feeds: Vec<Feed>,
    pub(crate) next_feed: u64,
}

impl State {
    pub(crate) fn is_tombstoned(&self, id: &str) -> bool {
        self.tombstones
            .get(id)
            .is_some_and(|(_, t)| t.elapsed() < TOMBSTONE_TTL)
    }

    pub(crate) fn tombstone(&mut self, id: &str, name: &str) {
        self.tombstones
            .insert(id.to_owned(), (name.to_owned(), Instant::now()));
    }

    pub(crate) fn ours_in<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Reg> + 'a {
        self.ours.values().filter(move |r| r.info.name == name)
    }

    /// The lowest SDK connection that holds no instance of `name` (nor a pending retraction).
    pub(crate) fn free_slot(&self, name: &str) -> usize {
        let used: HashSet<usize> = self
            .ours_in(name)
            .map(|r| r.slot)
            .chain(
                self.pending_retract
                    .keys()
                    .filter(|(n, _)| n == name)
                    .map(|(_, s)| *s),
            )
            .collect();
        (0..).find(|i| !used.contains(i)).unwrap_or(0)
    }

    /// Decodes a server answer for `name` into other clients' instances.
    pub(crate) fn decode_foreign(
        &mut self,
        name: &str,
        list: &[ServiceInstance],
    ) -> BTreeMap<String, ServiceInfo> {
        let mut foreign = BTreeMap::new();
        let mut seen = HashSet::new();
        for inst in list {
            match from_instance(inst, name) {
                Ok(s) => {
                    seen.insert(s.id.clone());
                    if self.ours.contains_key(&s.id) || self.is_tombstoned(&s.id) {
                        continue;
                    }
                    foreign.insert(s.id.clone(), s);
                }
                Err(e) => tracing::warn!(
                    target: "waypost::nacos",
                    service = name,
                    ip = inst.ip.as_str(),
                    port = inst.port,
                    "skipping a Nacos instance that is not a valid service instance: {e}"
                ),
            }
        }
        // A tombstone is needed only while the server still shows the id; old ones expire.
        self.tombstones.retain(|id, (service, t)| {
            t.elapsed() < TOMBSTONE_TTL && (service != name || seen.contains(id))
        });
        foreign
    }

    /// Stores a server answer for a subscribed service (without publishing it).
    pub(crate) fn set_foreign(&mut self, name: &str, list: &[ServiceInstance]) {
        let foreign = self.decode_foreign(name, list);
        if let Some(sub) = self.subscribed.get_mut(name) {
            sub.foreign = foreign;
        }
    }

    /// Everything of service `name`: foreign instances and ours, by id.
    pub(crate) fn combined(&self, name: &str) -> Vec<ServiceInfo> {
        let mut out: BTreeMap<&str, &ServiceInfo> = self
            .subscribed
            .get(name)
            .map(|v| {
                v.foreign
                    .iter()
                    .filter(|(id, _)| !self.ours.contains_key(*id) && !self.is_tombstoned(id))
                    .map(|(id, s)| (id.as_str(), s))
                    .collect()
            })
            .unwrap_or_default();
        for r in self.ours_in(name) {
            out.insert(&r.info.id, &r.info);
        }
        out.into_values().cloned().collect()
    }

    /// Everything a feed follows.
    fn feed_list(&self, feed: &Feed) -> Vec<ServiceInfo> {
        feed.names.iter().flat_map(|n| self.combined(n)).collect()
    }

    /// Hands the current state of service `name` to every hub that follows it; the hubs tell
    /// their streams what changed.
    pub(crate) fn publish(&self, name: &str) {
        let mut list = None;
        for feed in self.feeds.iter().filter(|f| f.names.contains(name)) {
            let list = list.get_or_insert_with(|| self.combined(name));
            feed.hub
                .replace(&Scope::Service(name.to_owned()), list.clone(), None);
        }
    }

    /// Hands a feed's whole state to its hub: every stream gets a snapshot with `reason`.
    pub(crate) fn publish_snapshot(&self, feed: &Feed, reason: SnapshotReason) {
        feed.hub
            .replace(&feed.scope, self.feed_list(feed), Some(reason));
    }

    pub(crate) fn feed_mut(&mut self, id: u64) -> Option<&mut Feed> {
        self.feeds.iter_mut().find(|f| f.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use waypost_core_types::{ServiceEventType, WatchEvent};

    fn reg(id: &str, name: &str, slot: usize) -> Reg {
        Reg {
            info: ServiceInfo::new(id, name, "h", 1),
            slot,
            inst: ServiceInstance::default(),
        }
    }

    #[test]
    fn free_slot_takes_the_lowest_unused() {
        let mut st = State::default();
        assert_eq!(st.free_slot("svc"), 0);
        st.ours.insert("a".into(), reg("a", "svc", 0));
        st.ours.insert("b".into(), reg("b", "svc", 2));
        assert_eq!(st.free_slot("svc"), 1);
        st.pending_retract
            .insert(("svc".into(), 1), ServiceInstance::default());
        assert_eq!(st.free_slot("svc"), 3);
        assert_eq!(st.free_slot("other"), 0);
    }

    #[tokio::test]
    async fn publish_feeds_the_hubs_that_follow_the_service_with_ours_over_foreign() {
        struct Nop;
        impl NamingEventListener for Nop {
            fn event(&self, _: Arc<nacos_sdk::api::naming::NamingChangeEvent>) {}
        }
        let mut st = State::default();
        let hub = WatchHub::new("test", 16);
        let mut watch = hub.subscribe(Scope::Service("svc".into())).unwrap();
        st.feeds.push(Feed {
            id: 0,
            scope: Scope::Service("svc".into()),
            hub: hub.clone(),
            names: ["svc".to_owned()].into(),
        });
        let foreign = ServiceInfo::new("f", "svc", "10.0.0.9", 9);
        st.subscribed.insert(
            "svc".into(),
            Subscribed {
                foreign: [("f".to_owned(), foreign.clone())].into(),
                listener: Arc::new(Nop),
                users: 1,
            },
        );
        st.ours.insert("a".into(), reg("a", "svc", 0));
        st.ours.insert("x".into(), reg("x", "other", 0));
        st.publish("svc");
        st.publish("other");
        assert!(matches!(
            watch.next().await,
            Some(WatchEvent::Snapshot { services, .. }) if services.is_empty()
        ));
        let mut got = Vec::new();
        for _ in 0..2 {
            match watch.next().await {
                Some(WatchEvent::Change(ev)) => got.push((ev.kind, ev.service.id)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            got,
            [
                (ServiceEventType::Created, "a".to_owned()),
                (ServiceEventType::Created, "f".to_owned())
            ]
        );
        // Our deregistered id is hidden while the server still shows it.
        st.ours.remove("a");
        st.tombstone("f", "svc");
        st.publish("svc");
        let mut gone = Vec::new();
        for _ in 0..2 {
            match watch.next().await {
                Some(WatchEvent::Change(ev)) => gone.push((ev.kind, ev.service.id)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            gone,
            [
                (ServiceEventType::Deleted, "a".to_owned()),
                (ServiceEventType::Deleted, "f".to_owned())
            ]
        );
        st.publish_snapshot(&st.feeds[0], SnapshotReason::Reconnected);
        assert!(matches!(
            watch.next().await,
            Some(WatchEvent::Snapshot {
                reason: SnapshotReason::Reconnected,
                ..
            })
        ));
    }
}
