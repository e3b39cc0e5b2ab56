//! Shared helpers of the Consul tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use waypost_core_types::conformance::faults::{self, FaultOptions};
use waypost_core_types::{ServiceRegistry, WatchEvent, WatchStream};
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

/// The fault suite's view of the fake agent ([`faults::ServerFixture`]). `kill` stops its
/// listener and drops every connection; `restart` listens again on the same port, with the
/// agent's services and checks kept (an agent with a data dir) or, with `forget_on_restart`,
/// forgotten (a fresh agent). ACLs are checked by a second fake whose token is
/// [`faults::RIGHT_PASSWORD`].
#[derive(Debug)]
pub struct ConsulFixture {
    pub agent: FakeConsul,
    pub forget_on_restart: bool,
    acl_agent: Option<FakeConsul>,
}

impl ConsulFixture {
    pub async fn start() -> ConsulFixture {
        ConsulFixture {
            agent: fake().await,
            forget_on_restart: false,
            acl_agent: None,
        }
    }
}

#[waypost_core_types::async_trait]
impl faults::ServerFixture for ConsulFixture {
    fn options(&self) -> FaultOptions {
        // An instance that is not renewed stays for its TTL (3 s) plus
        // DeregisterCriticalServiceAfter (at least a minute). A watch whose blocking queries
        // failed, or whose index went backwards, resyncs with a Reconnected snapshot.
        FaultOptions::default()
            .with_connect_bound(Duration::from_millis(500))
            .with_liveness(Duration::from_secs(63), Duration::from_secs(2))
            .with_recovery(Duration::from_secs(10))
            .with_reconnected_snapshot(true)
    }

    async fn connect(&self) -> waypost_core_types::Result<Box<dyn ServiceRegistry>> {
        // A watch whose blocking query outlived an outage resyncs when that query returns:
        // a short wait keeps the checks short.
        let cfg = fast_config(&self.agent).with_watch_wait(Duration::from_millis(500));
        Ok(Box::new(ConsulRegistry::connect(cfg).await?))
    }

    async fn connect_unreachable(
        &self,
        port: u16,
    ) -> waypost_core_types::Result<Box<dyn ServiceRegistry>> {
        let cfg = ConsulConfig::default()
            .with_address(format!("127.0.0.1:{port}"))
            .with_connect_timeout(self.options().connect_bound);
        Ok(Box::new(ConsulRegistry::connect(cfg).await?))
    }

    async fn connect_with_password(
        &mut self,
        password: &str,
    ) -> Option<waypost_core_types::Result<Box<dyn ServiceRegistry>>> {
        if self.acl_agent.is_none() {
            let opts = FakeOptions::default().with_acl_token(faults::RIGHT_PASSWORD);
            self.acl_agent = Some(FakeConsul::start(opts).await.expect("start the ACL agent"));
        }
        let agent = self.acl_agent.as_ref()?;
        let cfg = fast_config(agent).with_token(password);
        Some(
            ConsulRegistry::connect(cfg)
                .await
                .map(|r| Box::new(r) as Box<dyn ServiceRegistry>),
        )
    }

    async fn kill(&mut self) {
        self.agent.stop();
    }

    async fn restart(&mut self) {
        if self.forget_on_restart {
            self.agent.forget_everything();
        }
        self.agent.resume().await.expect("listen again");
    }

    async fn freeze(&mut self) {
        self.agent.freeze();
    }

    async fn thaw(&mut self) {
        self.agent.thaw();
    }
}
