//! Shared helpers of the Consul tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use waypost_core_types::{WatchEvent, WatchStream};
use waypost_registry_consul::fake::{FakeConsul, FakeOptions};
use waypost_registry_consul::{ConsulConfig, ConsulRegistry};

/// A configuration for the fake with test-sized timings.
pub fn fast_config(agent: &FakeConsul) -> ConsulConfig {
    ConsulConfig::default()
        .with_address(agent.url())
        .with_ttl(Duration::from_secs(3))
        .with_connect_timeout(Duration::from_secs(2))
        .with_request_timeout(Duration::from_secs(5))
        .with_watch_wait(Duration::from_secs(2))
        .with_watch_min_interval(Duration::from_millis(20))
        .with_retry_initial_backoff(Duration::from_millis(50))
        .with_retry_max_backoff(Duration::from_millis(400))
}

pub async fn fake() -> FakeConsul {
    FakeConsul::start(FakeOptions::default())
        .await
        .expect("start the fake agent")
}

pub async fn connect(cfg: ConsulConfig) -> ConsulRegistry {
    ConsulRegistry::connect(cfg)
        .await
        .expect("connect to the fake agent")
}

/// Polls `f` until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn next(stream: &mut WatchStream, limit: Duration) -> Option<WatchEvent> {
    tokio::time::timeout(limit, stream.next())
        .await
        .ok()
        .flatten()
}

/// Whether the real-agent tests must run (a missing agent fails them).
pub fn real_agent_required() -> bool {
    std::env::var("WAYPOST_REQUIRE_CONSUL")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
        .unwrap_or(false)
}
