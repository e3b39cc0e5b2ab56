//! The task that keeps our registrations alive: it passes each instance's TTL check at a third
//! of its TTL, registers an instance again when the agent has forgotten it (a 404 on the check
//! update: the agent restarted without its state, or reaped the service), and retries failures
//! with capped, jittered backoff, forever, reporting [`RegistryState::Recovering`] meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{info, warn};
use waypost_core_types::{Error, RegistryState, Result, ServiceInfo};

use crate::registry::{recovering, CheckOutcome, Inner};
use waypost_core_types::backoff::delay as backoff;

/// The shortest heartbeat period.
const MIN_PERIOD: Duration = Duration::from_millis(50);
/// The period when nothing is registered (the loop wakes when something is).
const IDLE_PERIOD: Duration = Duration::from_secs(3600);

fn period(inner: &Inner) -> Duration {
    inner
        .owned
        .lock()
        .values()
        .map(|s| inner.effective_ttl(s) / 3)
        .min()
        .unwrap_or(IDLE_PERIOD)
        .max(MIN_PERIOD)
}

pub(crate) async fn run(weak: Weak<Inner>) {
    let mut attempts = 0u32;
    let mut since: Option<SystemTime> = None;
    let mut last_beat = Instant::now();
    loop {
        let (due, kick_wait) = {
            let Some(inner) = weak.upgrade() else { return };
            let due = if attempts > 0 {
                last_beat
                    + backoff(
                        attempts,
                        inner.cfg.retry_initial_backoff,
                        inner.cfg.retry_max_backoff,
                    )
            } else {
                last_beat + period(&inner)
            };
            (due, inner)
        };
        {
            let notified = kick_wait.kick.notified();
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                // A registration may have shortened the period: recompute it.
                _ = notified => { continue; }
            }
        }
        let inner = kick_wait;
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        last_beat = Instant::now();
        let instances: Vec<ServiceInfo> = inner.owned.lock().values().cloned().collect();
        let mut failure: Option<Error> = None;
        for info in &instances {
            if let Err(e) = beat(&inner, info).await {
                warn!(id = %info.id, "consul: keeping `{}` alive failed: {e}", info.id);
                failure = Some(e);
            }
        }
        match failure {
            None => {
                if attempts > 0 {
                    info!("consul: connection to the agent recovered after {attempts} attempts");
                }
                attempts = 0;
                since = None;
                inner.set_state(RegistryState::Connected);
            }
            Some(e) => {
                attempts = attempts.saturating_add(1);
                let start = *since.get_or_insert_with(SystemTime::now);
                inner.set_state(recovering(start, attempts, &e));
            }
        }
    }
}

/// One heartbeat; registers the instance again if the agent lost it.
async fn beat(inner: &Inner, info: &ServiceInfo) -> Result<()> {
    match inner.pass_check(&info.id, info.health).await? {
        CheckOutcome::Done => Ok(()),
        CheckOutcome::Lost(why) => {
            let _w = inner.writes.lock().await;
            // Deregistered meanwhile, or replaced by a newer registration: nothing to restore.
            let current = inner.owned.lock().get(&info.id).cloned();
            let Some(current) = current else {
                return Ok(());
            };
            if inner.closed.load(Ordering::Acquire) {
                return Ok(());
            }
            info!(id = %info.id, "consul: the agent lost `{}` ({why}); registering it again", info.id);
            inner.put_registration(&current, false).await?;
            drop(_w);
            inner.hub.refresh(&current.name).await;
            Ok(())
        }
    }
}
