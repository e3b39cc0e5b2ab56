//! Memory per registered instance, while 10,000 instances (2 metadata pairs, 2 tags) are
//! registered: the live bytes the registry asked the allocator for (its stored instances, its
//! indexes and the watch hub's view), counted exactly by a counting global allocator.
//!
//! A test binary of its own with no test harness, on one thread, so that nothing else
//! allocates meanwhile.
//!
//! `cargo test -p waypost-registry-memory --release --test footprint`

use std::alloc::System;
use std::time::Duration;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use waypost_core_types::{ServiceInfo, ServiceRegistry};
use waypost_registry_memory::MemoryRegistry;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: usize = 10_000;
/// The budget per instance, in bytes.
const BUDGET: usize = 700;

fn instance(i: usize) -> ServiceInfo {
    ServiceInfo::new(
        format!("svc-{i}"),
        "bench-service",
        format!("10.0.{}.{}", i / 256, i % 256),
        8080,
    )
    .with_version("1.2.3")
    .with_metadata("zone", "eu-west-1a")
    .with_metadata("env", "prod")
    .with_tag("blue")
    .with_tag("v1")
}

/// Live bytes allocated since `region` started.
fn live(region: &Region<'_, System>) -> isize {
    let c = region.change();
    c.bytes_allocated as isize - c.bytes_deallocated as isize
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let registry = MemoryRegistry::builder()
            .cleanup_interval(Duration::from_secs(3600))
            .build()
            .expect("registry");
        // Warm up whatever the first registration allocates once (maps' first buckets).
        registry.register(&instance(N)).await.expect("register");
        registry
            .deregister(&format!("svc-{N}"))
            .await
            .expect("deregister");

        let region = Region::new(GLOBAL);
        for i in 0..N {
            // The caller's value is built and dropped inside the measured region; only what
            // the registry keeps stays live.
            registry.register(&instance(i)).await.expect("register");
        }
        let per_instance = live(&region) / N as isize;
        assert_eq!(registry.len(), N);
        let one = registry
            .instances_shared("bench-service")
            .expect("list")
            .into_iter()
            .next()
            .expect("an instance");
        let own = size_of::<ServiceInfo>() + 2 * size_of::<usize>();
        println!(
            "footprint: {per_instance} B live per registered instance ({N} instances, 2 metadata \
             pairs and 2 tags; ServiceInfo is {own} B with its Arc counts, id {:?}); budget \
             {BUDGET} B",
            one.id
        );
        drop(one);
        assert!(
            per_instance > own as isize,
            "the count must include at least the stored instances ({per_instance} B)"
        );
        assert!(
            per_instance <= BUDGET as isize,
            "{per_instance} bytes per instance; the budget is {BUDGET}"
        );
        // Deregistering everything gives the memory back.
        let region = Region::new(GLOBAL);
        for i in 0..N {
            registry
                .deregister(&format!("svc-{i}"))
                .await
                .expect("deregister");
        }
        let freed = -live(&region) / N as isize;
        println!(
            "footprint: {freed} B freed per deregistered instance (the maps keep their buckets)"
        );
        assert!(
            freed >= own as isize,
            "deregistering freed {freed} B per instance, less than the instance itself"
        );
        registry.close().await.expect("close");
    });
}
