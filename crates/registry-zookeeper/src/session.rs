//! The registry's shared state, session establishment and the supervisor that replaces a lost
//! session and restores our registrations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::watch;
use waypost_core_types::{Error, RegistryState, Result, ServiceInfo};
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, MultiWriteError, SessionState};

use crate::acl::{self, AclPolicy};
use crate::config::ZookeeperConfig;
use crate::decode::{decode_instance, ForeignLog};
use crate::errors::{convert, BACKEND};
use crate::ops;
use crate::paths::Paths;
use waypost_core_types::backoff;

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

/// State shared by the registry, its supervisor and its watch tasks.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: ZookeeperConfig,
    pub(crate) paths: Paths,
    pub(crate) acl: AclPolicy,
    slot: watch::Sender<Slot>,
    /// What this registry registered, by id: restored after a session loss, removed by `close`.
    owned: Mutex<HashMap<String, ServiceInfo>>,
    /// Writes take it shared; restoring registrations in a new session takes it exclusively.
    pub(crate) gate: tokio::sync::RwLock<()>,
    state: Mutex<RegistryState>,
    closed: AtomicBool,
    shutdown: watch::Sender<bool>,
    foreign: ForeignLog,
}

impl Inner {
    pub(crate) fn new(
        config: ZookeeperConfig,
        paths: Paths,
        acl: AclPolicy,
        client: Client,
    ) -> Self {
        Inner {
            config,
            paths,
            acl,
            slot: watch::Sender::new(Slot {
                client: Some(client),
                generation: 1,
            }),
            owned: Mutex::new(HashMap::new()),
            gate: tokio::sync::RwLock::new(()),
            state: Mutex::new(RegistryState::Connected),
            closed: AtomicBool::new(false),
            shutdown: watch::Sender::new(false),
            foreign: ForeignLog::default(),
        }
    }

    /// The client of the current session.
    ///
    /// # Errors
    /// `Closed` after `close`.
    pub(crate) fn client(&self) -> Result<Client> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        self.slot.borrow().client.clone().ok_or(Error::Closed)
    }

    /// The current slot.
    pub(crate) fn slot(&self) -> Slot {
        self.slot.borrow().clone()
    }

    pub(crate) fn subscribe_slot(&self) -> watch::Receiver<Slot> {
        self.slot.subscribe()
    }

    pub(crate) fn subscribe_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the registry closed; `true` for the first call only.
    pub(crate) fn mark_closed(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::AcqRel);
        if first {
            *self.state.lock() = RegistryState::Closed;
        }
        first
    }

    /// Stops every task and drops the session (it closes once the last clone is gone).
    pub(crate) fn shut_down(&self) {
        self.shutdown.send_replace(true);
        self.slot.send_modify(|s| s.client = None);
    }

    fn publish(&self, client: Client) {
        self.slot.send_modify(|s| {
            s.client = Some(client);
            s.generation += 1;
        });
    }

    pub(crate) fn state(&self) -> RegistryState {
        if self.is_closed() {
            return RegistryState::Closed;
        }
        self.state.lock().clone()
    }

    fn mark_connected(&self) {
        if !self.is_closed() {
            *self.state.lock() = RegistryState::Connected;
        }
    }

    fn mark_recovering(&self, last_error: String, attempts: Option<u32>) {
        if self.is_closed() {
            return;
        }
        let mut state = self.state.lock();
        let (since, prev_attempts) = match &*state {
            RegistryState::Recovering {
                since, attempts, ..
            } => (*since, *attempts),
            _ => (SystemTime::now(), 0),
        };
        *state = RegistryState::Recovering {
            since,
            attempts: attempts.unwrap_or(prev_attempts),
            last_error,
        };
    }

    // --- what we registered ---

    pub(crate) fn owned(&self, id: &str) -> Option<ServiceInfo> {
        self.owned.lock().get(id).cloned()
    }

    pub(crate) fn own(&self, info: ServiceInfo) {
        self.owned.lock().insert(info.id.clone(), info);
    }

    pub(crate) fn disown(&self, id: &str) -> Option<ServiceInfo> {
        self.owned.lock().remove(id)
    }

    pub(crate) fn all_owned(&self) -> Vec<ServiceInfo> {
        self.owned.lock().values().cloned().collect()
    }

    pub(crate) fn take_owned(&self) -> Vec<ServiceInfo> {
        self.owned.lock().drain().map(|(_, v)| v).collect()
    }

    /// Decodes an instance node, or logs why it is skipped (one warning per path).
    pub(crate) fn decode(
        &self,
        path: &str,
        name: &str,
        id: &str,
        data: &[u8],
    ) -> Option<ServiceInfo> {
        match decode_instance(name, id, data) {
            Ok(info) => Some(info),
            Err(problem) => {
                self.foreign.skip(path, &problem);
                None
            }
        }
    }
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

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Follows the session's state; on expiry (or any terminal state) gets a new session with
/// backoff, forever, restores our registrations in it and publishes it. Ends on shutdown.
pub(crate) async fn supervise(inner: Arc<Inner>) {
    let mut shutdown = inner.subscribe_shutdown();
    loop {
        let Some(client) = inner.slot().client else {
            return;
        };
        let ended = follow_session(&inner, &client, &mut shutdown).await;
        let session = client.session_id();
        drop(client);
        let Some(terminal) = ended else { return };
        if inner.is_closed() {
            return;
        }
        tracing::warn!(
            backend = BACKEND,
            %session,
            state = %terminal,
            "ZooKeeper session ended; establishing a new one and restoring our registrations"
        );
        inner.mark_recovering(format!("session {session} ended: {terminal}"), Some(0));
        if !recover(&inner, &mut shutdown).await {
            return;
        }
    }
}

/// Mirrors the session state into the registry state until the session ends (`Some(state)`) or
/// the registry shuts down (`None`).
async fn follow_session(
    inner: &Inner,
    client: &Client,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<SessionState> {
    let mut states = client.state_watcher();
    let mut state = states.peek_state();
    loop {
        match state {
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => inner.mark_connected(),
            SessionState::Disconnected => {
                tracing::info!(
                    backend = BACKEND,
                    "connection to ZooKeeper lost; waiting for the session to resume"
                );
                inner.mark_recovering(
                    "connection to ZooKeeper lost; waiting for the session to resume".into(),
                    None,
                );
            }
            s if s.is_terminated() => return Some(s),
            _ => {}
        }
        state = tokio::select! {
            _ = wait_shutdown(shutdown) => return None,
            s = states.changed() => s,
        };
    }
}

/// Gets a new session and restores our registrations in it; `false` on shutdown.
async fn recover(inner: &Arc<Inner>, shutdown: &mut watch::Receiver<bool>) -> bool {
    let limit = attempt_timeout(&inner.config);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let attempt_fut = tokio::time::timeout(limit, async {
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
        let outcome = tokio::select! {
            _ = wait_shutdown(shutdown) => return false,
            r = attempt_fut => r,
        };
        let error = match outcome {
            Ok(Ok((session, restored))) => {
                if inner.is_closed() {
                    return false;
                }
                inner.mark_connected();
                tracing::info!(
                    backend = BACKEND,
                    %session,
                    restored,
                    attempts = attempt,
                    "new ZooKeeper session established; registrations restored"
                );
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no new session within {limit:?}"),
        };
        let delay = backoff::delay(attempt, FIRST_RETRY_DELAY, inner.config.max_backoff);
        tracing::warn!(
            backend = BACKEND,
            attempt,
            retry_in = ?delay,
            "ZooKeeper session recovery failed: {error}"
        );
        inner.mark_recovering(error, Some(attempt));
        tokio::select! {
            _ = wait_shutdown(shutdown) => return false,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
