//! The keep-alive task of each lease a registry owns.
//!
//! It renews its lease every third of the lease's TTL (at most every [`MAX_KEEP_ALIVE_INTERVAL`]).
//! A broken stream (a dead member, a restarting server) is reopened with backoff while the
//! lease may still be alive; once etcd says the lease is gone (expired during an outage,
//! revoked, cluster reset), a new lease is granted and every instance of ours on it is written
//! again. When a session starts and after every keep-alive answer it checks that our keys are
//! all there and puts back the missing ones ([`guard`](crate::guard)). Both loops back off with jitter up to
//! [`EtcdConfig::max_backoff`](crate::EtcdConfig::max_backoff) and never give up; the registry's
//! state says `Recovering` meanwhile. The task ends when the registry closes or is dropped, or
//! when the lease's last instance is deregistered.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error;
use crate::guard;
use crate::lease::Lease;
use crate::ops::{Inner, Trouble};
use waypost_core_types::backoff::Backoff;

/// The longest time between two keep-alives of a lease, whatever its TTL.
pub(crate) const MAX_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// How a keep-alive session ended.
enum SessionEnd {
    /// etcd says the lease no longer exists.
    Lost(String),
    /// The stream broke or timed out; the lease may still be alive.
    Broken(String),
}

/// The time between keep-alives: a third of the TTL, between 200 ms and
/// [`MAX_KEEP_ALIVE_INTERVAL`].
pub(crate) fn keep_alive_interval(ttl_secs: i64) -> Duration {
    (Duration::from_secs(ttl_secs.max(1).unsigned_abs()) / 3)
        .clamp(Duration::from_millis(200), MAX_KEEP_ALIVE_INTERVAL)
}

/// Keeps `lease` alive until the registry stops or the lease is retired.
pub(crate) async fn run(inner: Arc<Inner>, lease: Arc<Lease>) {
    let mut closed = inner.stop_signal();
    tokio::select! {
        _ = closed.stopped() => {}
        _ = lease.retired() => {}
        _ = keep_alive(&inner, &lease) => {}
    }
}

async fn keep_alive(inner: &Inner, lease: &Lease) {
    let trouble = Trouble::Lease(lease.ttl_secs);
    let mut backoff = Backoff::new(Duration::from_millis(50), inner.config.max_backoff);
    loop {
        match session(inner, lease, &mut backoff).await {
            SessionEnd::Broken(why) => {
                inner.trouble(trouble, &why);
                let pause = backoff.next_delay();
                tracing::debug!(target: "waypost::etcd", error = %why, ?pause, "keep-alive stream broken");
                tokio::time::sleep(pause).await;
            }
            SessionEnd::Lost(why) => {
                tracing::warn!(
                    target: "waypost::etcd",
                    lease = lease.id(),
                    ttl_secs = lease.ttl_secs,
                    reason = %why,
                    "lease lost; granting a new one and registering again"
                );
                inner.trouble(trouble, &format!("lease lost: {why}"));
                loop {
                    match inner.regrant(lease).await {
                        Ok(()) => {
                            backoff.reset();
                            inner.resolved(Trouble::MissingKeys(lease.ttl_secs));
                            inner.resolved(trouble);
                            break;
                        }
                        Err(e) => {
                            inner.trouble(trouble, &e.to_string());
                            let pause = backoff.next_delay();
                            tracing::debug!(target: "waypost::etcd", error = %e, ?pause, "re-register failed");
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
            }
        }
    }
}

/// Checks our keys (see [`guard::verify`]); how the session ends if it must.
async fn check_keys(inner: &Inner, lease: &Lease) -> Option<SessionEnd> {
    match guard::verify(inner).await {
        Ok(gone) if gone.contains(&lease.ttl_secs) => {
            Some(SessionEnd::Lost("etcd does not know the lease".into()))
        }
        Ok(_) => None,
        Err(why) => Some(SessionEnd::Broken(why)),
    }
}

/// One keep-alive stream for the current lease, until it breaks or the lease is gone.
async fn session(inner: &Inner, lease: &Lease, backoff: &mut Backoff) -> SessionEnd {
    let id = lease.id();
    let trouble = Trouble::Lease(lease.ttl_secs);
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
    // The first keep-alive went through. A server that came back may have lost our keys (a
    // restored backup): they are checked before the registry says all is well. Checks run
    // beside the keep-alives, never in their way: one may wait for mutations in flight, and
    // a short lease must not expire meanwhile.
    let mut check: Option<KeysCheck<'_>> = Some(Box::pin(check_keys(inner, lease)));
    let mut verified = false;
    let interval = keep_alive_interval(lease.ttl_secs);
    let mut next_send = Instant::now() + interval;
    // When the oldest unanswered keep-alive was sent.
    let mut waiting_since: Option<Instant> = None;
    loop {
        let answer_deadline = waiting_since.map(|t| t + timeout);
        tokio::select! {
            _ = tokio::time::sleep_until(next_send) => {}
            _ = lease.renew_now.notified() => {}
            _ = lease.suspect.notified() => {}
            end = poll_check(&mut check) => {
                check = None;
                if let Some(end) = end {
                    return end;
                }
                if !verified {
                    verified = true;
                    backoff.reset();
                    inner.resolved(trouble);
                }
                continue;
            }
            // Read all the time, so a broken stream is noticed at once, not at the next tick.
            msg = stream.message() => {
                match msg {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        waiting_since = None;
                        if verified {
                            inner.resolved(trouble);
                        }
                        // The lease lives; do our keys? (A backstop for deletions the
                        // deletion watch did not report.)
                        if check.is_none() {
                            check = Some(Box::pin(check_keys(inner, lease)));
                        }
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
        if lease.id() != id {
            return SessionEnd::Broken("lease replaced".into());
        }
        if let Err(e) = keeper.keep_alive().await {
            return SessionEnd::Broken(e.to_string());
        }
        waiting_since.get_or_insert_with(Instant::now);
        next_send = Instant::now() + interval;
    }
}

/// A check of our keys running beside a keep-alive session.
type KeysCheck<'a> = Pin<Box<dyn Future<Output = Option<SessionEnd>> + Send + 'a>>;

/// The running check's outcome; pending forever when none runs.
async fn poll_check(check: &mut Option<KeysCheck<'_>>) -> Option<SessionEnd> {
    match check {
        Some(c) => c.await,
        None => std::future::pending().await,
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

    #[test]
    fn keep_alive_interval_is_bounded_for_huge_ttls() {
        assert_eq!(keep_alive_interval(600), MAX_KEEP_ALIVE_INTERVAL);
        assert_eq!(keep_alive_interval(9_000_000_000), MAX_KEEP_ALIVE_INTERVAL);
        assert_eq!(keep_alive_interval(i64::MAX), MAX_KEEP_ALIVE_INTERVAL);
    }
}
