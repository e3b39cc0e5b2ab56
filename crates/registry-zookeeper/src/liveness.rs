//! Liveness: the ZooKeeper session that keeps our ephemeral nodes, and the supervisor that
//! follows it, gets a new session after an expiry (capped, jittered backoff, forever) and
//! creates our nodes again in it.

use std::sync::Arc;
use std::time::Duration;

use waypost_core_types::backoff::Backoff;
use waypost_core_types::{Error, Result};
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, MultiWriteError, SessionState};

use crate::acl::{self, AclPolicy};
use crate::config::ZookeeperConfig;
use crate::error::{convert, BACKEND};
use crate::keys::Paths;
use crate::ops;
use crate::registry::Inner;

/// The first delay of session recovery; it doubles up to `max_backoff`.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The current session, published to every task that needs it.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    /// The client of the current session; `None` once the registry is closed.
    pub(crate) client: Option<Client>,
    /// Increases by one with every new session.
    pub(crate) generation: u64,
}

/// Opens a session, creates the chroot and the prefix, and checks that our credentials may write
/// under the prefix.
///
/// # Errors
/// `Auth` for rejected or insufficient credentials, `Unavailable` when no session can be had.
pub(crate) async fn establish(
    config: &ZookeeperConfig,
    paths: &Paths,
    acl: AclPolicy,
) -> Result<Client> {
    let mut connector = Client::connector().with_session_timeout(config.session_timeout);
    if let Some(digest) = config.digest() {
        connector = connector.with_auth("digest", &digest);
    }
    let servers = config.connect_string();
    let client = connector.connect(&servers).await.map_err(|e| match e {
        zookeeper_client::Error::AuthFailed => Error::Auth {
            backend: BACKEND,
            message: format!("{servers} rejected the digest credentials"),
        },
        e => Error::Unavailable(format!(
            "{BACKEND}: cannot establish a session with {servers}: {e}"
        )),
    })?;
    let client = match config.effective_chroot() {
        Some(root) => {
            ops::ensure_path(&client, root, acl).await?;
            client
                .chroot(root.to_owned())
                .map_err(|_| Error::InvalidConfig(format!("{BACKEND}: invalid chroot `{root}`")))?
        }
        None => client,
    };
    ops::ensure_path(&client, paths.prefix(), acl).await?;
    // With credentials, verify them now: a wrong password should fail here, not at the first
    // register. Without credentials a read-only user (discovery) is fine.
    if let Some(user) = config.username.as_deref() {
        check_permission(&client, paths.prefix(), user).await?;
    }
    Ok(client)
}

/// Fails with a clear `Auth` error when our credentials may not create instances under the
/// prefix. The server decides: a transaction that would create a probe node and then fails on
/// purpose (a version check that cannot match) reports `NoAuth` for the create when it is not
/// allowed, and commits nothing either way.
async fn check_permission(client: &Client, prefix: &str, user: &str) -> Result<()> {
    let probe = format!("{prefix}/waypost-acl-probe-{:016x}", rand::random::<u64>());
    let mut writer = client.new_multi_writer();
    writer
        .add_create(
            &probe,
            &[],
            &CreateMode::Ephemeral.with_acls(Acls::anyone_all()),
        )
        .and_then(|()| writer.add_check_version(prefix, i32::MAX))
        .map_err(|e| convert(e, &format!("probe ACL of {prefix}")))?;
    match writer.commit().await {
        Err(MultiWriteError::OperationFailed {
            index: 0,
            source: ZkError::NoAuth,
        }) => {}
        // The create passed its checks: we may register.
        Err(MultiWriteError::OperationFailed { .. }) => return Ok(()),
        Ok(_) => {
            // Cannot happen (the version check fails), but never leave the probe behind.
            let _ = client.delete(&probe, None).await;
            return Ok(());
        }
        Err(MultiWriteError::RequestFailed { source }) => {
            return Err(convert(source, &format!("probe ACL of {prefix}")))
        }
    }
    let reason = match client.get_acl(prefix).await {
        Ok((acls, _)) => {
            let entries: Vec<_> = acls
                .iter()
                .map(|a| (a.permission(), a.scheme().to_owned(), a.id().to_owned()))
                .collect();
            acl::explain_denial(&entries, user)
        }
        Err(e) => format!("its ACL could not be read: {e}"),
    };
    Err(Error::Auth {
        backend: BACKEND,
        message: format!("may not register instances under {prefix}: {reason}"),
    })
}

/// How long one recovery attempt may take.
fn attempt_timeout(config: &ZookeeperConfig) -> Duration {
    config.connect_timeout.max(config.session_timeout)
}

/// Follows the session's state; on expiry (or any terminal state) gets a new session with
/// backoff, forever, restores our registrations in it and publishes it. Runs in the registry's
/// [`Tasks`](waypost_core_types::Tasks), which end it on close or drop.
pub(crate) async fn supervise(inner: Arc<Inner>) {
    loop {
        let Some(client) = inner.slot().client else {
            return;
        };
        let terminal = follow_session(&inner, &client).await;
        let session = client.session_id();
        drop(client);
        if inner.is_closed() {
            return;
        }
        tracing::warn!(
            backend = BACKEND,
            %session,
            state = %terminal,
            "ZooKeeper session ended; establishing a new one and restoring our registrations"
        );
        inner
            .state
            .failed(&format_args!("session {session} ended: {terminal}"));
        recover(&inner).await;
    }
}

/// Mirrors the session state into the registry state until the session ends.
async fn follow_session(inner: &Inner, client: &Client) -> SessionState {
    let mut states = client.state_watcher();
    let mut state = states.peek_state();
    loop {
        match state {
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                inner.state.connected()
            }
            SessionState::Disconnected => {
                tracing::info!(
                    backend = BACKEND,
                    "connection to ZooKeeper lost; waiting for the session to resume"
                );
                inner
                    .state
                    .failed(&"connection to ZooKeeper lost; waiting for the session to resume");
            }
            s if s.is_terminated() => return s,
            _ => {}
        }
        state = states.changed().await;
    }
}

/// Gets a new session and restores our registrations in it, retrying with backoff until it
/// succeeds or the registry closes.
async fn recover(inner: &Arc<Inner>) {
    let limit = attempt_timeout(&inner.config);
    let mut backoff = Backoff::new(FIRST_RETRY_DELAY, inner.config.max_backoff);
    loop {
        let attempt = tokio::time::timeout(limit, async {
            let client = establish(&inner.config, &inner.paths, inner.acl).await?;
            // Writes wait until our instances are restored and the session is published, so
            // none of them can slip in between on the old session.
            let _exclusive = inner.gate.write().await;
            let owned = inner.all_owned();
            ops::restore_all(inner, &client, &owned).await?;
            let session = client.session_id();
            if !inner.is_closed() {
                inner.publish(client);
            }
            Ok::<_, Error>((session, owned.len()))
        });
        let error = match attempt.await {
            Ok(Ok((session, restored))) => {
                if inner.is_closed() {
                    return;
                }
                inner.state.connected();
                inner.state.metrics().reregistered(restored);
                tracing::info!(
                    backend = BACKEND,
                    %session,
                    restored,
                    attempts = backoff.attempts() + 1,
                    "new ZooKeeper session established; registrations restored"
                );
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no new session within {limit:?}"),
        };
        let delay = backoff.next_delay();
        tracing::warn!(
            backend = BACKEND,
            attempt = backoff.attempts(),
            retry_in = ?delay,
            "ZooKeeper session recovery failed: {error}"
        );
        inner.state.failed(&error);
        tokio::time::sleep(delay).await;
    }
}
