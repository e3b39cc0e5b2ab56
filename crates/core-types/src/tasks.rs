//! [`Tasks`]: the background tasks a registry owns, and how they stop.
//!
//! Every backend runs its keep-alives, watch feeds and health probes through one `Tasks`:
//! - [`Tasks::spawn`] starts a task that ends at its next `.await` once the set stops;
//! - [`Tasks::shutdown`] (from `close`) stops every task and waits for them, within a bound;
//! - dropping the set (a registry dropped without `close`) aborts every task at once.
//!
//! Dropping a registry without `close` behaves the same on every backend: its tasks are aborted,
//! and the registry removes what it registered with one bounded clean-up task spawned by
//! [`Tasks::cleanup_on_drop`] on the runtime it was created on (it ends with that runtime). If
//! that runtime is gone, the server expires the instances after their TTL or session timeout.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::{self, Either};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long [`Tasks::shutdown`] waits for tasks before aborting them.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(5);

/// The background tasks of one registry (or any owner).
#[derive(Debug)]
pub struct Tasks {
    stop: watch::Sender<bool>,
    set: Mutex<JoinSet<()>>,
    runtime: Option<Handle>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

/// Resolves when the owning [`Tasks`] stops (or is dropped).
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Resolves once the tasks are told to stop.
    pub async fn stopped(&mut self) {
        // An error means the sender is gone: stopped too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether the tasks were told to stop.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
}

impl Tasks {
    /// An empty set, bound to the current tokio runtime if there is one.
    pub fn new() -> Self {
        Tasks {
            stop: watch::Sender::new(false),
            set: Mutex::new(JoinSet::new()),
            runtime: Handle::try_current().ok(),
        }
    }

    /// A signal that resolves when the set stops, for loops that want to clean up first.
    pub fn signal(&self) -> StopSignal {
        StopSignal(self.stop.subscribe())
    }

    /// Whether the set was stopped.
    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Runs `task` until it ends or the set stops (it is then dropped at its current `.await`).
    /// After [`shutdown`](Self::shutdown) nothing is started.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.is_stopped() {
            return;
        }
        let mut signal = self.signal();
        let mut set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        // Reap finished tasks so a long-lived set does not grow.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            let stopped = std::pin::pin!(signal.stopped());
            let task = std::pin::pin!(task);
            match future::select(stopped, task).await {
                Either::Left(_) | Either::Right(_) => {}
            }
        });
    }

    /// Stops every task and waits for them to end (aborting any still running after a few
    /// seconds). Idempotent.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let mut set = {
            let mut guard = self.set.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *guard)
        };
        let drained = tokio::time::timeout(SHUTDOWN_BOUND, async {
            while set.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("background tasks did not stop in time; aborting them");
            set.abort_all();
        }
    }

    /// For `Drop` of a registry that was not closed: runs `cleanup` (bounded by `bound`) on the
    /// runtime the set was created on, if that runtime still runs. Returns whether it was
    /// started.
    pub fn cleanup_on_drop<F>(&self, bound: Duration, cleanup: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return false;
        };
        // `spawn` on a handle whose runtime has shut down drops the task: nothing outlives it.
        runtime.spawn(async move {
            if tokio::time::timeout(bound, cleanup).await.is_err() {
                tracing::debug!("clean-up of a dropped registry timed out");
            }
        });
        true
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        // Dropping the JoinSet aborts whatever still runs.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_loops_and_refuses_new_tasks() {
        let tasks = Tasks::new();
        let ticks = Arc::new(AtomicUsize::new(0));
        let t = Arc::clone(&ticks);
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                t.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3);
        tasks.shutdown().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3);
        let t = Arc::clone(&ticks);
        tasks.spawn(async move {
            t.fetch_add(100, Ordering::SeqCst);
        });
        tokio::task::yield_now().await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3);
        assert!(tasks.signal().is_stopped());
    }

    #[tokio::test(start_paused = true)]
    async fn drop_aborts_tasks() {
        let tasks = Tasks::new();
        let alive = Arc::new(());
        let held = Arc::clone(&alive);
        tasks.spawn(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&alive), 2);
        drop(tasks);
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&alive), 1, "the task's state was dropped");
    }

    /// The clean-up bound at its extremes: zero still lets a clean-up that needs no waiting run,
    /// `Duration::MAX` lets a slow one finish; neither panics.
    #[tokio::test(start_paused = true)]
    async fn cleanup_bound_zero_and_max() {
        let done = Arc::new(AtomicUsize::new(0));
        let tasks = Tasks::new();
        for bound in [Duration::ZERO, Duration::MAX] {
            let d = Arc::clone(&done);
            assert!(tasks.cleanup_on_drop(bound, async move {
                d.fetch_add(1, Ordering::SeqCst);
            }));
        }
        let d = Arc::clone(&done);
        assert!(tasks.cleanup_on_drop(Duration::MAX, async move {
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
            d.fetch_add(10, Ordering::SeqCst);
        }));
        let d = Arc::clone(&done);
        assert!(tasks.cleanup_on_drop(Duration::ZERO, async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            d.fetch_add(100, Ordering::SeqCst);
        }));
        tokio::time::sleep(Duration::from_secs(24 * 3600 + 1)).await;
        assert_eq!(
            done.load(Ordering::SeqCst),
            12,
            "the zero-bound sleeper was cut off"
        );
    }
}
