//! `waypost register`: register an instance, and with `--keep` keep it alive until Ctrl-C or
//! SIGTERM, then deregister it.
//!
//! Without `--keep` the command registers and exits without deregistering, where the backend
//! lets a registration outlive the process that made it for a bounded time, and refuses where
//! it does not:
//!
//! | backend | plain `register` |
//! |---|---|
//! | etcd | registered under a lease of the instance's TTL (else the URL's `ttl`); nothing renews the lease once the command exits, so the instance expires one TTL later |
//! | Consul | registered with a TTL check; nothing passes the check once the command exits, so it turns critical (unhealthy) after the TTL and the agent removes the instance `deregister_critical_after` later (Consul's minimum is 1 minute) |
//! | ZooKeeper | refused (exit 2): the instance is an ephemeral node of this command's session and would vanish with it |
//! | Nacos | refused (exit 2): an ephemeral instance lives as long as the connection that registered it |
//! | memory | refused (exit 2): the registry lives inside this process |

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tracing_subscriber::layer::SubscriberExt as _;
use waypost::core::validate::is_safe_name_char;
use waypost::lifecycle::DEFAULT_RENEW_INTERVAL;
use waypost::{Announcer, Health, Phase, Protocol, RegistryConfig, ServiceInfo};

use super::common::{self, bounded, cell, Shutdown};
use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost register`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without --keep (see the README's table): on etcd the instance expires \
                        one TTL after the command exits (its lease is no longer renewed); on \
                        Consul its TTL check turns critical after the TTL and the agent removes \
                        it deregister_critical_after later; ZooKeeper, Nacos and the in-memory \
                        registry tie an instance to the process that registered it, so there \
                        --keep is required (exit 2 without it).\n\
                        With --keep: the lifecycle announcer registers, renews the registration \
                        (at a third of the TTL, registering again if the registry lost it), and \
                        on Ctrl-C or SIGTERM deregisters and exits 0, printing one line per \
                        phase; a second signal stops at once."
)]
pub struct Args {
    /// The service name.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// The instance id (default: `NAME-ADDRESS-PORT`, characters other than ASCII letters,
    /// digits and `- _ . : @` replaced by `-`).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// The host name or IP address callers use.
    #[arg(long, value_name = "HOST")]
    pub address: String,
    /// The port callers use (1-65535).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// How to call the instance: http, https, grpc or tcp.
    #[arg(long, value_name = "PROTOCOL", default_value = "http", value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// The version.
    #[arg(long, value_name = "VERSION", default_value = "")]
    pub version: String,
    /// The weight for weighted balancers (0 = never picked by them).
    #[arg(long, value_name = "N", default_value_t = waypost::core::DEFAULT_WEIGHT)]
    pub weight: u32,
    /// A metadata entry (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// The time to live (`30s`, `1m`) [default: the registry's].
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration)]
    pub ttl: Option<Duration>,
    /// The health registered: healthy, unhealthy or unknown.
    #[arg(long, value_name = "HEALTH", default_value = "unknown", value_parser = parse_health)]
    pub health: Health,
    /// Stay in the foreground keeping the registration alive; deregister on Ctrl-C or SIGTERM.
    #[arg(long)]
    pub keep: bool,
}

fn parse_protocol(text: &str) -> Result<Protocol, String> {
    text.parse::<Protocol>().map_err(|e| e.to_string())
}

fn parse_health(text: &str) -> Result<Health, String> {
    text.parse::<Health>().map_err(|e| e.to_string())
}

fn parse_meta(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!(
            "expected KEY=VALUE with a non-empty key, got `{}`",
            cell(text)
        )),
    }
}

/// The default instance id: `<name>-<address>-<port>`, characters outside the id alphabet
/// replaced by `-` (the same id the lifecycle announcer gives a replica at that address).
#[must_use]
pub fn default_id(name: &str, address: &str, port: u16) -> String {
    format!("{name}-{address}-{port}")
        .chars()
        .map(|c| if is_safe_name_char(c) { c } else { '-' })
        .collect()
}

impl Args {
    /// The instance the flags describe, validated.
    ///
    /// # Errors
    /// Usage (2) when the registry would refuse it.
    pub fn instance(&self) -> CliResult<ServiceInfo> {
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| default_id(&self.name, &self.address, self.port));
        let mut info = ServiceInfo::new(id, self.name.clone(), self.address.clone(), self.port)
            .with_version(self.version.clone())
            .with_protocol(self.protocol)
            .with_health(self.health)
            .with_weight(self.weight)
            .with_ttl(self.ttl.unwrap_or(Duration::ZERO));
        for (key, value) in &self.meta {
            info = info.with_metadata(key.clone(), value.clone());
        }
        for tag in &self.tags {
            info = info.with_tag(tag.clone());
        }
        info.validate()?;
        Ok(info)
    }
}

/// Runs `waypost register`.
///
/// # Errors
/// Usage (2) for an invalid instance or a backend that needs `--keep`; see [`Exit`].
pub async fn run(ctx: &Context, args: Args) -> CliResult {
    let info = args.instance()?;
    let config = ctx.registry_config()?;
    if args.keep {
        return keep(ctx, info).await;
    }
    let why = match &config {
        RegistryConfig::Zookeeper(_) => Some(
            "ZooKeeper keeps an instance only while the session that registered it lives (an \
             ephemeral node), so it would vanish when this command exits",
        ),
        RegistryConfig::Nacos(_) => Some(
            "Nacos keeps an ephemeral instance only while the connection that registered it \
             lives, so it would vanish when this command exits",
        ),
        RegistryConfig::Memory(_) => {
            Some("the in-memory registry lives inside this process and ends with it")
        }
        _ => None,
    };
    if let Some(why) = why {
        return Err(CliError::usage(format!(
            "register without --keep: {why}; pass --keep to keep it registered until Ctrl-C"
        )));
    }
    let registry = ctx.open_registry().await?;
    let registered = bounded(
        &format!("registering `{}`", cell(&info.id)),
        ctx.timeout,
        registry.register(&info),
    )
    .await;
    if let Err(e) = registered {
        common::close(&registry, ctx.timeout).await;
        return Err(e);
    }
    let ttl = effective_ttl(&info, registry.default_ttl());
    let (expires, after) = match &config {
        RegistryConfig::Consul(c) => (
            format!(
                "its TTL check turns critical {} after the last pass and the agent removes it \
                 {} later",
                common::exact_duration(ttl),
                common::exact_duration(c.deregister_critical_after.max(Duration::from_secs(60)))
            ),
            ttl.saturating_add(c.deregister_critical_after.max(Duration::from_secs(60))),
        ),
        _ => (
            format!(
                "its lease is not renewed once this command exits, so it expires {} from now",
                common::exact_duration(ttl)
            ),
            ttl,
        ),
    };
    let p = &ctx.printer;
    if p.json() {
        p.json_line(&serde_json::json!({
            "phase": "registered",
            "id": info.id,
            "service": info.name,
            "backend": registry.backend(),
            "kept": false,
            "ttl_ns": u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX),
            "gone_within_ns": u64::try_from(after.as_nanos()).unwrap_or(u64::MAX),
        }));
    } else {
        p.line(&format!(
            "registered {} ({} at {}) in {}; not kept alive: {expires} (use --keep to keep it)",
            cell(&info.id),
            cell(&info.name),
            common::endpoint(&info),
            registry.backend()
        ));
    }
    // Neither closed nor dropped: both would deregister the instance now. The process exits
    // next, and with it the keep-alive; the backend expires the registration as said above.
    std::mem::forget(registry);
    Ok(Exit::Ok)
}

fn effective_ttl(info: &ServiceInfo, registry_default: Option<Duration>) -> Duration {
    if info.ttl.is_zero() {
        registry_default.unwrap_or(Duration::ZERO)
    } else {
        info.ttl
    }
}

/// `register --keep`: the lifecycle [`Announcer`] registers the instance, renews it (at a third
/// of the TTL, registering it again if the registry lost it or came back after an outage) and
/// deregisters it on the first SIGINT or SIGTERM; a second one stops at once. There is no
/// server behind it, so no drain delay.
async fn keep(ctx: &Context, info: ServiceInfo) -> CliResult {
    // Installed first: a Ctrl-C from now on is ours to handle, not the end of the process.
    let mut shutdown = Shutdown::install()?;
    let registry = tokio::select! {
        r = ctx.open_registry() => r?,
        sig = shutdown.recv() => {
            return Err(CliError::new(Exit::Failure, format!("{sig} while connecting; nothing was registered")));
        }
    };
    let backend = registry.backend();
    let ttl = effective_ttl(&info, registry.default_ttl());
    let every = if ttl.is_zero() {
        DEFAULT_RENEW_INTERVAL
    } else {
        (ttl / 3).clamp(Duration::from_millis(50), Duration::from_secs(24 * 3600))
    };

    // Each signal becomes a stop request of the announcer; the first one's name is kept for
    // the output.
    let first_signal: Arc<OnceLock<&'static str>> = Arc::default();
    let (requests_tx, requests) = tokio::sync::mpsc::unbounded_channel::<()>();
    let forward = {
        let first_signal = Arc::clone(&first_signal);
        tokio::spawn(async move {
            loop {
                let sig = shutdown.recv().await;
                let _ = first_signal.set(sig);
                if requests_tx.send(()).is_err() {
                    break;
                }
            }
        })
    };
    let requests = futures_util::stream::unfold(requests, |mut rx| async move {
        rx.recv().await.map(|()| ((), rx))
    });

    let mut announcer = Announcer::new(registry, info.name.clone())
        .with_id(info.id.clone())
        .with_version(info.version.clone())
        .with_protocol(info.protocol)
        .with_weight(info.weight)
        .with_health(info.health)
        .with_ttl(info.ttl)
        .with_renew_interval(every)
        .with_advertise_addr(info.address.clone())
        .allow_loopback(true)
        .with_drain_delay(Duration::ZERO)
        .with_shutdown_requests(requests)
        .close_registry(true);
    for (key, value) in &info.metadata {
        announcer = announcer.with_metadata(key.clone(), value.clone());
    }
    for tag in &info.tags {
        announcer = announcer.with_tag(tag.clone());
    }
    let mut phases = announcer.phases();
    let warnings = LifecycleLog::install(phases.clone());

    let p = ctx.printer;
    let say = |phase: &str, text: String, extra: Option<(&str, &str)>| {
        if p.json() {
            let mut value = serde_json::json!({
                "phase": phase,
                "id": info.id,
                "service": info.name,
                "backend": backend,
            });
            if let (Some((k, v)), Some(map)) = (extra, value.as_object_mut()) {
                map.insert(k.to_owned(), serde_json::Value::from(v));
            }
            p.json_line(&value);
        } else {
            p.line(&text);
        }
    };
    // The port comes from the advertised address's default: the "listener's" port.
    let bound = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), info.port);
    let run = announcer.serve(bound, |stop| async move {
        stop.await;
        Ok::<(), Infallible>(())
    });
    tokio::pin!(run);
    // One line per step, in order, even when the announcer went through several phases
    // between two looks (the phase is a watch: only its latest value is seen).
    let mut said = Said::Nothing;
    let mut tell = |upto: Phase| {
        if upto >= Phase::Serving && said < Said::Registered {
            said = Said::Registered;
            say(
                "registered",
                format!(
                    "registered {} ({} at {}) in {backend}; keeping it alive (renewed every {}) until Ctrl-C or SIGTERM",
                    cell(&info.id),
                    cell(&info.name),
                    common::endpoint(&info),
                    common::exact_duration(every)
                ),
                None,
            );
        }
        if upto >= Phase::Deregistering && said < Said::Deregistering {
            said = Said::Deregistering;
            let signal = first_signal.get().copied().unwrap_or("stop");
            say(
                "deregistering",
                format!("{signal}: deregistering {}", cell(&info.id)),
                Some(("signal", signal)),
            );
        }
        if upto >= Phase::Draining && said < Said::Deregistered {
            said = Said::Deregistered;
            if !warnings.deregistering_failed() {
                say(
                    "deregistered",
                    format!("deregistered {}", cell(&info.id)),
                    None,
                );
            }
        }
    };
    let mut phases_open = true;
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            changed = phases.changed(), if phases_open => {
                if changed.is_err() {
                    phases_open = false;
                    continue;
                }
                // `Stopped` is also where a failed registration ends: told after the result.
                let phase = *phases.borrow_and_update();
                if phase < Phase::Stopped {
                    tell(phase);
                }
            }
        }
    };
    if result.is_ok() {
        tell(Phase::Stopped);
    }
    forward.abort();
    result.map_err(|e| CliError::from(e).context(format!("registering `{}`", cell(&info.id))))?;
    if warnings.deregistering_failed() {
        return Err(CliError::new(
            Exit::Failure,
            format!(
                "deregistering `{}` failed (see the warning above); the registry removes it when its TTL or session ends",
                cell(&info.id)
            ),
        ));
    }
    Ok(Exit::Ok)
}

/// The steps of `register --keep` told so far, in their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Said {
    Nothing,
    Registered,
    Deregistering,
    Deregistered,
}

/// The lifecycle's warnings on stderr, one line each (`waypost: warning: …`), and whether one
/// came while deregistering (the announcer logs a failed deregistration and goes on).
struct LifecycleLog {
    deregistering_failed: Arc<AtomicBool>,
}

impl LifecycleLog {
    /// Installs the process's tracing subscriber: warnings and errors of the lifecycle crate.
    fn install(phases: watch::Receiver<Phase>) -> Self {
        let deregistering_failed = Arc::new(AtomicBool::new(false));
        let layer = WarningLayer {
            phases,
            deregistering_failed: Arc::clone(&deregistering_failed),
        };
        // Another subscriber already set (only in tests that call this twice) keeps its place.
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
        LifecycleLog {
            deregistering_failed,
        }
    }

    fn deregistering_failed(&self) -> bool {
        self.deregistering_failed.load(Ordering::Acquire)
    }
}

struct WarningLayer {
    phases: watch::Receiver<Phase>,
    deregistering_failed: Arc<AtomicBool>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarningLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN || !meta.target().starts_with("waypost_lifecycle") {
            return;
        }
        if *self.phases.borrow() == Phase::Deregistering {
            self.deregistering_failed.store(true, Ordering::Release);
        }
        let mut line = Line::default();
        event.record(&mut line);
        eprintln!("waypost: warning: {}{}", line.message, line.fields);
    }
}

/// An event as one line: its message, then ` key=value` for each other field.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), cell(value));
        }
    }
}
