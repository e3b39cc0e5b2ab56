//! The `waypost` command: inspect, watch, register, call and mirror any service registry that
//! waypost speaks (in-memory, etcd, Consul, Nacos, ZooKeeper), with one data model and one output
//! for all of them.
//!
//! The registry comes from `--registry URL` or `WAYPOST_REGISTRY` (the URL forms are waypost's,
//! see the `waypost` crate's `RegistryConfig::from_url`). Output is an aligned table for people,
//! or one JSON object per line with `-o json`. Exit codes are listed in [`Exit`].
//!
//! Most users run the binary; the library exists so the binary's parts can be tested.
//!
//! The rest of this page is the command's reference (the crate README).
#![doc = include_str!("../README.md")]

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

pub mod commands;
pub mod context;
pub mod error;
pub mod output;
pub mod sync;

pub use context::Context;
pub use error::{CliError, CliResult, Exit};
use output::{ColorChoice, OutputFormat, Printer};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "waypost",
    version,
    about = "Inspect, watch, register, call and mirror any service registry",
    long_about = "Inspect, watch, register, call and mirror any service registry waypost speaks: \
                  the in-memory one, etcd, Consul, Nacos and ZooKeeper, with one data model and \
                  one output for all of them.\n\n\
                  The registry is given as a URL, e.g. etcd://127.0.0.1:2379, \
                  consul://127.0.0.1:8500, nacos://127.0.0.1:8848?namespace=dev, \
                  zookeeper://127.0.0.1:2181/services.",
    after_help = "Exit codes: 0 success, 1 the operation failed, 2 bad arguments or registry URL, \
                  3 not found, 4 registry or service unreachable, 5 an instance is unhealthy."
)]
pub struct Cli {
    /// The registry URL (it may hold a password: it is never printed).
    #[arg(
        short,
        long,
        env = "WAYPOST_REGISTRY",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub registry: Option<String>,

    /// Output format: an aligned table, or one JSON object per line.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,

    /// When to colour the table.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true, value_name = "WHEN")]
    pub color: ColorChoice,

    /// Time limit for connecting to the registry and for each call (`500ms`, `10s`, `1m30s`).
    #[arg(long, default_value = "10s", value_parser = parse_timeout, global = true, value_name = "DURATION")]
    pub timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List services with instance counts and health, or one service's instances.
    Ls(commands::ls::Args),
    /// Show one instance.
    Get(commands::get::Args),
    /// Register an instance (with --keep: keep it alive until Ctrl-C, then deregister).
    Register(commands::register::Args),
    /// Deregister an instance.
    Deregister(commands::deregister::Args),
    /// Stream registry events (created, updated, deleted, snapshots) until Ctrl-C.
    Watch(commands::watch::Args),
    /// Probe every instance of a service and print the result and latency of each.
    Health(commands::health::Args),
    /// Send one request to a service through the service client (balancer, retries, deadline).
    Call(commands::call::Args),
    /// Mirror services from one registry to another, continuously, until Ctrl-C.
    Sync(sync::Args),
    /// Print a shell completion script.
    Completions(commands::completions::Args),
    /// Print the man page (roff).
    Man(commands::man::Args),
}

/// Parses a duration as Go writes them (`500ms`, `30s`, `1m30s`).
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    waypost::core::time::parse_duration(text)
}

/// Parses `--timeout`: a duration above zero.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("the timeout must be above zero".to_owned()),
        d => Ok(d),
    }
}

/// The clap command, for completions and the man page.
#[must_use]
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs the command line of this process and returns its exit status.
#[must_use]
pub fn main() -> ExitCode {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            // Usage errors: one line on stderr, status 2.
            return report(&CliError::usage(usage_error_line(&err.to_string())));
        }
        Err(err) => {
            // Help and version go to stdout with status 0.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return report(&CliError::new(
                Exit::Failure,
                format!("starting the runtime: {err}"),
            ))
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => exit.into(),
        Err(err) => report(&err),
    }
}

/// Reports a panic (which is a bug) on one line and exits with status 1: never a backtrace or a
/// half-written table with a second error after it.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let err = CliError::new(Exit::Failure, format!("internal error{at}: {payload}"));
        eprintln!("waypost: error: {err}");
        std::process::exit(i32::from(Exit::Failure.code()));
    }));
}

/// clap's usage error on one line: its message up to the usage block, without its `error:`
/// prefix, with a pointer to `--help`.
#[must_use]
pub fn usage_error_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error:").unwrap_or(line).trim());
        }
    }
    format!("{} (see --help)", parts.join(" "))
}

fn report(err: &CliError) -> ExitCode {
    eprintln!("waypost: error: {err}");
    err.exit.into()
}

/// Runs one parsed command line.
///
/// # Errors
/// The command's error, with its exit status.
pub async fn run(cli: Cli) -> CliResult {
    let ctx = Context {
        registry_url: cli.registry,
        printer: Printer::new(cli.output, cli.color),
        timeout: cli.timeout,
    };
    match cli.command {
        Command::Ls(args) => commands::ls::run(&ctx, args).await,
        Command::Get(args) => commands::get::run(&ctx, args).await,
        Command::Register(args) => commands::register::run(&ctx, args).await,
        Command::Deregister(args) => commands::deregister::run(&ctx, args).await,
        Command::Watch(args) => commands::watch::run(&ctx, args).await,
        Command::Health(args) => commands::health::run(&ctx, args).await,
        Command::Call(args) => commands::call::run(&ctx, args).await,
        Command::Sync(args) => sync::run(&ctx, args).await,
        Command::Completions(args) => commands::completions::run(&ctx, args),
        Command::Man(args) => commands::man::run(&ctx, args),
    }
}
