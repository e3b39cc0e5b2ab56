//! [`InstanceView`]: what a watcher knows about a set of instances, and the one way every part
//! of waypost turns snapshots and changes into events.
//!
//! Every backend's watch hub, the discovery cache and anyone who consumes a
//! [`WatchStream`](crate::WatchStream) can keep an `InstanceView`: apply each
//! [`WatchEvent`](crate::WatchEvent) to it and get back the changes it made, in one order for
//! everyone:
//!
//! 1. `Created` and `Updated` events, by service name, then instance id;
//! 2. then `Deleted` events, by service name, then instance id.
//!
//! Additions come before removals so that a consumer that applies the events one by one never
//! sees a service empty in between when one instance replaces another.
//!
//! ```
//! use waypost_core_types::{InstanceView, Scope, ServiceEvent, ServiceEventType, ServiceInfo};
//!
//! let mut view = InstanceView::new();
//! let a = ServiceInfo::new("a-1", "a", "10.0.0.1", 80);
//! // A change the view did not know of is reported as `Created`.
//! let ev = view.apply(ServiceEvent::updated(a.clone())).unwrap();
//! assert_eq!(ev.kind, ServiceEventType::Created);
//! // A snapshot replaces a scope and reports the difference.
//! let b = ServiceInfo::new("a-2", "a", "10.0.0.2", 80);
//! let diff = view.replace(&Scope::Service("a".into()), vec![b.clone()]);
//! assert_eq!(diff, vec![ServiceEvent::created(b), ServiceEvent::deleted(a)]);
//! ```

use std::collections::btree_map::{BTreeMap, Entry};
use std::sync::Arc;

use crate::{ServiceEvent, ServiceEventType, ServiceInfo, WatchEvent};

/// What a watch covers: every service, or one service name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every service.
    All,
    /// One service name.
    Service(String),
}

impl Scope {
    /// Whether an instance of service `name` is in scope.
    pub fn covers(&self, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Service(n) => n == name,
        }
    }

    /// Whether everything in `other` is also in `self`.
    pub fn contains(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::All, _) => true,
            (Scope::Service(a), Scope::Service(b)) => a == b,
            (Scope::Service(_), Scope::All) => false,
        }
    }
}

/// A set of instances keyed by service name and instance id, kept in that order.
///
/// Instances are shared (`Arc`), so taking a snapshot or fanning a change out copies pointers,
/// not data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceView {
    services: BTreeMap<String, BTreeMap<String, Arc<ServiceInfo>>>,
    len: usize,
}

impl InstanceView {
    /// An empty view.
    pub fn new() -> Self {
        InstanceView::default()
    }

    /// How many instances the view holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view holds no instance.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One instance.
    pub fn get(&self, name: &str, id: &str) -> Option<&Arc<ServiceInfo>> {
        self.services.get(name)?.get(id)
    }

    /// The instances of one service, by id.
    pub fn service(&self, name: &str) -> impl Iterator<Item = &Arc<ServiceInfo>> + '_ {
        self.services.get(name).into_iter().flat_map(|m| m.values())
    }

    /// The names of the services that have at least one instance, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.services.keys().map(String::as_str)
    }

    /// Every instance in scope, by service name, then id.
    pub fn iter<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> Box<dyn Iterator<Item = &'a Arc<ServiceInfo>> + 'a> {
        match scope {
            Scope::All => Box::new(self.services.values().flat_map(|m| m.values())),
            Scope::Service(name) => Box::new(self.service(name)),
        }
    }

    /// Copies of every instance in scope, by service name, then id.
    pub fn snapshot(&self, scope: &Scope) -> Vec<ServiceInfo> {
        self.iter(scope).map(|s| (**s).clone()).collect()
    }

    /// The shared instances in scope, by service name, then id.
    pub fn snapshot_shared(&self, scope: &Scope) -> Vec<Arc<ServiceInfo>> {
        self.iter(scope).cloned().collect()
    }

    /// Applies one change and returns the change as the view saw it, or `None` when it changed
    /// nothing:
    /// - `Created` or `Updated` of an unknown instance is `Created`; of a known one, `Updated`
    ///   (even when equal: a registration is an upsert and says so);
    /// - `Deleted` of a known instance is `Deleted` with the last known state of it (a backend
    ///   that only knows the id and name from a key still reports the whole instance); of an
    ///   unknown one, `None`.
    pub fn apply(&mut self, event: ServiceEvent) -> Option<ServiceEvent> {
        self.apply_shared(event.kind, Arc::new(event.service))
            .map(|(kind, service)| ServiceEvent {
                kind,
                service: Arc::unwrap_or_clone(service),
            })
    }

    /// [`apply`](Self::apply) for a shared instance: the view keeps the `Arc` and returns the
    /// one to report.
    pub fn apply_shared(
        &mut self,
        kind: ServiceEventType,
        service: Arc<ServiceInfo>,
    ) -> Option<(ServiceEventType, Arc<ServiceInfo>)> {
        match kind {
            ServiceEventType::Created | ServiceEventType::Updated => Some(self.insert(service)),
            ServiceEventType::Deleted => self
                .remove(&service.name, &service.id)
                .map(|old| (ServiceEventType::Deleted, old)),
        }
    }

    /// Inserts or replaces one instance; `Created` or `Updated`.
    pub fn insert(&mut self, service: Arc<ServiceInfo>) -> (ServiceEventType, Arc<ServiceInfo>) {
        // A known instance is replaced without allocating its keys again.
        if let Some(slot) = self
            .services
            .get_mut(service.name.as_str())
            .and_then(|ids| ids.get_mut(service.id.as_str()))
        {
            *slot = Arc::clone(&service);
            return (ServiceEventType::Updated, service);
        }
        let ids = self.services.entry(service.name.clone()).or_default();
        match ids.entry(service.id.clone()) {
            Entry::Occupied(mut o) => {
                o.insert(Arc::clone(&service));
                (ServiceEventType::Updated, service)
            }
            Entry::Vacant(v) => {
                v.insert(Arc::clone(&service));
                self.len += 1;
                (ServiceEventType::Created, service)
            }
        }
    }

    /// Removes one instance and returns it.
    pub fn remove(&mut self, name: &str, id: &str) -> Option<Arc<ServiceInfo>> {
        let ids = self.services.get_mut(name)?;
        let old = ids.remove(id)?;
        if ids.is_empty() {
            self.services.remove(name);
        }
        self.len -= 1;
        Some(old)
    }

    /// Replaces everything in `scope` with `services` (instances outside the scope are ignored)
    /// and returns the difference: `Created` and `Updated` (only instances that differ) by name
    /// and id, then `Deleted` by name and id.
    pub fn replace(&mut self, scope: &Scope, services: Vec<ServiceInfo>) -> Vec<ServiceEvent> {
        self.replace_shared(scope, services.into_iter().map(Arc::new).collect())
            .into_iter()
            .map(|(kind, service)| ServiceEvent {
                kind,
                service: Arc::unwrap_or_clone(service),
            })
            .collect()
    }

    /// [`replace`](Self::replace) with shared instances.
    pub fn replace_shared(
        &mut self,
        scope: &Scope,
        services: Vec<Arc<ServiceInfo>>,
    ) -> Vec<(ServiceEventType, Arc<ServiceInfo>)> {
        let mut next: BTreeMap<String, BTreeMap<String, Arc<ServiceInfo>>> = BTreeMap::new();
        for s in services {
            if scope.covers(&s.name) {
                next.entry(s.name.clone())
                    .or_default()
                    .insert(s.id.clone(), s);
            }
        }
        let mut changed = Vec::new();
        for (name, ids) in &next {
            let old = self.services.get(name);
            for (id, s) in ids {
                match old.and_then(|o| o.get(id)) {
                    None => changed.push((ServiceEventType::Created, Arc::clone(s))),
                    Some(o) if **o != **s => {
                        changed.push((ServiceEventType::Updated, Arc::clone(s)))
                    }
                    Some(_) => {}
                }
            }
        }
        let mut deleted = Vec::new();
        let old_names: Vec<String> = match scope {
            Scope::All => self.services.keys().cloned().collect(),
            Scope::Service(name) => vec![name.clone()],
        };
        for name in old_names {
            let Some(old) = self.services.remove(&name) else {
                continue;
            };
            self.len -= old.len();
            let fresh = next.get(&name);
            for (id, s) in old {
                if fresh.is_none_or(|f| !f.contains_key(&id)) {
                    deleted.push((ServiceEventType::Deleted, s));
                }
            }
        }
        for (name, ids) in next {
            self.len += ids.len();
            self.services.insert(name, ids);
        }
        changed.extend(deleted);
        changed
    }

    /// Applies one item of a watch stream over `scope` and returns the changes it made: a
    /// snapshot replaces the scope (the first one of a stream makes the view; later ones, after
    /// lag or a reconnect, report what changed in between), a change is applied as by
    /// [`apply`](Self::apply).
    pub fn apply_watch_event(&mut self, scope: &Scope, event: WatchEvent) -> Vec<ServiceEvent> {
        match event {
            WatchEvent::Snapshot { services, .. } => self.replace(scope, services),
            WatchEvent::Change(c) => self.apply(c).into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, id: &str, port: u16) -> ServiceInfo {
        ServiceInfo::new(id, name, "10.0.0.1", port)
    }

    #[test]
    fn replace_reports_additions_before_removals_in_name_then_id_order() {
        let mut view = InstanceView::new();
        view.replace(
            &Scope::All,
            vec![svc("b", "b1", 1), svc("a", "a2", 1), svc("a", "a1", 1)],
        );
        assert_eq!(view.len(), 3);
        let diff = view.replace(
            &Scope::All,
            vec![svc("c", "c1", 1), svc("a", "a2", 2), svc("a", "a0", 1)],
        );
        let got: Vec<(ServiceEventType, &str)> = diff
            .iter()
            .map(|e| (e.kind, e.service.id.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (ServiceEventType::Created, "a0"),
                (ServiceEventType::Updated, "a2"),
                (ServiceEventType::Created, "c1"),
                (ServiceEventType::Deleted, "a1"),
                (ServiceEventType::Deleted, "b1"),
            ]
        );
        assert_eq!(view.len(), 3);
        assert_eq!(view.names().collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn replacing_one_service_leaves_the_others_and_ignores_strays() {
        let mut view = InstanceView::new();
        view.replace(&Scope::All, vec![svc("a", "a1", 1), svc("b", "b1", 1)]);
        let diff = view.replace(&Scope::Service("a".into()), vec![svc("b", "stray", 1)]);
        assert_eq!(diff, vec![ServiceEvent::deleted(svc("a", "a1", 1))]);
        assert_eq!(view.len(), 1);
        assert!(view.get("b", "b1").is_some());
        assert!(view.get("b", "stray").is_none());
        assert!(view
            .replace(&Scope::Service("b".into()), vec![svc("b", "b1", 1)])
            .is_empty());
    }

    #[test]
    fn delete_reports_the_last_known_state() {
        let mut view = InstanceView::new();
        view.apply(ServiceEvent::created(svc("a", "a1", 7)));
        // A backend that only knows the key's name and id.
        let gone = view.apply(ServiceEvent::deleted(ServiceInfo::new("a1", "a", "", 0)));
        assert_eq!(gone.unwrap().service.port, 7);
        assert!(view.is_empty());
        assert!(view
            .apply(ServiceEvent::deleted(svc("a", "a1", 7)))
            .is_none());
    }

    #[test]
    fn watch_events_rebuild_the_view() {
        let mut view = InstanceView::new();
        let scope = Scope::Service("a".into());
        let first = view.apply_watch_event(
            &scope,
            WatchEvent::Snapshot {
                services: vec![svc("a", "a1", 1)],
                reason: crate::SnapshotReason::Initial,
            },
        );
        assert_eq!(first.len(), 1);
        let ev = view.apply_watch_event(
            &scope,
            WatchEvent::Change(ServiceEvent::created(svc("a", "a1", 2))),
        );
        assert_eq!(ev[0].kind, ServiceEventType::Updated);
        assert_eq!(view.snapshot(&scope)[0].port, 2);
    }
}
