//! Attempt timers, reused.
//!
//! A tokio timer takes the time driver's lock twice: when it is registered and when it is
//! dropped. Most attempts end long before their timeout, and the next attempt on the thread
//! wants a timer again, a little later: so a finished attempt's timer is kept by the thread,
//! still registered, and the next attempt moves its deadline on, which tokio does without the
//! lock when the new deadline is later. A kept timer that reaches its old deadline is moved on
//! by the driver (or, idle, fires once and wakes the task that used it last, which a future
//! tolerates as a spurious wake-up).
//!
//! Timers are kept only on multi-thread runtimes: a current-thread runtime can pause its clock,
//! and there an idle timer would let the clock jump to its deadline. Each kept timer names its
//! runtime, and is used only on that one.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::{Handle, Id, RuntimeFlavor};
use tokio::time::{Instant, Sleep};

/// Timers a thread keeps.
const KEPT: usize = 64;

thread_local! {
    static IDLE: RefCell<Vec<(Id, Pin<Box<Sleep>>)>> = const { RefCell::new(Vec::new()) };
}

/// A timer until `deadline`, given back to its thread's idle timers when dropped.
pub(crate) struct AttemptTimer {
    /// `None` only while it is given back.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The runtime whose driver registered `sleep`, when it may be kept.
    keep_for: Option<Id>,
}

impl AttemptTimer {
    /// A timer until `deadline`. Panics outside a tokio runtime with a time driver, as
    /// `tokio::time::sleep_until` does.
    /// When it fires.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.sleep.as_ref().map(|s| s.deadline())
    }

    pub(crate) fn until(deadline: Instant) -> Self {
        let keep_for = Handle::try_current()
            .ok()
            .filter(|h| matches!(h.runtime_flavor(), RuntimeFlavor::MultiThread))
            .map(|h| h.id());
        let reused = keep_for.and_then(|id| {
            IDLE.try_with(|idle| {
                let mut idle = idle.borrow_mut();
                // A timer of another runtime (one that may be gone) is dropped.
                while let Some((of, sleep)) = idle.pop() {
                    if of == id {
                        return Some(sleep);
                    }
                }
                None
            })
            .ok()
            .flatten()
        });
        let sleep = match reused {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        AttemptTimer {
            sleep: Some(sleep),
            keep_for,
        }
    }
}

impl Future for AttemptTimer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for AttemptTimer {
    fn drop(&mut self) {
        let (Some(id), Some(sleep)) = (self.keep_for, self.sleep.take()) else {
            return;
        };
        let _ = IDLE.try_with(|idle| {
            let mut idle = idle.borrow_mut();
            // A thread keeps the timers of one runtime, the last it used: a runtime that is
            // gone leaves none behind for long.
            if idle.first().is_some_and(|(of, _)| *of != id) {
                idle.clear();
            }
            if idle.len() < KEPT {
                idle.push((id, sleep));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn idle() -> usize {
        IDLE.with(|i| i.borrow().len())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_kept_timer_fires_at_its_new_deadline() {
        // On a worker thread, so it stays on one thread.
        tokio::spawn(async {
            let start = Instant::now();
            let mut first = AttemptTimer::until(start + Duration::from_millis(20));
            // Registered by a poll, then given back before its deadline.
            let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut first).poll(cx)));
            assert!(polled.await.is_pending());
            let kept = idle();
            drop(first);
            assert_eq!(idle(), kept + 1, "kept by the thread");
            // Moved on to a later deadline: it must not fire at the old one.
            AttemptTimer::until(start + Duration::from_millis(80)).await;
            assert_eq!(idle(), kept + 1, "taken and given back again");
            let waited = start.elapsed();
            assert!(waited >= Duration::from_millis(80), "{waited:?}");
            // And to an earlier one than its last.
            let start = Instant::now();
            AttemptTimer::until(start + Duration::from_millis(10)).await;
            let waited = start.elapsed();
            assert!(
                waited >= Duration::from_millis(10) && waited < Duration::from_secs(2),
                "{waited:?}"
            );
        })
        .await
        .expect("timer task");
    }

    #[tokio::test(start_paused = true)]
    async fn current_thread_runtimes_keep_no_timer() {
        let kept = idle();
        AttemptTimer::until(Instant::now() + Duration::from_millis(5)).await;
        assert_eq!(idle(), kept);
    }
}
