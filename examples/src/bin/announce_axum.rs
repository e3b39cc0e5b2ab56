//! A `users` service on axum that joins the fleet through waypost's `Announcer`: registered in
//! the registry named by `WAYPOST_REGISTRY` once its listener is bound, kept alive, and on
//! SIGTERM or Ctrl-C deregistered, drained and stopped without losing a request.
//!
//! `WAYPOST_REGISTRY=etcd://127.0.0.1:2379 PORT=8080 cargo run -p waypost-examples --bin announce_axum`
//! (`WAYPOST_ADVERTISE_ADDR` overrides the advertised address).

use axum::routing::get;
use axum::Router;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What the announcer does shows at info level (`RUST_LOG` changes it).
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let app = Router::new().route("/users", get(|| async { r#"[{"id":1,"name":"Ada"}]"# }));
    let port = std::env::var("PORT").unwrap_or_else(|_| "0".into());
    let listener = tokio::net::TcpListener::bind(format!("0.0.0.0:{port}")).await?;

    // The waypost part: two statements.
    let registry = waypost::RegistryBuilder::from_env().build().await?;
    waypost::Announcer::new(registry, "users")
        .serve(listener.local_addr()?, |stop| {
            axum::serve(listener, app).with_graceful_shutdown(stop)
        })
        .await?;
    Ok(())
}
