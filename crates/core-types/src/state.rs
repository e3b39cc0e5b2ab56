//! [`StateCell`]: the one owner of a registry's [`RegistryState`] transitions.

use std::fmt;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::observe::RegistryMetrics;
use crate::RegistryState;

/// Holds a registry's [`RegistryState`], makes its transitions the same way for every backend,
/// and lets callers follow them.
///
/// - [`failed`](Self::failed) counts one failed attempt: the first moves `Connected` to
///   `Recovering { attempts: 1, since: now }`, later ones add to `attempts` and keep `since`;
/// - [`connected`](Self::connected) moves back to `Connected`;
/// - [`close`](Self::close) is final: nothing moves a closed cell again.
///
/// Each transition is logged once (a warning on trouble, info on recovery); repeated failures
/// are logged at debug level, and counted in `waypost_registry_state_transitions_total{backend,
/// state}` with the gauge `waypost_registry_connected{backend}` (see [`RegistryMetrics`], which
/// the cell holds for its registry: [`metrics`](Self::metrics)).
pub struct StateCell {
    backend: &'static str,
    tx: watch::Sender<RegistryState>,
    metrics: RegistryMetrics,
}

impl fmt::Debug for StateCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCell")
            .field("backend", &self.backend)
            .field("state", &*self.tx.borrow())
            .finish()
    }
}

impl StateCell {
    /// A `Connected` cell for a registry of `backend`. Takes the registry's metric handles
    /// from the recorder installed now (see [`crate::observe`]).
    pub fn new(backend: &'static str) -> Self {
        StateCell {
            backend,
            tx: watch::Sender::new(RegistryState::Connected),
            metrics: RegistryMetrics::new(backend),
        }
    }

    /// The registry's metric handles: its backend calls go through
    /// [`RegistryMetrics::observe`], its re-registrations through
    /// [`RegistryMetrics::reregistered`].
    pub fn metrics(&self) -> &RegistryMetrics {
        &self.metrics
    }

    /// The current state.
    pub fn get(&self) -> RegistryState {
        self.tx.borrow().clone()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        matches!(*self.tx.borrow(), RegistryState::Closed)
    }

    /// A receiver that sees the current state and every later one.
    pub fn subscribe(&self) -> watch::Receiver<RegistryState> {
        self.tx.subscribe()
    }

    /// The current state, then every change, ending after `Closed` (for
    /// [`ServiceRegistry::state_changes`](crate::ServiceRegistry::state_changes)).
    pub fn changes(&self) -> crate::StateStream {
        let rx = self.tx.subscribe();
        Box::pin(futures_util::stream::unfold(
            (rx, true, false),
            |(mut rx, first, done)| async move {
                if done {
                    return None;
                }
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let state = rx.borrow_and_update().clone();
                let done = matches!(state, RegistryState::Closed);
                Some((state, (rx, false, done)))
            },
        ))
    }

    /// The backend reached its server and our registrations are in place.
    pub fn connected(&self) {
        let backend = self.backend;
        // Metrics are updated under the cell's lock, so that the gauge ends as the state does.
        self.tx.send_if_modified(|state| match state {
            RegistryState::Recovering {
                attempts, since, ..
            } => {
                let down_for = since.elapsed().unwrap_or_default();
                tracing::info!(
                    backend,
                    attempts = *attempts,
                    ?down_for,
                    "registry connected again"
                );
                *state = RegistryState::Connected;
                self.metrics.entered(false, state);
                true
            }
            RegistryState::Connected | RegistryState::Closed => false,
        });
    }

    /// One attempt to reach the server or restore our registrations failed with `error`.
    pub fn failed(&self, error: &dyn fmt::Display) {
        let backend = self.backend;
        self.tx.send_if_modified(|state| match state {
            RegistryState::Connected => {
                let last_error = error.to_string();
                tracing::warn!(backend, error = %last_error, "registry lost its server; recovering");
                *state = RegistryState::Recovering {
                    since: SystemTime::now(),
                    attempts: 1,
                    last_error,
                };
                self.metrics.entered(true, state);
                true
            }
            RegistryState::Recovering {
                attempts,
                last_error,
                ..
            } => {
                *attempts = attempts.saturating_add(1);
                *last_error = error.to_string();
                tracing::debug!(backend, attempts = *attempts, error = %last_error, "registry still recovering");
                true
            }
            RegistryState::Closed => false,
        });
    }

    /// The registry closed. Final. Returns whether this call closed it (`false` if it was
    /// closed already), so that of two concurrent `close` calls exactly one cleans up.
    pub fn close(&self) -> bool {
        self.tx.send_if_modified(|state| {
            if matches!(state, RegistryState::Closed) {
                false
            } else {
                let was_connected = matches!(state, RegistryState::Connected);
                *state = RegistryState::Closed;
                self.metrics.entered(was_connected, state);
                true
            }
        })
    }
}

impl Drop for StateCell {
    fn drop(&mut self) {
        if matches!(*self.tx.borrow(), RegistryState::Connected) {
            self.metrics.dropped_connected();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_attempts_and_keeps_since() {
        let cell = StateCell::new("test");
        let mut rx = cell.subscribe();
        cell.failed(&"down");
        let first = cell.get();
        let RegistryState::Recovering {
            since, attempts, ..
        } = first
        else {
            panic!("{first:?}")
        };
        assert_eq!(attempts, 1);
        cell.failed(&"still down");
        match cell.get() {
            RegistryState::Recovering {
                since: s,
                attempts: 2,
                last_error,
            } => {
                assert_eq!(s, since);
                assert_eq!(last_error, "still down");
            }
            other => panic!("{other:?}"),
        }
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        cell.connected();
        assert!(cell.get().is_connected());
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        cell.connected();
        assert!(!rx.has_changed().unwrap(), "no change, no notification");
    }

    #[tokio::test]
    async fn changes_stream_starts_with_the_current_state_and_ends_after_closed() {
        use futures_util::StreamExt;
        let cell = StateCell::new("test");
        let mut changes = cell.changes();
        assert_eq!(changes.next().await, Some(RegistryState::Connected));
        cell.failed(&"down");
        assert!(matches!(
            changes.next().await,
            Some(RegistryState::Recovering { .. })
        ));
        cell.connected();
        assert_eq!(changes.next().await, Some(RegistryState::Connected));
        cell.close();
        assert_eq!(changes.next().await, Some(RegistryState::Closed));
        assert_eq!(changes.next().await, None);
    }

    #[test]
    fn closed_is_final() {
        let cell = StateCell::new("test");
        assert!(cell.close());
        assert!(!cell.close());
        cell.failed(&"x");
        cell.connected();
        assert_eq!(cell.get(), RegistryState::Closed);
        assert!(cell.is_closed());
    }
}
