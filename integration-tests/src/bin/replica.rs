//! One replica of an axum service, joined to the fleet through waypost's `Announcer`, for the
//! rolling-restart tests. `GET /work` takes `WORK_MS` (default 5) milliseconds and answers the
//! replica's port.
//!
//! Environment: `WAYPOST_REGISTRY` (registry URL), `WAYPOST_ADVERTISE_ADDR`, `PORT`,
//! `SERVICE` (default `users`), optional `DRAIN` (a duration; default: the backend's).
//! Logs go to stderr.

use std::time::Duration;

use axum::routing::get;
use axum::Router;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    if let Err(e) = run().await {
        eprintln!("replica: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")?.parse()?;
    let service = std::env::var("SERVICE").unwrap_or_else(|_| "users".into());
    let work = Duration::from_millis(
        std::env::var("WORK_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5),
    );
    let app = Router::new().route(
        "/work",
        get(move || async move {
            tokio::time::sleep(work).await;
            port.to_string()
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let registry = waypost::RegistryBuilder::from_env().build().await?;
    let mut announcer = waypost::Announcer::new(registry, service);
    if let Ok(drain) = std::env::var("DRAIN") {
        announcer = announcer.with_drain_delay(waypost::core::time::parse_duration(&drain)?);
    }
    announcer
        .serve(listener.local_addr()?, |stop| {
            axum::serve(listener, app).with_graceful_shutdown(stop)
        })
        .await?;
    Ok(())
}
