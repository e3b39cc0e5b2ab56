//! `--metrics-addr`: a Prometheus recorder and a minimal HTTP endpoint serving its text format.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::LAG;
use crate::error::{CliError, CliResult, Exit};

/// Buckets of [`LAG`], in seconds.
pub const LAG_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the Prometheus recorder as the global one and binds `addr`.
///
/// # Errors
/// Usage when the address cannot be bound; Failure when a recorder is already installed.
pub async fn install(addr: SocketAddr) -> CliResult<(PrometheusHandle, TcpListener)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::usage(format!("--metrics-addr {addr}: cannot listen: {e}")))?;
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(LAG.to_owned()), &LAG_BUCKETS)
        .map_err(|e| CliError::new(Exit::Failure, format!("metrics buckets: {e}")))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| {
        CliError::new(
            Exit::Failure,
            format!("installing the metrics recorder: {e}"),
        )
    })?;
    super::metrics::describe_metrics();
    Ok((handle, listener))
}

/// Answers `GET /metrics` with the text format and anything else with 404, one request per
/// connection, until the task is dropped.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &handle)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    // The request head, up to 8 KiB.
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = first.split(|b| *b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let (status, body) = if method == Some(b"GET") && path == Some(b"/metrics") {
        handle.run_upkeep();
        ("200 OK", handle.render())
    } else {
        ("404 Not Found", "only GET /metrics is served\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
