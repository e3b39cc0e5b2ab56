//! The lease keep-alive task a registry owns.
//!
//! It renews the registry's lease every third of the TTL. A broken stream (a dead member, a
//! restarting server) is reopened with backoff while the lease may still be alive; once etcd
//! says the lease is gone (expired during an outage, revoked, cluster reset), a new lease is
//! granted and every instance of ours is written again. Both loops back off with jitter up to
//! [`EtcdConfig::max_backoff`](crate::EtcdConfig::max_backoff) and never give up; the registry's
//! state says `Recovering` meanwhile. The task ends when the registry closes or is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error;
use crate::ops::Inner;
use waypost_core_types::backoff::Backoff;

/// How a keep-alive session ended.
enum SessionEnd {
    /// etcd says the lease no longer exists.
    Lost(String),
    /// The stream broke or timed out; the lease may still be alive.
    Broken(String),
}

/// The time between keep-alives: a third of the TTL.
pub(crate) fn keep_alive_interval(ttl_secs: i64) -> Duration {
    (Duration::from_secs(ttl_secs.max(1).unsigned_abs()) / 3).max(Duration::from_millis(200))
}

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut closed = inner.stop_signal();
    let mut backoff = Backoff::new(Duration::from_millis(50), inner.config.max_backoff);
    loop {
        let end = tokio::select! {
            _ = closed.stopped() => return,
            end = session(&inner, &mut backoff) => end,
        };
        match end {
            SessionEnd::Broken(why) => {
                inner.set_recovering(&why);
                let pause = backoff.next_delay();
                tracing::debug!(target: "waypost::etcd", error = %why, ?pause, "keep-alive stream broken");
                tokio::select! {
                    _ = closed.stopped() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            SessionEnd::Lost(why) => {
                tracing::warn!(
                    target: "waypost::etcd",
                    lease = inner.lease_id(),
                    reason = %why,
                    "lease lost; granting a new one and registering again"
                );
                inner.set_recovering(&format!("lease lost: {why}"));
                loop {
                    let r = tokio::select! {
                        _ = closed.stopped() => return,
                        r = inner.regrant() => r,
                    };
                    match r {
                        Ok(()) => {
                            backoff.reset();
                            inner.set_connected();
                            break;
                        }
                        Err(e) => {
                            inner.set_recovering(&e.to_string());
                            let pause = backoff.next_delay();
                            tracing::debug!(target: "waypost::etcd", error = %e, ?pause, "re-register failed");
                            tokio::select! {
                                _ = closed.stopped() => return,
                                _ = tokio::time::sleep(pause) => {}
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One keep-alive stream for the current lease, until it breaks or the lease is gone.
async fn session(inner: &Inner, backoff: &mut Backoff) -> SessionEnd {
    let id = inner.lease_id();
    let timeout = inner.policy.attempt_timeout;
    let mut lease_client = inner.client.lease_client();
    let opened = tokio::time::timeout(timeout, lease_client.keep_alive(id)).await;
    let (mut keeper, mut stream) = match opened {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) if error::is_lease_not_found(&e) => return SessionEnd::Lost(e.to_string()),
        Ok(Err(e)) if error::is_auth(&e) => {
            // Credentials stopped working: keep trying, the operator may fix them.
            return SessionEnd::Broken(error::convert(e).to_string());
        }
        Ok(Err(e)) => return SessionEnd::Broken(e.to_string()),
        Err(_) => return SessionEnd::Broken(format!("keep-alive not opened within {timeout:?}")),
    };
    // The first keep-alive went through: the lease is alive and our keys with it.
    backoff.reset();
    inner.set_connected();
    let interval = keep_alive_interval(inner.config.ttl_secs());
    let mut next_send = Instant::now() + interval;
    // When the oldest unanswered keep-alive was sent.
    let mut waiting_since: Option<Instant> = None;
    loop {
        let answer_deadline = waiting_since.map(|t| t + timeout);
        tokio::select! {
            _ = tokio::time::sleep_until(next_send) => {}
            _ = inner.renew_now.notified() => {}
            _ = inner.lease_suspect.notified() => {}
            // Read all the time, so a broken stream is noticed at once, not at the next tick.
            msg = stream.message() => {
                match msg {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        waiting_since = None;
                        inner.set_connected();
                    }
                    Ok(Some(_)) => return SessionEnd::Lost("etcd reports the lease expired".into()),
                    Ok(None) => return SessionEnd::Broken("keep-alive stream ended".into()),
                    Err(e) if error::is_lease_not_found(&e) => return SessionEnd::Lost(e.to_string()),
                    Err(e) => return SessionEnd::Broken(e.to_string()),
                }
                continue;
            }
            _ = sleep_until_opt(answer_deadline) => {
                return SessionEnd::Broken(format!("no keep-alive answer within {timeout:?}"));
            }
        }
        if inner.lease_id() != id {
            return SessionEnd::Broken("lease replaced".into());
        }
        if let Err(e) = keeper.keep_alive().await {
            return SessionEnd::Broken(e.to_string());
        }
        waiting_since.get_or_insert_with(Instant::now);
        next_send = Instant::now() + interval;
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_runs_three_times_per_ttl() {
        assert_eq!(keep_alive_interval(30), Duration::from_secs(10));
        assert_eq!(keep_alive_interval(3), Duration::from_secs(1));
        assert_eq!(keep_alive_interval(1), Duration::from_secs(1) / 3);
        assert_eq!(keep_alive_interval(0), Duration::from_secs(1) / 3);
    }
}
