//! One HTTP/2 connection per instance: opened on first use, shared by every call to the
//! instance (HTTP/2 multiplexes them), opened again after it closed or failed (with a backoff
//! between failed attempts, never given up). When the instance leaves discovery its connection
//! drains: no new call uses it, the calls on it finish, and it is closed when the last one ends
//! or when the drain bound passes, whichever comes first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use parking_lot::Mutex;
use tokio::time::Instant;
use waypost_core_types::backoff::Backoff;
use waypost_core_types::ServiceInfo;

use crate::body::RequestBody;
use crate::connect::{uses_tls, Conn, Connector};

/// Where a slot connects: a re-registered instance id with a new endpoint gets a new slot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    address: String,
    port: u16,
    tls: bool,
}

impl Endpoint {
    fn of(instance: &ServiceInfo) -> Self {
        Endpoint {
            address: instance.address.clone(),
            port: instance.port,
            tls: uses_tls(instance),
        }
    }
}

/// One instance's connection.
pub(crate) struct Slot {
    endpoint: Endpoint,
    state: tokio::sync::Mutex<SlotState>,
    /// Until when no new connection is tried (after a failed one), outside the async lock so
    /// that picks can read it.
    down_until: Mutex<Option<Instant>>,
    /// Calls sent on this slot's connection whose response has not ended.
    streams: AtomicUsize,
    /// The instance left discovery: close the connection when `streams` reaches zero.
    draining: AtomicBool,
    /// Whether the current connection has brought a response: until it has, its loss counts
    /// as a failed connection (a peer that accepts and closes gets the backoff too).
    answered: AtomicBool,
    /// The reconnect backoff and the last failure, outside the async lock so that a call can
    /// report a lost connection without waiting for it.
    failures: Mutex<(Backoff, String)>,
}

impl Slot {
    /// Closes the connection now (aborting whatever still runs on it). When a connection is
    /// being opened on the slot at this moment, the next sweep closes it.
    fn close(&self) {
        if let Ok(mut state) = self.state.try_lock() {
            state.conn = None;
        }
    }

    /// A response came on the current connection: it works, the backoff starts over.
    pub(crate) fn answered(&self) {
        if !self.answered.swap(true, Ordering::SeqCst) {
            self.failures.lock().0.reset();
        }
    }

    /// The current connection was lost: if it never brought a response, no new connection is
    /// tried before the next backoff delay.
    pub(crate) fn lost(&self, why: &str) {
        if self.answered.load(Ordering::SeqCst) {
            return;
        }
        let mut f = self.failures.lock();
        let wait = f.0.next_delay();
        f.1 = why.to_owned();
        *self.down_until.lock() = Instant::now().checked_add(wait);
    }

    fn is_open(&self) -> bool {
        self.state
            .try_lock()
            .is_ok_and(|st| st.conn.as_ref().is_some_and(|c| !c.send.is_closed()))
    }
}

/// One call in flight on a slot's connection, from the moment it is sent until its response
/// ends (or is dropped): a draining connection is closed when the last one ends.
pub(crate) struct StreamGuard(Arc<Slot>);

impl StreamGuard {
    pub(crate) fn new(slot: Arc<Slot>) -> Self {
        slot.streams.fetch_add(1, Ordering::SeqCst);
        StreamGuard(slot)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.draining.load(Ordering::SeqCst)
        {
            self.0.close();
        }
    }
}

struct SlotState {
    conn: Option<Conn<RequestBody>>,
}

/// Why no connection could be had.
#[derive(Debug)]
pub(crate) enum ConnError {
    /// A connection was tried now and failed.
    Failed(String),
    /// The last connection failed and the backoff before the next one has not elapsed.
    Waiting(String),
}

/// The connections of one channel.
pub(crate) struct Pool {
    connector: Connector,
    backoff_initial: Duration,
    backoff_max: Duration,
    drain_timeout: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Slots of instances that left, with calls still running, and when they are closed anyway.
    draining: Mutex<Vec<(String, Arc<Slot>, Instant)>>,
}

impl Pool {
    pub(crate) fn new(
        connector: Connector,
        backoff_initial: Duration,
        backoff_max: Duration,
        drain_timeout: Duration,
    ) -> Self {
        Pool {
            connector,
            backoff_initial,
            backoff_max,
            drain_timeout,
            slots: Mutex::new(HashMap::new()),
            draining: Mutex::new(Vec::new()),
        }
    }

    fn slot(&self, instance: &ServiceInfo) -> Arc<Slot> {
        let endpoint = Endpoint::of(instance);
        let mut slots = self.slots.lock();
        if let Some(s) = slots.get(&instance.id) {
            if s.endpoint == endpoint {
                return s.clone();
            }
        }
        let slot = Arc::new(Slot {
            endpoint,
            state: tokio::sync::Mutex::new(SlotState { conn: None }),
            down_until: Mutex::new(None),
            streams: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            failures: Mutex::new((
                Backoff::new(self.backoff_initial, self.backoff_max),
                String::new(),
            )),
        });
        slots.insert(instance.id.clone(), slot.clone());
        slot
    }

    /// A handle to send on `instance`'s connection, opening it if needed. While the backoff
    /// after a failed connection runs, fails at once with [`ConnError::Waiting`], unless
    /// `force` (the instance is the only one left to try).
    pub(crate) async fn connection(
        &self,
        instance: &ServiceInfo,
        force: bool,
    ) -> Result<(SendRequest<RequestBody>, Arc<Slot>), ConnError> {
        let slot = self.slot(instance);
        let mut state = slot.state.lock().await;
        if let Some(c) = &state.conn {
            if !c.send.is_closed() {
                let send = c.send.clone();
                drop(state);
                return Ok((send, slot));
            }
            state.conn = None;
        }
        let waiting = (*slot.down_until.lock()).is_some_and(|t| Instant::now() < t);
        if waiting && !force {
            return Err(ConnError::Waiting(slot.failures.lock().1.clone()));
        }
        match self.connector.connect::<RequestBody>(instance).await {
            Ok(conn) => {
                let send = conn.send.clone();
                state.conn = Some(conn);
                slot.answered.store(false, Ordering::SeqCst);
                *slot.down_until.lock() = None;
                drop(state);
                tracing::debug!(instance = %waypost_core_types::quote::quoted(&instance.id), "connected");
                Ok((send, slot))
            }
            Err(e) => {
                let mut f = slot.failures.lock();
                let wait = f.0.next_delay();
                *slot.down_until.lock() = Instant::now().checked_add(wait);
                f.1.clone_from(&e.0);
                Err(ConnError::Failed(e.0))
            }
        }
    }

    /// Adds the ids of the instances whose reconnect backoff is running.
    pub(crate) fn waiting(&self, out: &mut Vec<String>) {
        let now = Instant::now();
        for (id, s) in self.slots.lock().iter() {
            if (*s.down_until.lock()).is_some_and(|t| now < t) {
                out.push(id.clone());
            }
        }
    }

    /// Stops using the connections of the instances not in `live` (or at another endpoint
    /// now): each is closed at once when no call runs on it, else when its last call ends, or
    /// when the drain bound passes. Also closes the draining connections whose bound passed.
    pub(crate) fn retain(&self, live: &[Arc<ServiceInfo>]) {
        let removed: Vec<(String, Arc<Slot>)> = {
            let mut slots = self.slots.lock();
            let ids: Vec<String> = slots
                .iter()
                .filter(|(id, s)| {
                    !live
                        .iter()
                        .any(|i| &i.id == *id && Endpoint::of(i) == s.endpoint)
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| slots.remove(&id).map(|s| (id, s)))
                .collect()
        };
        let now = Instant::now();
        let until = now.checked_add(self.drain_timeout).unwrap_or(now);
        let mut draining = self.draining.lock();
        for (id, slot) in removed {
            slot.draining.store(true, Ordering::SeqCst);
            if slot.streams.load(Ordering::SeqCst) == 0 {
                tracing::debug!(instance = %waypost_core_types::quote::quoted(&id), "instance left: connection closed");
                slot.close();
            } else {
                tracing::debug!(instance = %waypost_core_types::quote::quoted(&id), "instance left: connection draining");
                draining.push((id, slot, until));
            }
        }
        draining.retain(|(id, slot, until)| {
            let idle = slot.streams.load(Ordering::SeqCst) == 0;
            if idle || now >= *until {
                if !idle {
                    tracing::debug!(instance = %waypost_core_types::quote::quoted(id), "drain bound passed: connection closed with calls running");
                }
                slot.close();
                return slot.is_open();
            }
            true
        });
    }

    /// Ids of the instances that left discovery whose connection is still open, draining the
    /// calls that run on it, sorted.
    pub(crate) fn draining(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .draining
            .lock()
            .iter()
            .filter(|(_, s, _)| s.is_open())
            .map(|(id, _, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Calls running on instance `id`'s connections (its current one and a draining one).
    pub(crate) fn in_flight(&self, id: &str) -> usize {
        let current = self
            .slots
            .lock()
            .get(id)
            .map_or(0, |s| s.streams.load(Ordering::SeqCst));
        let draining: usize = self
            .draining
            .lock()
            .iter()
            .filter(|(i, _, _)| i == id)
            .map(|(_, s, _)| s.streams.load(Ordering::SeqCst))
            .sum();
        current + draining
    }

    /// Ids of the instances with an open connection, sorted.
    pub(crate) fn connected(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .slots
            .lock()
            .iter()
            .filter(|(_, s)| s.is_open())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}
