//! `waypost health SERVICE`: probe every instance once and print the result and latency of each.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use waypost::grpc::GrpcHealthChecker;
use waypost::{Error, HealthChecker, HttpHealthChecker, Protocol, ServiceInfo, TcpHealthChecker};

use super::common::{self, bounded, cell};
use crate::output::Table;
use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost health`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Each instance is probed by its protocol, within --timeout: http and \
                        https with `GET <path>` (healthy on a 2xx answer), grpc with the gRPC \
                        health protocol (grpc.health.v1 Check of the service name answering \
                        SERVING), tcp by opening a connection. Columns: ID, ADDRESS, PROTOCOL, \
                        RESULT (healthy, or unhealthy and why), LATENCY. With -o json one object \
                        per instance: {\"id\",\"address\",\"port\",\"protocol\",\"healthy\",\
                        \"error\",\"latency_ms\"}.\n\
                        Exit 0 when every instance is healthy, 5 when one is not, 3 when the \
                        service has no instance."
)]
pub struct Args {
    /// The service whose instances are probed.
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// The path probed on http and https instances.
    #[arg(long, value_name = "PATH", default_value = "/health")]
    pub path: String,
}

/// One probe's outcome.
struct Probe {
    info: ServiceInfo,
    result: Result<(), Error>,
    latency: std::time::Duration,
}

/// Runs `waypost health`.
///
/// # Errors
/// NotFound (3) for a service without instances; see [`Exit`].
pub async fn run(ctx: &Context, args: Args) -> CliResult {
    let registry = ctx.open_registry().await?;
    let listed = bounded(
        &format!("listing service `{}`", cell(&args.service)),
        ctx.timeout,
        registry.list_instances(&args.service),
    )
    .await;
    common::close(&registry, ctx.timeout).await;
    let mut instances = listed?;
    if instances.is_empty() {
        return Err(Error::ServiceNotFound(args.service).into());
    }
    instances.sort_by(|a, b| a.id.cmp(&b.id));

    let http: Arc<dyn HealthChecker> =
        Arc::new(HttpHealthChecker::new(ctx.timeout).with_path(args.path.clone()));
    let tcp: Arc<dyn HealthChecker> = Arc::new(TcpHealthChecker::new(ctx.timeout));
    let grpc: Arc<dyn HealthChecker> = Arc::new(
        GrpcHealthChecker::new()
            .map_err(|e| CliError::from(e).context("setting up the gRPC health check"))?
            .timeout(ctx.timeout),
    );
    let limit = ctx.timeout;
    let probes = instances.into_iter().map(|info| {
        let checker = match info.protocol {
            Protocol::Http | Protocol::Https => http.clone(),
            Protocol::Grpc => grpc.clone(),
            Protocol::Tcp => tcp.clone(),
        };
        async move {
            let start = Instant::now();
            let result = match tokio::time::timeout(limit, checker.check(&info)).await {
                Ok(r) => r,
                Err(_) => Err(Error::timeout("probe", limit)),
            };
            Probe {
                info,
                result,
                latency: start.elapsed(),
            }
        }
    });
    let probes = join_all(probes).await;
    let all_healthy = probes.iter().all(|p| p.result.is_ok());

    let p = &ctx.printer;
    if p.json() {
        for probe in &probes {
            p.json_line(&serde_json::json!({
                "id": probe.info.id,
                "address": probe.info.address,
                "port": probe.info.port,
                "protocol": probe.info.protocol.as_str(),
                "healthy": probe.result.is_ok(),
                "error": probe.result.as_ref().err().map(one_line),
                "latency_ms": probe.latency.as_secs_f64() * 1000.0,
            }));
        }
    } else {
        let mut table = Table::new(["ID", "ADDRESS", "PROTOCOL", "RESULT", "LATENCY"]);
        for probe in &probes {
            let result = match &probe.result {
                Ok(()) => common::good_or_bad(p, true, "healthy"),
                Err(e) => format!(
                    "{}: {}",
                    common::good_or_bad(p, false, "unhealthy"),
                    one_line(e)
                ),
            };
            table.row([
                cell(&probe.info.id),
                common::endpoint(&probe.info),
                probe.info.protocol.as_str().to_owned(),
                result,
                format!("{:.1}ms", probe.latency.as_secs_f64() * 1000.0),
            ]);
        }
        p.text(&table.render());
    }
    Ok(if all_healthy {
        Exit::Ok
    } else {
        Exit::Unhealthy
    })
}

/// An error's text on one line (as the command prints errors).
fn one_line(e: &Error) -> String {
    CliError::new(Exit::Failure, e.to_string()).to_string()
}
