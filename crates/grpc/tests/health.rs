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

/// With discovery's `HealthMonitor`: an instance whose server turns NOT_SERVING is marked
/// unhealthy in the registry and stops getting the channel's calls; SERVING again, it is back.
#[tokio::test]
async fn the_health_monitor_takes_a_not_serving_instance_out_of_the_channel() {
    use std::sync::Arc;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use waypost_core_types::{Health, ServiceRegistry};

    let mut reporters = Vec::new();
    let mut servers = Vec::new();
    let registry = Arc::new(waypost_registry_memory::MemoryRegistry::new());
    for id in ["m-0", "m-1"] {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("greeter", tonic_health::ServingStatus::Serving)
            .await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        servers.push(tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        ));
        reporters.push(reporter);
        registry
            .register(
                &ServiceInfo::new(id, "greeter", "127.0.0.1", port)
                    .with_protocol(Protocol::Grpc)
                    .with_health(Health::Healthy),
            )
            .await
            .expect("register");
    }
    let monitor = waypost_discovery::HealthMonitor::builder(
        registry.clone(),
        Arc::new(GrpcHealthChecker::new().expect("checker")),
    )
    .service("greeter")
    .interval(Duration::from_millis(50))
    .failure_threshold(2)
    .success_threshold(1)
    .start()
    .expect("monitor");
    let discovery = Arc::new(waypost_discovery::CachedDiscovery::new(
        registry.clone(),
        Arc::new(waypost_balancer::RoundRobin::new()),
    ));
    let mut client =
        HealthClient::new(waypost_grpc::channel(discovery, "greeter").expect("channel"));
    let ask = || HealthCheckRequest {
        service: "greeter".into(),
    };
    // The calls ask the servers the same question: the NOT_SERVING one answers NOT_SERVING (2).
    let answers = |client: &mut HealthClient<waypost_grpc::Channel>| {
        let mut client = client.clone();
        async move {
            let mut out = Vec::new();
            for _ in 0..10 {
                out.push(
                    client
                        .check(ask())
                        .await
                        .expect("check")
                        .into_inner()
                        .status,
                );
            }
            out
        }
    };
    assert!(answers(&mut client).await.iter().all(|s| *s == 1));

    reporters[1]
        .set_service_status("greeter", tonic_health::ServingStatus::NotServing)
        .await;
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let unhealthy = monitor
            .status()
            .iter()
            .any(|h| h.id == "m-1" && h.health == Health::Unhealthy);
        if unhealthy {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "m-1 not marked unhealthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = registry.get_service("m-1").await.expect("get");
    assert_eq!(stored.health, Health::Unhealthy, "written to the registry");
    // Discovery follows the registry's watch: once it has, no call reaches m-1.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = answers(&mut client).await;
        if got.iter().all(|s| *s == 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "m-1 still picked: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answers(&mut client).await.iter().all(|s| *s == 1));

    reporters[1]
        .set_service_status("greeter", tonic_health::ServingStatus::Serving)
        .await;
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while !monitor
        .status()
        .iter()
        .any(|h| h.id == "m-1" && h.health == Health::Healthy)
    {
        assert!(tokio::time::Instant::now() < until, "m-1 not healthy again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    monitor.stop();
    for s in servers {
        s.abort();
    }
}
