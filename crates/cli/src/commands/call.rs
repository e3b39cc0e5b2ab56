//! `waypost call SERVICE PATH`: one request through waypost's service client (discovery, a
//! balancer, retries on other instances, a per-attempt timeout and an overall deadline).

use std::sync::Arc;
use std::time::Duration;

use waypost::client::{Bytes, Method, ServiceClient};
use waypost::{
    CachedDiscovery, Error, LeastRequest, LoadBalancer, PeakEwma, Random, RoundRobin,
    ServiceDiscovery, SmoothWeightedRoundRobin, WeightedRandom,
};

use super::common::{self, cell};
use crate::{CliError, CliResult, Context, Exit};

/// `--balancer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Balancer {
    /// Each instance in turn.
    RoundRobin,
    /// A random instance.
    Random,
    /// A random instance, in proportion to its weight.
    WeightedRandom,
    /// Smooth weighted round-robin (nginx's), in proportion to the weights.
    SmoothWeighted,
    /// The one of two random instances with fewer requests in flight.
    LeastRequest,
    /// The one of two random instances with the lower peak-EWMA latency.
    PeakEwma,
}

impl Balancer {
    fn build(self) -> Arc<dyn LoadBalancer> {
        match self {
            Balancer::RoundRobin => Arc::new(RoundRobin::new()),
            Balancer::Random => Arc::new(Random::new()),
            Balancer::WeightedRandom => Arc::new(WeightedRandom::new()),
            Balancer::SmoothWeighted => Arc::new(SmoothWeightedRoundRobin::new()),
            Balancer::LeastRequest => Arc::new(LeastRequest::new()),
            Balancer::PeakEwma => Arc::new(PeakEwma::new()),
        }
    }
}

/// The arguments of `waypost call`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The response body goes to stdout as it is; the status, the instance \
                        that answered and the number of attempts go to stderr (`waypost: 200 \
                        OK from ID (ADDRESS:PORT), 1 attempt`). With -o json, one object on \
                        stdout instead: {\"status\",\"instance\":{\"id\",\"address\",\"port\"},\
                        \"attempts\",\"body\"} (body as text, lossily decoded).\n\
                        Retries go to other instances: connection failures for every method, \
                        5xx and timeouts for idempotent methods only. --timeout bounds each \
                        attempt, --deadline the whole call.\n\
                        Exit 0 for a 2xx answer, 1 for any other status (an error status is \
                        reported on stderr with the start of its body), 3 for a service \
                        without instances, 4 when no instance could be reached in time."
)]
pub struct Args {
    /// The service to call.
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// The path, with its query string (`/users/1?full=true`).
    #[arg(value_name = "PATH")]
    pub path: String,
    /// The HTTP method.
    #[arg(short = 'X', long = "request", value_name = "METHOD", default_value = "GET", value_parser = parse_method)]
    pub method: Method,
    /// The request body, or `@FILE` to send a file's content.
    #[arg(short = 'd', long = "data", value_name = "BODY")]
    pub data: Option<String>,
    /// A request header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// How the instance of each attempt is chosen.
    #[arg(long, value_enum, value_name = "BALANCER", default_value_t = Balancer::RoundRobin)]
    pub balancer: Balancer,
    /// Retries after the first attempt (each on another instance where there is one).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub retries: u32,
    /// The time limit of the whole call, retries included (`5s`, `1m`).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::parse_duration)]
    pub deadline: Duration,
}

fn parse_method(text: &str) -> Result<Method, String> {
    Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", cell(text)))
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let bad = || format!("expected `Name: value`, got `{}`", cell(text));
    let (name, value) = text.split_once(':').ok_or_else(bad)?;
    let (name, value) = (name.trim(), value.trim());
    if http::HeaderName::from_bytes(name.as_bytes()).is_err()
        || http::HeaderValue::from_str(value).is_err()
    {
        return Err(bad());
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// The exit status of a failed call.
fn call_error(err: Error) -> CliError {
    let exit = match &err {
        Error::ServiceNotFound(_) | Error::NotFound(_) => Exit::NotFound,
        Error::InvalidConfig(_) | Error::InvalidInstance(_) => Exit::Usage,
        // The service answered: not a reachability problem, whatever the status.
        Error::Http { .. } | Error::BodyTooLarge { .. } | Error::Codec(_) => Exit::Failure,
        Error::Timeout { .. }
        | Error::Unavailable(_)
        | Error::NoHealthyInstance(_)
        | Error::CircuitOpen
        | Error::Rejected(_)
        | Error::Backend { .. } => Exit::Unavailable,
        _ => Exit::Failure,
    };
    CliError::new(exit, CliError::from(err).message)
}

/// Runs `waypost call`.
///
/// # Errors
/// See the command's help for the exit statuses.
pub async fn run(ctx: &Context, args: Args) -> CliResult {
    let body = match &args.data {
        None => Bytes::new(),
        Some(text) => match text.strip_prefix('@') {
            Some(path) => Bytes::from(std::fs::read(path).map_err(|e| {
                CliError::usage(format!("reading the body from `{}`: {e}", cell(path)))
            })?),
            None => Bytes::from(text.clone().into_bytes()),
        },
    };
    if args.deadline.is_zero() {
        return Err(CliError::usage("--deadline must be above zero"));
    }
    let registry = ctx.open_registry().await?;
    let discovery = Arc::new(CachedDiscovery::new(
        registry.clone(),
        args.balancer.build(),
    ));
    let outcome = send(ctx, &args, &discovery, body).await;
    let _ = tokio::time::timeout(ctx.timeout, discovery.close()).await;
    common::close(&registry, ctx.timeout).await;
    outcome
}

async fn send(
    ctx: &Context,
    args: &Args,
    discovery: &Arc<CachedDiscovery>,
    body: Bytes,
) -> CliResult {
    let client = ServiceClient::builder(discovery.clone() as Arc<dyn ServiceDiscovery>)
        .timeout(ctx.timeout)
        .retry(args.retries, Duration::from_millis(100))
        .deadline(args.deadline)
        .build()
        .map_err(|e| CliError::from(e).context("building the client"))?;
    let mut request = client
        .request(args.method.clone(), &args.service, &args.path)
        .body(body);
    for (name, value) in &args.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let what = format!("calling `{}` {}", cell(&args.service), cell(&args.path));
    let response = request
        .send()
        .await
        .map_err(|e| call_error(e).context(&what))?;
    let ok = response.status.is_success();
    let p = &ctx.printer;
    let instance = &response.instance;
    if p.json() {
        p.json_line(&serde_json::json!({
            "status": response.status.as_u16(),
            "instance": {
                "id": instance.id,
                "address": instance.address,
                "port": instance.port,
            },
            "attempts": response.attempts,
            "body": String::from_utf8_lossy(&response.body),
        }));
    } else {
        crate::output::write_stdout(&response.body);
        eprintln!(
            "waypost: {} from {} ({}), {} attempt{}",
            response.status,
            cell(&instance.id),
            common::endpoint(instance),
            response.attempts,
            if response.attempts == 1 { "" } else { "s" }
        );
    }
    if ok {
        Ok(Exit::Ok)
    } else {
        Err(CliError::new(
            Exit::Failure,
            format!("{what}: status {}", response.status),
        ))
    }
}
