//! What an [`Announcer`] does when it runs: start, register, keep alive, and stop in the order
//! that loses no request.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use waypost_core_types::quote::quoted;
use waypost_core_types::validate::is_safe_name_char;
use waypost_core_types::{
    Error, Health, RegistryState, Result, ServiceInfo, ServiceRegistry, StateStream,
};

use crate::address::{self, Inputs, ADVERTISE_ADDR_ENV};
use crate::announcer::REGISTRY_CALL_BOUND;
use crate::announcer::{default_drain_delay, Readiness, Trigger, DEFAULT_RENEW_INTERVAL};
use crate::{Announcer, Phase};

/// The shortest renew interval.
const MIN_RENEW_INTERVAL: Duration = Duration::from_millis(50);
/// The longest renew or readiness interval (`Duration::MAX` included): a day.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Completes when the server should stop accepting connections: pass it to the server's
/// graceful shutdown (`axum::serve(..).with_graceful_shutdown(stop)`,
/// `tonic::transport::Server::serve_with_incoming_shutdown(incoming, stop)`).
#[must_use = "a server that ignores its stop signal is stopped at the deadline instead"]
pub struct Stop(BoxFuture<'static, ()>);

impl Future for Stop {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stop")
    }
}

/// The default id: `<name>-<host>-<port>`, characters outside the id alphabet replaced by `-`.
pub(crate) fn default_id(name: &str, host: &str, port: u16) -> String {
    format!("{name}-{host}-{port}")
        .chars()
        .map(|c| if is_safe_name_char(c) { c } else { '-' })
        .collect()
}

/// Stop requests: the first asks for a graceful stop, a second one for an immediate stop.
struct Requests {
    custom: Option<BoxFuture<'static, ()>>,
    stream: Option<BoxStream<'static, ()>>,
    #[cfg(feature = "signal")]
    signals: Option<crate::signal::Signals>,
}

impl Requests {
    fn new(trigger: Trigger) -> Result<Self> {
        match trigger {
            #[cfg(feature = "signal")]
            Trigger::Signals => Ok(Requests {
                custom: None,
                stream: None,
                signals: Some(crate::signal::Signals::new()?),
            }),
            Trigger::Custom(fut) => Ok(Requests {
                custom: Some(fut),
                stream: None,
                #[cfg(feature = "signal")]
                signals: None,
            }),
            Trigger::Requests(stream) => Ok(Requests {
                custom: None,
                stream: Some(stream),
                #[cfg(feature = "signal")]
                signals: None,
            }),
        }
    }

    /// The next stop request (pending forever once a custom trigger has fired).
    async fn next(&mut self) -> &'static str {
        #[cfg(feature = "signal")]
        if let Some(signals) = &mut self.signals {
            return signals.next().await;
        }
        if let Some(stream) = &mut self.stream {
            return match stream.next().await {
                Some(()) => "shutdown request",
                None => {
                    self.stream = None;
                    std::future::pending().await
                }
            };
        }
        match &mut self.custom {
            Some(fut) => {
                fut.await;
                self.custom = None;
                "shutdown future"
            }
            None => std::future::pending().await,
        }
    }
}

/// How the serving part ended.
enum Ended {
    /// A stop was requested.
    Requested(&'static str),
    /// The server stopped by itself (or failed).
    Server(Result<()>),
}

/// Outcome of the server task, as an error of ours.
fn server_result<E>(
    joined: std::result::Result<std::result::Result<(), E>, tokio::task::JoinError>,
) -> Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::backend("server", e)),
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(Error::backend("server", e)),
    }
}

/// Bounds one registry call.
async fn bounded<T>(what: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(REGISTRY_CALL_BOUND, call).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout(what.to_owned(), REGISTRY_CALL_BOUND)),
    }
}

struct Run {
    registry: Arc<dyn ServiceRegistry>,
    phase: watch::Sender<Phase>,
    info: ServiceInfo,
}

impl Run {
    fn enter(&self, phase: Phase) {
        let left = self.phase.send_replace(phase);
        crate::observe::moved(&self.info.name, left, phase);
        info!(service = %self.info.name, id = %self.info.id, %phase, "lifecycle: {phase}");
    }

    /// Registers (or registers again) the instance as `info` has it now.
    async fn register(&self, info: &ServiceInfo) -> Result<()> {
        bounded("registering", self.registry.register(info)).await
    }

    /// One keep-alive: renew, and register `info` again if the registry lost the instance.
    async fn keep_alive(&self, info: &ServiceInfo, failing: &mut bool) {
        let outcome = match bounded("renewing", self.registry.renew(&info.id)).await {
            Err(Error::NotFound(_)) => {
                warn!(id = %info.id, "lifecycle: the registry lost our instance; registering it again");
                self.register(info).await
            }
            other => other,
        };
        match outcome {
            Ok(()) => {
                if std::mem::take(failing) {
                    info!(id = %self.info.id, "lifecycle: keep-alive works again");
                }
            }
            Err(e) if !*failing => {
                *failing = true;
                warn!(id = %self.info.id, "lifecycle: keep-alive failed (retrying): {e}");
            }
            Err(e) => debug!(id = %self.info.id, "lifecycle: keep-alive failed again: {e}"),
        }
    }
}

impl Announcer {
    /// Runs the service: starts `server` (given the stop signal to pass to its graceful
    /// shutdown), registers it at the address worked out from `bound` (the listener's
    /// `local_addr()`), keeps it registered, and on a stop request deregisters, drains, stops
    /// the server and closes the registry (see the [type docs](Announcer)). Returns when all
    /// of that is done, or at once on a second stop request.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when no address can be advertised (nothing was started);
    /// [`Error::InvalidInstance`] for an instance the registry would refuse; the registration's
    /// error when the first registration fails (the server is stopped); `Error::Backend`
    /// with backend `"server"` when the server fails or panics (the instance is deregistered
    /// first).
    pub async fn serve<F, S, E>(self, bound: SocketAddr, server: F) -> Result<()>
    where
        F: FnOnce(Stop) -> S,
        S: IntoFuture<Output = std::result::Result<(), E>>,
        S::IntoFuture: Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let Announcer {
            registry,
            template,
            id,
            advertise,
            allow_loopback,
            renew_interval,
            readiness,
            drain_delay,
            stop_deadline,
            trigger,
            close_registry,
            phase,
        } = self;
        let advertised = address::resolve(
            Inputs {
                explicit: advertise.as_deref(),
                env: std::env::var(ADVERTISE_ADDR_ENV).ok(),
                bound,
                allow_loopback,
            },
            address::machine_interfaces,
        )?;
        let mut info = template;
        info.id = id.unwrap_or_else(|| default_id(&info.name, &advertised.host, advertised.port));
        info.address = advertised.host.clone();
        info.port = advertised.port;
        let serving_health = info.health;
        if readiness.is_some() {
            info.health = Health::Unhealthy;
        }
        info.validate()?;
        let mut requests = Requests::new(trigger)?;
        let run = Run {
            registry,
            phase,
            info,
        };
        info!(
            service = %run.info.name,
            id = %run.info.id,
            address = %quoted(&advertised.host),
            port = advertised.port,
            source = ?advertised.source,
            backend = run.registry.backend(),
            "lifecycle: starting"
        );
        run.enter(Phase::Starting);

        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = Stop(
            async move {
                let mut rx = stop_rx;
                let _ = rx.wait_for(|stop| *stop).await;
            }
            .boxed(),
        );
        let mut server: JoinHandle<std::result::Result<(), E>> =
            tokio::spawn(server(stop).into_future());

        if let Err(e) = run.register(&run.info).await {
            warn!(id = %run.info.id, "lifecycle: registering failed; stopping the server: {e}");
            let _ = stop_tx.send(true);
            // The registration's error is the one to report; the server's ending is logged.
            if let Err(server_error) =
                finish_server(&mut server, stop_deadline, &mut requests).await
            {
                debug!("lifecycle: the server ended with: {server_error}");
            }
            run.enter(Phase::Stopped);
            return Err(e);
        }

        let ttl = if run.info.ttl.is_zero() {
            run.registry.default_ttl()
        } else {
            Some(run.info.ttl)
        };
        let every = renew_interval
            .or_else(|| ttl.map(|t| t / 3))
            .unwrap_or(DEFAULT_RENEW_INTERVAL)
            .clamp(MIN_RENEW_INTERVAL, MAX_INTERVAL);
        let ended = serving(
            &run,
            &mut server,
            &mut requests,
            readiness,
            serving_health,
            every,
        )
        .await;
        let reason = match ended {
            Ended::Server(result) => {
                // Nothing to drain: the server is gone. Take the instance out at once.
                warn!(id = %run.info.id, "lifecycle: the server stopped by itself");
                run.enter(Phase::Deregistering);
                deregister(&run).await;
                close(&run, close_registry).await;
                run.enter(Phase::Stopped);
                return result;
            }
            Ended::Requested(reason) => reason,
        };
        info!(id = %run.info.id, "lifecycle: stop requested ({reason})");
        run.enter(Phase::Deregistering);
        deregister(&run).await;

        let drain = drain_delay.unwrap_or_else(|| default_drain_delay(run.registry.backend()));
        run.enter(Phase::Draining);
        let mut forced = false;
        let mut result = None;
        tokio::select! {
            () = tokio::time::sleep(drain) => {}
            why = requests.next() => {
                warn!(id = %run.info.id, "lifecycle: second stop request ({why}); stopping at once");
                forced = true;
            }
            joined = &mut server => result = Some(server_result(joined)),
        }

        let result = match result {
            Some(result) => result,
            None => {
                run.enter(Phase::Stopping);
                let _ = stop_tx.send(true);
                if forced {
                    server.abort();
                    server_result((&mut server).await)
                } else {
                    finish_server(&mut server, stop_deadline, &mut requests).await
                }
            }
        };
        close(&run, close_registry).await;
        run.enter(Phase::Stopped);
        result
    }
}

/// Registered: waits for the readiness check (if any), keeps the registration alive, and
/// returns on a stop request or when the server ends.
async fn serving<E>(
    run: &Run,
    server: &mut JoinHandle<std::result::Result<(), E>>,
    requests: &mut Requests,
    readiness: Option<(Readiness, Duration)>,
    serving_health: Health,
    every: Duration,
) -> Ended
where
    E: std::error::Error + Send + Sync + 'static,
{
    // The instance as it is registered: readiness changes its health.
    let mut current = run.info.clone();
    let mut ready_check = readiness;
    let mut failing = false;
    let start = tokio::time::Instant::now();
    let mut renew = tokio::time::interval_at(start + every, every);
    // The registry's own state: back to `Connected` after an outage, check our registration
    // at once instead of at the next renewal.
    let mut states = Some(run.registry.state_changes());
    let mut was_connected = true;
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check_at = start;
    if ready_check.is_some() {
        run.enter(Phase::WaitingReady);
    } else {
        run.enter(Phase::Serving);
    }
    loop {
        let check = async {
            match &ready_check {
                Some((check, _)) => {
                    tokio::time::sleep_until(check_at).await;
                    check().await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            why = requests.next() => return Ended::Requested(why),
            joined = &mut *server => return Ended::Server(server_result(joined)),
            _ = renew.tick() => run.keep_alive(&current, &mut failing).await,
            state = next_state(&mut states) => {
                let connected = state.is_connected();
                if connected && !was_connected {
                    info!(id = %run.info.id, "lifecycle: the registry is connected again; checking our registration");
                    run.keep_alive(&current, &mut failing).await;
                } else if !connected && was_connected {
                    warn!(id = %run.info.id, "lifecycle: the registry is {state:?}; it keeps our registration and restores it when it can");
                }
                was_connected = connected;
            }
            ready = check => {
                let interval = ready_check.as_ref().map_or(Duration::ZERO, |(_, i)| *i);
                if ready {
                    current.health = serving_health;
                    match run.register(&current).await {
                        Ok(()) => {
                            ready_check = None;
                            run.enter(Phase::Serving);
                        }
                        Err(e) => {
                            current.health = Health::Unhealthy;
                            warn!(id = %run.info.id, "lifecycle: marking the instance healthy failed (retrying): {e}");
                            check_at = later(interval);
                        }
                    }
                } else {
                    check_at = later(interval);
                }
            }
        }
    }
}

/// The next state of the registry; pending once its stream has ended.
async fn next_state(states: &mut Option<StateStream>) -> RegistryState {
    if let Some(stream) = states {
        if let Some(state) = stream.next().await {
            return state;
        }
        *states = None;
    }
    std::future::pending().await
}

/// `after` from now (a duration too long to represent is taken as a day, which the loop
/// recomputes anyway).
fn later(after: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + after.min(MAX_INTERVAL)
}

/// Removes the instance; a failure is logged (the registry's TTL or session takes it out).
async fn deregister(run: &Run) {
    match bounded("deregistering", run.registry.deregister(&run.info.id)).await {
        Ok(()) | Err(Error::NotFound(_)) => {}
        Err(e) => warn!(
            id = %run.info.id,
            "lifecycle: deregistering failed; the registry will expire the instance: {e}"
        ),
    }
}

/// Closes the registry, if the announcer owns that step.
async fn close(run: &Run, close_registry: bool) {
    if !close_registry {
        return;
    }
    run.enter(Phase::Closing);
    if let Err(e) = bounded("closing the registry", run.registry.close()).await {
        warn!("lifecycle: closing the registry failed: {e}");
    }
}

/// Waits for a stopping server up to `deadline`, or until a second stop request; then aborts it.
async fn finish_server<E>(
    server: &mut JoinHandle<std::result::Result<(), E>>,
    deadline: Duration,
    requests: &mut Requests,
) -> Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::select! {
        joined = &mut *server => return server_result(joined),
        () = tokio::time::sleep(deadline) => {
            warn!("lifecycle: in-flight requests did not finish within {deadline:?}; stopping the server");
        }
        why = requests.next() => {
            warn!("lifecycle: second stop request ({why}); stopping the server at once");
        }
    }
    server.abort();
    server_result(server.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_are_stable_and_valid() {
        assert_eq!(default_id("users", "10.0.0.5", 8080), "users-10.0.0.5-8080");
        assert_eq!(default_id("users", "fd00::2", 80), "users-fd00::2-80");
        assert_eq!(default_id("users", "a b", 1), "users-a-b-1");
        waypost_core_types::validate::validate_key_part(
            "id",
            &default_id("users", "fd00::2", 80),
            waypost_core_types::validate::MAX_ID_LEN,
        )
        .unwrap();
    }
}
