//! Child process for the Nacos liveness test: registers one instance with rnacos (or the Nacos
//! at the given address), prints `READY`, then waits to be killed.
//!
//! Usage: `nacos_child <server_addr> <service> <id> <port>`

use std::io::Write;
use std::time::Duration;

use waypost_core_types::{Health, ServiceInfo, ServiceRegistry};
use waypost_registry_nacos::{NacosConfig, NacosRegistry};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, service, id, port] = args.as_slice() else {
        eprintln!("usage: nacos_child <server_addr> <service> <id> <port>");
        std::process::exit(2);
    };
    let port: u16 = port.parse().unwrap_or_else(|_| {
        eprintln!("bad port {port}");
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
        let cache =
            std::env::temp_dir().join(format!("waypost-nacos-child-{}", std::process::id()));
        let cfg = NacosConfig::new(addr.clone())
            .with_connect_timeout(Duration::from_secs(5))
            .with_cache_dir(cache);
        let registry = match NacosRegistry::connect(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("connect: {e}");
                std::process::exit(1);
            }
        };
        let svc = ServiceInfo::new(id.clone(), service.clone(), "127.0.0.1", port)
            .with_health(Health::Healthy)
            .with_version("child");
        if let Err(e) = registry.register(&svc).await {
            eprintln!("register: {e}");
            std::process::exit(1);
        }
        println!("READY");
        let _ = std::io::stdout().flush();
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
}
