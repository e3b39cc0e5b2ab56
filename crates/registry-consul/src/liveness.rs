//! The task that keeps our registrations alive: it passes each instance's TTL check at a third
//! of its TTL, registers an instance again when the agent has forgotten it (a 404 on the check
//! update: the agent restarted without its state, or reaped the service), and retries failures
//! with capped, jittered backoff, forever, reporting
//! [`RegistryState::Recovering`](waypost_core_types::RegistryState::Recovering) meanwhile.
//!
//! It runs on the registry's [`Tasks`](waypost_core_types::Tasks): `close` stops it, and
//! dropping the registry aborts it. With nothing registered it waits for a registration, not
//! for a timer.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};
use waypost_core_types::backoff::Backoff;
use waypost_core_types::{Error, Result, ServiceInfo};

use crate::registry::{CheckOutcome, Inner};

/// The shortest heartbeat period.
const MIN_PERIOD: Duration = Duration::from_millis(50);

/// A third of the shortest TTL of our instances; `None` when nothing is registered.
fn period(inner: &Inner) -> Option<Duration> {
    inner
        .owned
        .lock()
        .values()
        .map(|s| inner.effective_ttl(s) / 3)
        .min()
        .map(|p| p.max(MIN_PERIOD))
}

/// Sleeps until `due`, forever when there is nothing to wait for.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// The keep-alive loop; runs until the registry's tasks stop.
pub(crate) async fn run(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(inner.cfg.retry_initial_backoff, inner.cfg.retry_max_backoff);
    let mut retry_at: Option<Instant> = None;
    let mut last_beat = Instant::now();
    loop {
        let kicked = inner.kick.notified();
        let due = retry_at.or_else(|| period(&inner).map(|p| last_beat + p));
        tokio::select! {
            () = sleep_until(due) => {}
            // A registration may have shortened the period: recompute it.
            () = kicked => continue,
        }
        if inner.state.is_closed() {
            return;
        }
        last_beat = Instant::now();
        let instances: Vec<ServiceInfo> = inner.owned.lock().values().cloned().collect();
        let mut failure: Option<Error> = None;
        for info in &instances {
            if let Err(e) = beat(&inner, info).await {
                debug!(id = %info.id, "consul: keeping `{}` alive failed: {e}", info.id);
                failure = Some(e);
            }
        }
        match failure {
            None => {
                backoff.reset();
                retry_at = None;
                inner.state.connected();
            }
            Some(e) => {
                inner.state.failed(&e);
                retry_at = Some(last_beat + backoff.next_delay());
            }
        }
    }
}

/// One heartbeat; registers the instance again if the agent lost it.
async fn beat(inner: &Inner, info: &ServiceInfo) -> Result<()> {
    match inner.pass_check(&info.id, info.health).await? {
        CheckOutcome::Done => Ok(()),
        CheckOutcome::Lost(why) => {
            let writes = inner.writes.lock().await;
            // Deregistered meanwhile, or replaced by a newer registration: nothing to restore.
            let current = inner.owned.lock().get(&info.id).cloned();
            let Some(current) = current else {
                return Ok(());
            };
            if inner.state.is_closed() {
                return Ok(());
            }
            info!(id = %info.id, "consul: the agent lost `{}` ({why}); registering it again", info.id);
            inner.put_registration(&current, false).await?;
            inner.state.metrics().reregistered(1);
            drop(writes);
            inner.watches.refresh(&current.name).await;
            Ok(())
        }
    }
}
