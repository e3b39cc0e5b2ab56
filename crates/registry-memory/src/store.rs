//! The two concurrent maps behind the registry and every mutation of them.
//!
//! `names` holds the instances per service name (so listing one service touches one shard) and
//! `ids` maps an instance id to its service name. Every mutation of an id holds that id's shard
//! lock in `ids` first and then the name's shard lock in `names` (always in that order), and
//! hands its change to the watch hub while holding both, so the changes of one id reach the
//! hub's view and its watchers in order. Readers take one shard lock at a time.
//!
//! Each id and each name is allocated once as an `Arc<str>` and shared by both maps, and each
//! instance once as an `Arc<ServiceInfo>` shared by the store, the hub's view and every shared
//! watcher and reader: a registered instance costs its own data plus a few pointers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::time::Instant;
use waypost_core_types::{Error, Result, ServiceEventType, ServiceInfo, Timestamp, WatchHub};

/// One stored instance.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) info: Arc<ServiceInfo>,
    /// When it expires unless renewed; `None` never.
    pub(crate) deadline: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Store {
    /// Id → service name (the same `Arc` as the key of `names`).
    ids: DashMap<Arc<str>, Arc<str>>,
    /// Service name → id (the same `Arc` as the key of `ids`) → instance.
    names: DashMap<Arc<str>, HashMap<Arc<str>, Slot>>,
    pub(crate) hub: WatchHub,
    default_ttl: Option<Duration>,
}

enum Mode {
    Upsert,
    UpdateOnly,
}

impl Store {
    pub(crate) fn new(watch_buffer: usize, default_ttl: Option<Duration>) -> Self {
        Store {
            ids: DashMap::new(),
            names: DashMap::new(),
            hub: WatchHub::new("memory", watch_buffer),
            default_ttl,
        }
    }

    /// The TTL that applies to `info`: its own, else the registry's default.
    fn ttl_of(&self, info: &ServiceInfo) -> Option<Duration> {
        if info.ttl.is_zero() {
            self.default_ttl
        } else {
            Some(info.ttl)
        }
    }

    /// Hands a change to the watch hub (called with the id's shard locks held).
    fn emit(&self, kind: ServiceEventType, info: &Arc<ServiceInfo>) {
        self.hub.apply_shared(kind, Arc::clone(info));
    }

    pub(crate) fn register(&self, service: &ServiceInfo) -> Result<()> {
        self.write(service, Mode::Upsert)
    }

    pub(crate) fn update(&self, service: &ServiceInfo) -> Result<()> {
        self.write(service, Mode::UpdateOnly)
    }

    fn write(&self, service: &ServiceInfo, mode: Mode) -> Result<()> {
        service.validate()?;
        let deadline = expiry(Instant::now(), self.ttl_of(service));
        // Fastest path: the id is registered under this very name. That name's shard lock is
        // enough: `names[n]` holds `id` only while `ids[id] == n`, and moving or removing the
        // id takes this same lock.
        if let Some(mut map) = self.names.get_mut(service.name.as_str()) {
            if let Some(slot) = map.get_mut(service.id.as_str()) {
                self.overwrite(slot, service, deadline);
                return Ok(());
            }
        }
        // Fast path: a known id is locked without allocating a key.
        if let Some(mut entry) = self.ids.get_mut(service.id.as_str()) {
            let id = Arc::clone(entry.key());
            return self
                .write_locked(service, &id, Some(entry.value_mut()), deadline)
                .map(drop);
        }
        if matches!(mode, Mode::UpdateOnly) {
            return Err(Error::NotFound(service.id.clone()));
        }
        match self.ids.entry(Arc::from(service.id.as_str())) {
            // Registered concurrently since the fast path looked.
            Entry::Occupied(o) => {
                let id = Arc::clone(o.key());
                let mut entry = o.into_ref();
                self.write_locked(service, &id, Some(entry.value_mut()), deadline)
                    .map(drop)
            }
            Entry::Vacant(v) => {
                let id = Arc::clone(v.key());
                let name = self.write_locked(service, &id, None, deadline)?;
                v.insert(name);
                Ok(())
            }
        }
    }

    /// Replaces a stored instance with a new registration of it (same id and name), reusing the
    /// stored value's allocations when no watcher or reader holds it.
    fn overwrite(&self, slot: &mut Slot, service: &ServiceInfo, deadline: Option<Instant>) {
        let now = Timestamp::now();
        let created_at = if slot.info.created_at.is_zero() {
            now
        } else {
            slot.info.created_at
        };
        let stamp = |info: &mut ServiceInfo| {
            info.created_at = created_at;
            info.updated_at = now;
            info.last_check = now;
        };
        match Arc::get_mut(&mut slot.info) {
            Some(info) => {
                info.clone_from(service);
                stamp(info);
            }
            None => {
                let mut info = service.clone();
                stamp(&mut info);
                slot.info = Arc::new(info);
            }
        }
        self.emit(ServiceEventType::Updated, &slot.info);
        slot.deadline = deadline;
    }

    /// Writes `service` while its id's shard lock is held; `current_name` is the service name
    /// it is registered under, if it is registered (it is set to the new name). Returns the
    /// service name as the key `names` holds it.
    fn write_locked(
        &self,
        service: &ServiceInfo,
        id: &Arc<str>,
        current_name: Option<&mut Arc<str>>,
        deadline: Option<Instant>,
    ) -> Result<Arc<str>> {
        let now = Timestamp::now();
        // The instance moved to another service name: it leaves the old one.
        let mut moved_from: Option<Arc<ServiceInfo>> = None;
        let moved = match &current_name {
            Some(old) => &***old != service.name.as_str(),
            None => false,
        };
        if let (true, Some(old)) = (moved, &current_name) {
            if let Some(mut map) = self.names.get_mut(&***old) {
                if let Some(slot) = map.remove(service.id.as_str()) {
                    self.emit(ServiceEventType::Deleted, &slot.info);
                    moved_from = Some(slot.info);
                }
            }
            self.names.remove_if(&***old, |_, m| m.is_empty());
        }

        let mut by_name = match self.names.get_mut(service.name.as_str()) {
            Some(map) => map,
            None => self
                .names
                .entry(Arc::from(service.name.as_str()))
                .or_default(),
        };
        let name = Arc::clone(by_name.key());
        match by_name.get_mut(service.id.as_str()) {
            Some(slot) => self.overwrite(slot, service, deadline),
            None => {
                let mut info = service.clone();
                info.stamp(now, moved_from.as_deref());
                let info = Arc::new(info);
                self.emit(ServiceEventType::Created, &info);
                by_name.insert(Arc::clone(id), Slot { info, deadline });
            }
        }
        if let (true, Some(old)) = (moved, current_name) {
            *old = Arc::clone(&name);
        }
        Ok(name)
    }

    /// Removes `id`; with `only_if_expired_at`, only when its deadline has passed by then.
    /// Returns whether it was removed.
    fn remove(&self, id: &str, only_if_expired_at: Option<Instant>) -> bool {
        // The id's shard lock is held while the closure runs, then the name's.
        self.ids
            .remove_if(id, |_, name| {
                let mut removed = false;
                if let Some(mut map) = self.names.get_mut(&**name) {
                    let expired = |slot: &Slot| match only_if_expired_at {
                        None => true,
                        Some(now) => slot.deadline.is_some_and(|d| d <= now),
                    };
                    if map.get(id).is_some_and(expired) {
                        if let Some(slot) = map.remove(id) {
                            self.emit(ServiceEventType::Deleted, &slot.info);
                            removed = true;
                        }
                    }
                }
                if removed {
                    self.names.remove_if(&**name, |_, m| m.is_empty());
                }
                removed
            })
            .is_some()
    }

    pub(crate) fn deregister(&self, id: &str) -> Result<()> {
        if self.remove(id, None) {
            Ok(())
        } else {
            Err(Error::NotFound(id.to_owned()))
        }
    }

    pub(crate) fn renew(&self, id: &str) -> Result<()> {
        // The id's shard lock is held throughout, as by every mutation.
        let name = self
            .ids
            .get(id)
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        let mut map = self
            .names
            .get_mut(&**name)
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        let slot = map
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        let now = Instant::now();
        if slot.deadline.is_some_and(|d| d <= now) {
            // Expired but not yet collected: too late to renew.
            return Err(Error::NotFound(id.to_owned()));
        }
        slot.deadline = expiry(now, self.ttl_of(&slot.info));
        let now = Timestamp::now();
        match Arc::get_mut(&mut slot.info) {
            Some(info) => info.last_check = now,
            None => {
                let mut info = (*slot.info).clone();
                info.last_check = now;
                slot.info = Arc::new(info);
                // A renewal is no change for watchers, but the view shares the new value so that
                // snapshots show it and the old one is freed once no reader holds it.
                self.hub.refresh_shared(Arc::clone(&slot.info));
            }
        }
        Ok(())
    }

    pub(crate) fn get(&self, id: &str) -> Result<ServiceInfo> {
        let name = self
            .ids
            .get(id)
            .map(|n| Arc::clone(n.value()))
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        let map = self
            .names
            .get(&*name)
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        map.get(id)
            .map(|slot| (*slot.info).clone())
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    pub(crate) fn list_all(&self) -> Vec<ServiceInfo> {
        let mut out = Vec::new();
        for map in self.names.iter() {
            out.extend(map.values().map(|s| (*s.info).clone()));
        }
        out
    }

    pub(crate) fn list_name(&self, name: &str) -> Vec<ServiceInfo> {
        self.names
            .get(name)
            .map(|map| map.values().map(|s| (*s.info).clone()).collect())
            .unwrap_or_default()
    }

    /// Shared handles to the instances of one service (no copy of the data).
    pub(crate) fn shared_name(&self, name: &str) -> Vec<Arc<ServiceInfo>> {
        self.names
            .get(name)
            .map(|map| map.values().map(|s| Arc::clone(&s.info)).collect())
            .unwrap_or_default()
    }

    /// Removes every instance whose deadline passed by `now`; returns how many.
    pub(crate) fn expire(&self, now: Instant) -> usize {
        let mut expired = Vec::new();
        for map in self.names.iter() {
            expired.extend(
                map.iter()
                    .filter(|(_, s)| s.deadline.is_some_and(|d| d <= now))
                    .map(|(id, _)| id.clone()),
            );
        }
        expired
            .iter()
            .filter(|id| self.remove(id, Some(now)))
            .count()
    }

    pub(crate) fn clear(&self) {
        self.names.clear();
        self.ids.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// When an instance with `ttl` renewed at `now` expires: `None` without a TTL, and also for a
/// TTL too long to represent as an instant (`Duration::MAX` and the like), which never expires.
fn expiry(now: Instant, ttl: Option<Duration>) -> Option<Instant> {
    ttl.and_then(|ttl| now.checked_add(ttl))
}
