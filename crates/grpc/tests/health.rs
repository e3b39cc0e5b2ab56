//! The gRPC health checker against tonic-health's server.

use std::time::Duration;

use tokio::net::TcpListener;
use waypost_core_types::{HealthChecker, Protocol, ServiceInfo};
use waypost_grpc::{GrpcHealthChecker, HealthService};

#[tokio::test]
async fn reports_serving_not_serving_and_unreachable() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("greeter", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let instance =
        ServiceInfo::new("g-1", "greeter", "127.0.0.1", port).with_protocol(Protocol::Grpc);
    let checker = GrpcHealthChecker::new().expect("checker");
    checker.check(&instance).await.expect("greeter is SERVING");

    let overall = checker.clone().service(HealthService::Server);
    let err = overall
        .check(&instance)
        .await
        .expect_err("the server is NOT_SERVING");
    assert!(err.to_string().contains("NOT_SERVING"), "{err}");

    let unknown = checker
        .clone()
        .service(HealthService::Named("other".into()));
    let err = unknown.check(&instance).await.expect_err("unknown service");
    assert!(err.to_string().contains("NotFound"), "{err}");

    reporter
        .set_service_status("greeter", tonic_health::ServingStatus::NotServing)
        .await;
    assert!(!checker.is_healthy(&instance).await);
    server.abort();

    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let gone = ServiceInfo::new("g-2", "greeter", "127.0.0.1", dead_port);
    let err = checker
        .clone()
        .timeout(Duration::from_secs(1))
        .check(&gone)
        .await
        .expect_err("unreachable");
    assert!(err.to_string().contains("instance `g-2`"), "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts and never speaks HTTP/2.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let instance = ServiceInfo::new("mute", "greeter", "127.0.0.1", port);
    let checker = GrpcHealthChecker::new()
        .expect("checker")
        .timeout(Duration::from_millis(200));
    let t0 = std::time::Instant::now();
    let err = checker.check(&instance).await.expect_err("no answer");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(err.to_string().contains("mute"), "{err}");
    hold.abort();
}
