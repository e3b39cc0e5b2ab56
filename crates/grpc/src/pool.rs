//! One HTTP/2 connection per instance: opened on first use, shared by every call to the
//! instance (HTTP/2 multiplexes them), opened again after it closed or failed (with a backoff
//! between failed attempts, never given up), closed when the instance leaves discovery.

use std::collections::HashMap;
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
}

struct SlotState {
    conn: Option<Conn<RequestBody>>,
    backoff: Backoff,
    last_error: String,
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
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Pool {
    pub(crate) fn new(
        connector: Connector,
        backoff_initial: Duration,
        backoff_max: Duration,
    ) -> Self {
        Pool {
            connector,
            backoff_initial,
            backoff_max,
            slots: Mutex::new(HashMap::new()),
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
            state: tokio::sync::Mutex::new(SlotState {
                conn: None,
                backoff: Backoff::new(self.backoff_initial, self.backoff_max),
                last_error: String::new(),
            }),
            down_until: Mutex::new(None),
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
            return Err(ConnError::Waiting(state.last_error.clone()));
        }
        match self.connector.connect::<RequestBody>(instance).await {
            Ok(conn) => {
                let send = conn.send.clone();
                state.conn = Some(conn);
                state.backoff.reset();
                *slot.down_until.lock() = None;
                drop(state);
                tracing::debug!(instance = %waypost_core_types::quote::quoted(&instance.id), "connected");
                Ok((send, slot))
            }
            Err(e) => {
                let wait = state.backoff.next_delay();
                *slot.down_until.lock() = Instant::now().checked_add(wait);
                state.last_error.clone_from(&e.0);
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

    /// Drops the connections of the instances not in `live` (or at another endpoint now).
    pub(crate) fn retain(&self, live: &[Arc<ServiceInfo>]) {
        let removed: Vec<Arc<Slot>> = {
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
            ids.iter().filter_map(|id| slots.remove(id)).collect()
        };
        if !removed.is_empty() {
            tracing::debug!(
                count = removed.len(),
                "closing the connections of instances that left"
            );
        }
    }

    /// Ids of the instances with an open connection, sorted.
    pub(crate) fn connected(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .slots
            .lock()
            .iter()
            .filter(|(_, s)| {
                s.state
                    .try_lock()
                    .is_ok_and(|st| st.conn.as_ref().is_some_and(|c| !c.send.is_closed()))
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}
