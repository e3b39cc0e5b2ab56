//! The sync benchmark (ignored by default; it measures seconds, on its own servers):
//!
//! ```text
//! cargo test -p waypost-cli --release --test sync_bench -- --ignored --nocapture
//! ```
//!
//! 1. 10,000 instances (100 services of 100) registered in etcd are mirrored into ZooKeeper:
//!    the time from the start of `waypost sync` until a ZooKeeper watch has seen all 10,000
//!    (target: at most 30 s).
//! 2. 200 changes made one at a time in etcd: the time from the start of each registration to
//!    the arrival of its mirror in a ZooKeeper watch, next to ZooKeeper's own push delay (a
//!    registration made directly in ZooKeeper, seen by the same watch). Target: p99 at most 1 s
//!    plus ZooKeeper's p99.

mod sync_support;

use std::collections::HashSet;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use sync_support::*;
use tokio::time::Instant;
use waypost::core::{ServiceEventType, WatchEvent, WatchStream};
use waypost_integration_tests::etcd::EtcdServer;
use waypost_integration_tests::require;
use waypost_integration_tests::zookeeper::{ZkOptions, ZkServer};

const SERVICES: usize = 100;
const PER_SERVICE: usize = 100;
const CHANGES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --release -- --ignored --nocapture"]
async fn sync_bench_10k_etcd_to_zookeeper() {
    const T: &str = "sync_bench_10k_etcd_to_zookeeper";
    let Some(etcd) = require(T, EtcdServer::start().await) else {
        return;
    };
    let Some(zk) = require(T, ZkServer::start(ZkOptions::default()).await) else {
        return;
    };
    let src_url = etcd_url(&etcd.endpoint(), "bench");
    let dst_url = zk_url(&zk.addr(), "bench");
    let src = open(&src_url).await;
    let dst = open(&dst_url).await;
    let total = SERVICES * PER_SERVICE;

    let t = Instant::now();
    let instances: Vec<_> = (0..total)
        .map(|i| {
            instance(
                &format!("b-{i:05}"),
                &format!("bench-{:03}", i / PER_SERVICE),
                u16::try_from(20_000 + i).expect("port"),
            )
        })
        .collect();
    let results: Vec<_> = stream::iter(instances.iter())
        .map(|s| src.register(s))
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok), "registering in etcd");
    println!("registered {total} instances in etcd in {:?}", t.elapsed());

    // 1. Initial convergence, seen through a ZooKeeper watch.
    let mut watch = dst.watch().await.expect("watch zookeeper");
    let mut seen: HashSet<String> = HashSet::new();
    next_snapshot(&mut watch, &mut seen).await;
    assert!(seen.is_empty(), "the target is not empty");
    let syncer = Syncer::start(&args(&[&src_url, &dst_url, "--status-every", "5s"]));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    while seen.len() < total {
        apply(&mut watch, &mut seen, deadline, &syncer).await;
    }
    let converged = start.elapsed();
    println!(
        "sync: {total} instances etcd -> zookeeper converged in {:.2} s (target <= 30 s)",
        converged.as_secs_f64()
    );

    // 2. Single changes, one at a time, and ZooKeeper's own push delay.
    let mut via_sync = Vec::with_capacity(CHANGES);
    let mut direct = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let id = format!("p-{i:03}");
        let t = Instant::now();
        src.register(&instance(&id, "bench-prop", 30_000))
            .await
            .expect("register in etcd");
        wait_created(&mut watch, &id, &syncer).await;
        via_sync.push(t.elapsed());

        let id = format!("d-{i:03}");
        let t = Instant::now();
        dst.register(&instance(&id, "bench-direct", 30_001))
            .await
            .expect("register in zookeeper");
        wait_created(&mut watch, &id, &syncer).await;
        direct.push(t.elapsed());
    }
    let (p50, p99) = percentiles(&mut via_sync);
    let (d50, d99) = percentiles(&mut direct);
    println!(
        "sync: single change etcd -> zookeeper watch: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({CHANGES} changes)",
        ms(p50),
        ms(p99),
        ms(*via_sync.last().expect("samples"))
    );
    println!(
        "zookeeper's own push delay (register -> watch): p50 {:.1} ms, p99 {:.1} ms",
        ms(d50),
        ms(d99)
    );
    assert!(
        converged <= Duration::from_secs(30),
        "convergence took {converged:?}"
    );
    assert!(
        p99 <= Duration::from_secs(1) + d99,
        "p99 {p99:?} above 1 s + {d99:?}"
    );
    drop(syncer);
    src.close().await.expect("close");
    dst.close().await.expect("close");
}

async fn next_snapshot(watch: &mut WatchStream, seen: &mut HashSet<String>) {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
            Ok(Some(WatchEvent::Snapshot { services, .. })) => {
                *seen = services.into_iter().map(|s| s.id).collect();
                return;
            }
            Ok(Some(_)) => {}
            other => panic!("no snapshot: {other:?}"),
        }
    }
}

async fn apply(
    watch: &mut WatchStream,
    seen: &mut HashSet<String>,
    deadline: Instant,
    syncer: &Syncer,
) {
    match tokio::time::timeout_at(deadline, watch.next()).await {
        Ok(Some(WatchEvent::Snapshot { services, .. })) => {
            *seen = services.into_iter().map(|s| s.id).collect();
        }
        Ok(Some(WatchEvent::Change(c))) => match c.kind {
            ServiceEventType::Deleted => {
                seen.remove(&c.service.id);
            }
            _ => {
                seen.insert(c.service.id);
            }
        },
        Ok(Some(_)) => {}
        Ok(None) => panic!("the watch ended"),
        Err(_) => panic!(
            "only {} instances on the target by the deadline\n{}",
            seen.len(),
            syncer.log()
        ),
    }
}

async fn wait_created(watch: &mut WatchStream, id: &str, syncer: &Syncer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(WatchEvent::Change(c)))
                if c.service.id == id && c.kind == ServiceEventType::Created =>
            {
                return
            }
            Ok(Some(WatchEvent::Snapshot { services, .. }))
                if services.iter().any(|s| s.id == id) =>
            {
                return
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watch ended"),
            Err(_) => panic!("{id} never reached the target\n{}", syncer.log()),
        }
    }
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i]
    };
    (at(0.50), at(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
