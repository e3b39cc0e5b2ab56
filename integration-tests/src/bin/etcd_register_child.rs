//! A process that registers one instance in etcd and then lives until it is killed: the tests
//! SIGKILL it to check that its instance disappears within the lease TTL.
//!
//! Usage: `etcd_register_child ENDPOINT PREFIX NAME ID TTL_SECS [INSTANCE_TTL_SECS]`: the
//! registry's TTL, and optionally a TTL of the instance's own (`ServiceInfo::with_ttl`). Prints
//! `REGISTERED` once the instance is stored.

use std::time::Duration;

use waypost_core_types::{Health, ServiceInfo, ServiceRegistry};
use waypost_registry_etcd::{EtcdConfig, EtcdRegistry};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (endpoint, prefix, name, id, ttl, instance_ttl) = match args.as_slice() {
        [e, p, n, i, t] => (e, p, n, i, t, None),
        [e, p, n, i, t, it] => (e, p, n, i, t, Some(it)),
        _ => {
            eprintln!(
                "usage: etcd_register_child ENDPOINT PREFIX NAME ID TTL_SECS [INSTANCE_TTL_SECS]"
            );
            std::process::exit(2);
        }
    };
    let ttl: u64 = ttl.parse().unwrap_or(2);
    let instance_ttl: Option<u64> = instance_ttl.and_then(|t| t.parse().ok());
    let config = EtcdConfig::new([endpoint.as_str()])
        .with_prefix(prefix.as_str())
        .with_ttl(Duration::from_secs(ttl));
    let registry = match EtcdRegistry::connect(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("connect: {e}");
            std::process::exit(1);
        }
    };
    let mut svc = ServiceInfo::new(id.as_str(), name.as_str(), "127.0.0.1", 9000)
        .with_health(Health::Healthy);
    if let Some(t) = instance_ttl {
        svc = svc.with_ttl(Duration::from_secs(t));
    }
    if let Err(e) = registry.register(&svc).await {
        eprintln!("register: {e}");
        std::process::exit(1);
    }
    println!("REGISTERED");
    // Keep the registry (and its keep-alive) alive until killed.
    std::future::pending::<()>().await;
}
