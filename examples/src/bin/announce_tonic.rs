//! A gRPC service on tonic (here the standard `grpc.health.v1.Health` service) that joins the
//! fleet through waypost's `Announcer`, registered with protocol `grpc`; on SIGTERM tonic's
//! `serve_with_incoming_shutdown` stops accepting after the drain delay and finishes the calls
//! in flight.
//!
//! `WAYPOST_REGISTRY=etcd://127.0.0.1:2379 PORT=50051 cargo run -p waypost-examples --bin announce_tonic`

use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing_subscriber::EnvFilter;
use waypost::Protocol;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What the announcer does shows at info level (`RUST_LOG` changes it).
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("greeter", ServingStatus::Serving)
        .await;
    let port = std::env::var("PORT").unwrap_or_else(|_| "0".into());
    let listener = tokio::net::TcpListener::bind(format!("0.0.0.0:{port}")).await?;
    let bound = listener.local_addr()?;

    let registry = waypost::RegistryBuilder::from_env().build().await?;
    waypost::Announcer::new(registry, "greeter")
        .with_protocol(Protocol::Grpc)
        .serve(bound, |stop| {
            Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop)
        })
        .await?;
    Ok(())
}
