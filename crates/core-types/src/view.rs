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

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
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
/// not data; and the view keys each instance by the id inside it, so it holds no copy of any id.
#[derive(Debug, Clone, Default)]
pub struct InstanceView {
    services: BTreeMap<String, BTreeSet<ById>>,
    len: usize,
}

/// An instance ordered, compared and looked up by its id alone.
#[derive(Debug, Clone)]
struct ById(Arc<ServiceInfo>);

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

/// Two views are equal when they hold equal instances (not only the same ids).
impl PartialEq for InstanceView {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len
            && self.services.len() == other.services.len()
            && self
                .services
                .iter()
                .zip(&other.services)
                .all(|((n1, a), (n2, b))| {
                    n1 == n2 && a.len() == b.len() && a.iter().zip(b).all(|(x, y)| *x.0 == *y.0)
                })
    }
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
        self.services.get(name)?.get(id).map(|s| &s.0)
    }

    /// The instances of one service, by id.
    pub fn service(&self, name: &str) -> impl Iterator<Item = &Arc<ServiceInfo>> + '_ {
        self.services
            .get(name)
            .into_iter()
            .flat_map(|m| m.iter().map(|s| &s.0))
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
            Scope::All => Box::new(self.services.values().flat_map(|m| m.iter().map(|s| &s.0))),
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
        let ids = match self.services.get_mut(service.name.as_str()) {
            Some(ids) => ids,
            // A new service name is the only key the view allocates.
            None => self.services.entry(service.name.clone()).or_default(),
        };
        if ids.replace(ById(Arc::clone(&service))).is_some() {
            (ServiceEventType::Updated, service)
        } else {
            self.len += 1;
            (ServiceEventType::Created, service)
        }
    }

    /// Replaces a known instance without reporting a change (for a source that changed only
    /// its own bookkeeping, such as a renewal's `last_check`, and wants the view to share its
    /// current value). Returns whether the instance was known; an unknown one is not added.
    pub fn refresh(&mut self, service: Arc<ServiceInfo>) -> bool {
        match self.services.get_mut(service.name.as_str()) {
            Some(ids) if ids.contains(service.id.as_str()) => {
                ids.replace(ById(service));
                true
            }
            _ => false,
        }
    }

    /// Removes one instance and returns it.
    pub fn remove(&mut self, name: &str, id: &str) -> Option<Arc<ServiceInfo>> {
        let ids = self.services.get_mut(name)?;
        let old = ids.take(id)?;
        if ids.is_empty() {
            self.services.remove(name);
        }
        self.len -= 1;
        Some(old.0)
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
        let mut next: BTreeMap<String, BTreeSet<ById>> = BTreeMap::new();
        for s in services {
            if scope.covers(&s.name) {
                // The last instance given for an id wins.
                next.entry(s.name.clone()).or_default().replace(ById(s));
            }
        }
        let mut changed = Vec::new();
        for (name, ids) in &next {
            let old = self.services.get(name);
            for s in ids {
                match old.and_then(|o| o.get(s.0.id.as_str())) {
                    None => changed.push((ServiceEventType::Created, Arc::clone(&s.0))),
                    Some(o) if *o.0 != *s.0 => {
                        changed.push((ServiceEventType::Updated, Arc::clone(&s.0)))
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
            for s in old {
                if fresh.is_none_or(|f| !f.contains(s.0.id.as_str())) {
                    deleted.push((ServiceEventType::Deleted, s.0));
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
