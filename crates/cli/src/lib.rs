//! The `waypost` command: inspect, watch, register, call and mirror any service registry that
//! waypost speaks (in-memory, etcd, Consul, Nacos, ZooKeeper), with one data model and one output
//! for all of them.
//!
//! The registry comes from `--registry URL` or `WAYPOST_REGISTRY` (the URL forms are waypost's,
//! see the `waypost` crate's `RegistryConfig::from_url`). Output is an aligned table for people,
//! or one JSON object per line with `-o json`. Exit codes are listed in [`Exit`].
//!
//! Most users run the binary; the library exists so the binary's parts can be tested.

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
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true, value_name = "DURATION")]
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

/// The clap command, for completions and the man page.
#[must_use]
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs the command line of this process and returns its exit status.
#[must_use]
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Help and version go to stdout with status 0; usage errors to stderr with 2.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                Exit::Usage.code()
            } else {
                0
            });
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
