//! Child process for the ZooKeeper liveness test: registers one instance, prints `READY`, then
//! waits to be killed (its session, and so its ephemeral node, dies with it).
//!
//! Usage: `zk_child <servers> <prefix> <service> <id> <session_timeout_ms>`

use std::io::Write;
use std::time::Duration;

use waypost_core_types::{Health, ServiceInfo, ServiceRegistry};
use waypost_registry_zookeeper::{ZookeeperConfig, ZookeeperRegistry};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [servers, prefix, service, id, timeout_ms] = args.as_slice() else {
        eprintln!("usage: zk_child <servers> <prefix> <service> <id> <session_timeout_ms>");
        std::process::exit(2);
    };
    let timeout_ms: u64 = timeout_ms.parse().unwrap_or_else(|_| {
        eprintln!("bad session timeout {timeout_ms}");
        std::process::exit(2)
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("runtime: {e}");
            std::process::exit(1)
        });
    rt.block_on(async move {
        let config = ZookeeperConfig::new(servers.split(','))
            .with_prefix(prefix.as_str())
            .with_session_timeout(Duration::from_millis(timeout_ms))
            .with_connect_timeout(Duration::from_secs(10));
        let registry = match ZookeeperRegistry::connect(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("connect: {e}");
                std::process::exit(1)
            }
        };
        let info = ServiceInfo::new(id.as_str(), service.as_str(), "127.0.0.1", 9000)
            .with_health(Health::Healthy);
        if let Err(e) = registry.register(&info).await {
            eprintln!("register: {e}");
            std::process::exit(1)
        }
        println!("READY");
        let _ = std::io::stdout().flush();
        std::future::pending::<()>().await;
    });
}
