//! A service on plain hyper (HTTP/1 and HTTP/2 through hyper-util's `auto` builder) that joins
//! the fleet through waypost's `Announcer`; on SIGTERM hyper-util's `GracefulShutdown` lets
//! every open connection finish its requests after the drain delay.
//!
//! `WAYPOST_REGISTRY=etcd://127.0.0.1:2379 PORT=8080 cargo run -p waypost-examples --bin announce_hyper`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;

async fn hello(_: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
}
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What the announcer does shows at info level (`RUST_LOG` changes it).
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let port = std::env::var("PORT").unwrap_or_else(|_| "0".into());
    let listener = tokio::net::TcpListener::bind(format!("0.0.0.0:{port}")).await?;
    let registry = waypost::RegistryBuilder::from_env().build().await?;
    waypost::Announcer::new(registry, "hello")
        .serve(listener.local_addr()?, |stop| async move {
            let graceful = GracefulShutdown::new();
            let http = auto::Builder::new(TokioExecutor::new());
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let conn = http.serve_connection(TokioIo::new(stream), hyper::service::service_fn(hello));
                        let conn = graceful.watch(conn.into_owned());
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                    () = &mut stop => break,
                }
            }
            // Stop accepting (the listener is dropped here), finish what is in flight.
            drop(listener);
            graceful.shutdown().await;
            Ok::<(), std::io::Error>(())
        })
        .await?;
    Ok(())
}
