//! The smallest useful waypost program, on the embedded in-memory registry: register instances,
//! watch a service, discover its instances, renew one, and see the other expire.
//!
//! `cargo run -p waypost-examples --bin quickstart`

use std::time::Duration;

use futures_util::StreamExt;
use waypost::{Health, RegistryBuilder, ServiceInfo, WatchEvent};

#[tokio::main]
async fn main() -> waypost::Result<()> {
    let registry = RegistryBuilder::from_url("memory://?cleanup_interval=100ms")
        .build()
        .await?;
    println!("registry: {}", registry.backend());

    let mut events = registry.watch_service("user-service").await?;
    if let Some(WatchEvent::Snapshot { services, .. }) = events.next().await {
        println!(
            "watching user-service ({} instances so far)",
            services.len()
        );
    }

    for (i, port) in [8081u16, 8082].into_iter().enumerate() {
        let svc = ServiceInfo::new(
            format!("user-service-{}", i + 1),
            "user-service",
            "127.0.0.1",
            port,
        )
        .with_version("1.0.0")
        .with_health(Health::Healthy)
        .with_metadata("region", "us-west-1")
        .with_tag("api")
        .with_ttl(Duration::from_millis(600));
        registry.register(&svc).await?;
    }

    for _ in 0..2 {
        if let Some(WatchEvent::Change(ev)) = events.next().await {
            println!("event: {} {}", ev.kind, ev.service.id);
        }
    }

    let mut found = registry.list_instances("user-service").await?;
    found.sort_by(|a, b| a.id.cmp(&b.id));
    for svc in found {
        println!(
            "discovered {} at {} ({})",
            svc.id,
            svc.endpoint(),
            svc.health
        );
    }

    // Keep instance 1 alive with heartbeats; instance 2 stops renewing and expires.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let mut expired = None;
    while tokio::time::Instant::now() < deadline && expired.is_none() {
        tokio::select! {
            _ = ticker.tick() => registry.renew("user-service-1").await?,
            Some(WatchEvent::Change(ev)) = events.next() => {
                println!("event: {} {}", ev.kind, ev.service.id);
                expired = Some(ev.service.id);
            }
        }
    }
    let left: Vec<String> = registry
        .list_instances("user-service")
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    println!("still registered: {left:?}");
    registry.close().await?;

    if expired.as_deref() == Some("user-service-2") && left == ["user-service-1"] {
        println!(
            "quickstart finished: registration, watch, discovery, renewal and expiry all worked"
        );
        Ok(())
    } else {
        Err(waypost::Error::Unavailable(format!(
            "unexpected outcome: expired {expired:?}, left {left:?}"
        )))
    }
}
