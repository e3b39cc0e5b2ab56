//! The packed state word shared by the breakers, the clock that follows tokio time, and the
//! state-change notifier.
//!
//! One `AtomicU64` holds `generation | count | state`: reading the state on the hot path is one
//! load, probe slots are taken with one compare-and-swap, and a permit from an earlier generation
//! can never touch the counters of a later one. Transitions (rare) take a short mutex so the time
//! the circuit opened is written consistently; no lock is ever held while a protected call runs.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::time::Instant;
use waypost_core_types::CircuitState;

pub(crate) const CLOSED: u64 = 0;
pub(crate) const OPEN: u64 = 1;
pub(crate) const HALF_OPEN: u64 = 2;
const STATE_MASK: u64 = 0b11;
const COUNT_SHIFT: u32 = 2;
pub(crate) const COUNT_ONE: u64 = 1 << COUNT_SHIFT;
const COUNT_MASK: u64 = 0xFFFF_FFFF << COUNT_SHIFT;
const GEN_SHIFT: u32 = 34;

/// The state bits of a word.
pub(crate) fn state_of(word: u64) -> u64 {
    word & STATE_MASK
}

/// The counter bits of a word (consecutive failures when closed, probes in flight when half-open).
pub(crate) fn count_of(word: u64) -> u64 {
    (word & COUNT_MASK) >> COUNT_SHIFT
}

/// The generation of a word or ticket.
pub(crate) fn generation_of(word: u64) -> u64 {
    word >> GEN_SHIFT
}

/// Generation and state, without the counter: what a permit carries.
pub(crate) fn ticket_of(word: u64) -> u64 {
    word & !COUNT_MASK
}

pub(crate) fn circuit_state(state: u64) -> CircuitState {
    match state {
        OPEN => CircuitState::Open,
        HALF_OPEN => CircuitState::HalfOpen,
        _ => CircuitState::Closed,
    }
}

/// A state change, as listeners see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// When it happened (tokio time, so paused-time tests see the virtual clock).
    pub at: Instant,
}

type Listener = Arc<dyn Fn(StateChange) + Send + Sync>;

/// Publishes state changes to a `watch` channel and to listener callbacks.
pub(crate) struct Notifier {
    tx: watch::Sender<CircuitState>,
    listeners: RwLock<Vec<Listener>>,
}

impl Notifier {
    pub(crate) fn new() -> Self {
        Notifier {
            tx: watch::Sender::new(CircuitState::Closed),
            listeners: RwLock::new(Vec::new()),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.tx.subscribe()
    }

    pub(crate) fn add_listener(&self, f: Listener) {
        self.listeners.write().push(f);
    }

    /// Updates the watch channel; call while the transition is serialised, so the channel always
    /// ends on the latest state.
    pub(crate) fn publish(&self, to: CircuitState) {
        self.tx.send_replace(to);
    }

    /// Runs the listeners; call with no lock held (a listener may call back into the breaker).
    pub(crate) fn call_listeners(&self, change: StateChange) {
        let listeners: Vec<Listener> = self.listeners.read().clone();
        for l in listeners {
            l(change);
        }
        tracing::debug!(from = %change.from, to = %change.to, "circuit breaker state change");
    }
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("listeners", &self.listeners.read().len())
            .field("receivers", &self.tx.receiver_count())
            .finish()
    }
}

/// A monotonic clock on tokio time, as nanoseconds since the breaker was built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the clock was made (without the 128-bit arithmetic of `as_nanos`;
    /// `u64::MAX` after 584 years).
    #[inline]
    pub(crate) fn now_nanos(&self) -> u64 {
        let d = Instant::now().saturating_duration_since(self.epoch);
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The packed state word, the open timestamp, and the notifier.
#[derive(Debug)]
pub(crate) struct StateCell {
    word: AtomicU64,
    opened_at: AtomicU64,
    transition: Mutex<()>,
    pub(crate) clock: Clock,
    pub(crate) notifier: Notifier,
}

impl StateCell {
    pub(crate) fn new() -> Self {
        StateCell {
            word: AtomicU64::new(CLOSED),
            opened_at: AtomicU64::new(0),
            transition: Mutex::new(()),
            clock: Clock::new(),
            notifier: Notifier::new(),
        }
    }

    pub(crate) fn load(&self) -> u64 {
        self.word.load(Ordering::Acquire)
    }

    pub(crate) fn cas(&self, current: u64, new: u64) -> bool {
        self.word
            .compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Nanoseconds (on [`Clock`]) when the circuit last opened.
    pub(crate) fn opened_at(&self) -> u64 {
        self.opened_at.load(Ordering::Acquire)
    }

    /// Whether an open circuit has waited `timeout` and may be probed.
    pub(crate) fn open_elapsed(&self, timeout_nanos: u64) -> bool {
        self.clock.now_nanos() >= self.opened_at().saturating_add(timeout_nanos)
    }

    /// Moves from the generation and state in `ticket` to `to` (a new generation, count 0).
    /// Returns `false` when another caller changed generation first.
    pub(crate) fn transition(&self, ticket: u64, to: u64) -> bool {
        let change = {
            let _serialised = self.transition.lock();
            loop {
                let cur = self.load();
                if ticket_of(cur) != ticket {
                    return false;
                }
                let gen = (cur >> GEN_SHIFT).wrapping_add(1);
                let new = (gen << GEN_SHIFT) | to;
                if to == OPEN {
                    self.opened_at
                        .store(self.clock.now_nanos(), Ordering::Release);
                }
                if self.cas(cur, new) {
                    let change = StateChange {
                        from: circuit_state(state_of(cur)),
                        to: circuit_state(to),
                        at: Instant::now(),
                    };
                    if change.from != change.to {
                        self.notifier.publish(change.to);
                    }
                    break change;
                }
            }
        };
        if change.from != change.to {
            self.notifier.call_listeners(change);
        }
        true
    }

    /// Closes the circuit in a new generation, whatever the current state.
    pub(crate) fn reset(&self) {
        loop {
            let cur = self.load();
            if self.transition(ticket_of(cur), CLOSED) {
                return;
            }
        }
    }
}
