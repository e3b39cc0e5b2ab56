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

use std::time::Duration;

use futures_util::StreamExt;
use waypost::core::validate::is_safe_name_char;
use waypost::{Error, Health, Protocol, RegistryConfig, RegistryState, ServiceInfo};

use super::common::{self, bounded, cell, Shutdown};
use crate::{CliError, CliResult, Context, Exit};

/// How often a kept registration is renewed when neither the instance nor the registry has a
/// TTL.
const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// The arguments of `waypost register`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without --keep (see the README's table): on etcd the instance expires \
                        one TTL after the command exits (its lease is no longer renewed); on \
                        Consul its TTL check turns critical after the TTL and the agent removes \
                        it deregister_critical_after later; ZooKeeper, Nacos and the in-memory \
                        registry tie an instance to the process that registered it, so there \
                        --keep is required (exit 2 without it).\n\
                        With --keep: registers, renews the registration (at a third of the TTL, \
                        registering again if the registry lost it), and on Ctrl-C or SIGTERM \
                        deregisters and exits 0, printing one line per phase."
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

/// `register --keep`.
async fn keep(ctx: &Context, info: ServiceInfo) -> CliResult {
    // Installed first: a Ctrl-C from now on is ours to handle, not the end of the process.
    let mut shutdown = Shutdown::install()?;
    let registry = tokio::select! {
        r = ctx.open_registry() => r?,
        sig = shutdown.recv() => {
            return Err(CliError::new(Exit::Failure, format!("{sig} while connecting; nothing was registered")));
        }
    };
    let p = ctx.printer;
    let phase = |phase: &str, text: String, extra: Option<(&str, &str)>| {
        if p.json() {
            let mut value = serde_json::json!({
                "phase": phase,
                "id": info.id,
                "service": info.name,
                "backend": registry.backend(),
            });
            if let (Some((k, v)), Some(map)) = (extra, value.as_object_mut()) {
                map.insert(k.to_owned(), serde_json::Value::from(v));
            }
            p.json_line(&value);
        } else {
            p.line(&text);
        }
    };
    let what = format!("registering `{}`", cell(&info.id));
    if let Err(e) = bounded(&what, ctx.timeout, registry.register(&info)).await {
        common::close(&registry, ctx.timeout).await;
        return Err(e);
    }
    let ttl = effective_ttl(&info, registry.default_ttl());
    let every = if ttl.is_zero() {
        DEFAULT_RENEW_INTERVAL
    } else {
        (ttl / 3).clamp(Duration::from_millis(50), Duration::from_secs(24 * 3600))
    };
    phase(
        "registered",
        format!(
            "registered {} ({} at {}) in {}; keeping it alive (renewed every {}) until Ctrl-C or SIGTERM",
            cell(&info.id),
            cell(&info.name),
            common::endpoint(&info),
            registry.backend(),
            common::exact_duration(every)
        ),
        None,
    );

    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut states = registry.state_changes();
    let mut states_open = true;
    let mut was_connected = true;
    let mut failing = false;
    let signal = loop {
        tokio::select! {
            sig = shutdown.recv() => break sig,
            _ = tick.tick() => keep_alive(ctx, &*registry, &info, &mut failing).await,
            state = states.next(), if states_open => match state {
                Some(RegistryState::Connected) => {
                    // Back after an outage: check the registration at once.
                    if !std::mem::replace(&mut was_connected, true) {
                        keep_alive(ctx, &*registry, &info, &mut failing).await;
                    }
                }
                Some(RegistryState::Closed) => {
                    return Err(CliError::new(Exit::Failure, "the registry closed; the registration is gone"));
                }
                Some(_) => was_connected = false,
                None => states_open = false,
            },
        }
    };
    phase(
        "deregistering",
        format!("{signal}: deregistering {}", cell(&info.id)),
        Some(("signal", signal)),
    );
    let what = format!("deregistering `{}`", cell(&info.id));
    let done = bounded(&what, ctx.timeout, registry.deregister(&info.id)).await;
    common::close(&registry, ctx.timeout).await;
    match done {
        // Already gone (expired during an outage, or removed by someone else): nothing to do.
        Ok(())
        | Err(CliError {
            exit: Exit::NotFound,
            ..
        }) => {
            phase(
                "deregistered",
                format!("deregistered {}", cell(&info.id)),
                None,
            );
            Ok(Exit::Ok)
        }
        Err(e) => Err(e),
    }
}

/// One keep-alive: renew, and register again if the registry lost the instance. Failures are
/// reported on stderr once per streak, and retried at the next tick.
async fn keep_alive(
    ctx: &Context,
    registry: &dyn waypost::ServiceRegistry,
    info: &ServiceInfo,
    failing: &mut bool,
) {
    let outcome = match tokio::time::timeout(ctx.timeout, registry.renew(&info.id)).await {
        Ok(Err(Error::NotFound(_))) => {
            eprintln!(
                "waypost: warning: the registry lost `{}`; registering it again",
                cell(&info.id)
            );
            tokio::time::timeout(ctx.timeout, registry.register(info))
                .await
                .unwrap_or_else(|_| Err(Error::timeout("registering again", ctx.timeout)))
        }
        Ok(other) => other,
        Err(_) => Err(Error::timeout("renewing", ctx.timeout)),
    };
    match outcome {
        Ok(()) if std::mem::take(failing) => {
            eprintln!("waypost: keep-alive of `{}` works again", cell(&info.id));
        }
        Ok(()) => {}
        Err(e) if !*failing => {
            *failing = true;
            eprintln!(
                "waypost: warning: keep-alive of `{}` failed (retrying): {}",
                cell(&info.id),
                CliError::from(e)
            );
        }
        Err(_) => {}
    }
}
