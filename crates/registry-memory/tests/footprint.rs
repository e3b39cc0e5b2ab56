//! Memory per registered instance, while 10,000 instances (2 metadata pairs, 2 tags) are
//! registered: the growth of the process's resident memory, and the bytes the registry asked
//! the allocator for.
//!
//! A test binary of its own with no test harness, so that nothing else runs or allocates
//! meanwhile, on one thread (the allocator's main arena).
//!
//! A counting global allocator would give the requested bytes directly, but implementing
//! `GlobalAlloc` takes `unsafe`, which this workspace forbids. So the requested bytes are
//! bounded from above instead: the stored instances' own blocks are known exactly (the `Arc`
//! and every string and vector the registry's copy holds, from their lengths and capacities);
//! everything else the process grew by (the registry's indexes and the watch hub's view,
//! with the allocator's overhead on their blocks) is charged in full. On glibc (the only
//! allocator whose block sizes this test knows) that bound is asserted against the budget;
//! elsewhere the figures are printed.
//!
//! `cargo test -p waypost-registry-memory --release --test footprint`

use std::sync::Arc;
use std::time::Duration;

use waypost_core_types::{ServiceInfo, ServiceRegistry};
use waypost_registry_memory::MemoryRegistry;

const N: usize = 10_000;
/// The budget per instance, in bytes.
const BUDGET: usize = 700;

/// The process's resident memory in bytes, from `/proc/self/status`.
fn resident() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What glibc's malloc takes from the heap for a request of `n` bytes on a 64-bit target: the
/// request plus an 8-byte header, rounded up to 16, at least 32.
fn glibc_block(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

/// The sizes of the blocks one stored instance owns: its `Arc` and each string and vector.
fn blocks_of(info: &Arc<ServiceInfo>) -> Vec<usize> {
    let mut out = vec![
        2 * size_of::<usize>() + size_of::<ServiceInfo>(),
        info.id.capacity(),
        info.name.capacity(),
        info.version.capacity(),
        info.address.capacity(),
        // A stored copy's pairs sit in a vector of exactly their number.
        info.metadata.len() * size_of::<(String, String)>(),
        info.tags.capacity() * size_of::<String>(),
    ];
    for (k, v) in &info.metadata {
        out.extend([k.capacity(), v.capacity()]);
    }
    out.extend(info.tags.iter().map(String::capacity));
    out
}

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

fn main() {
    let Some(_) = resident() else {
        println!("footprint: no /proc/self/status on this system; nothing measured");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let registry = MemoryRegistry::builder()
            .cleanup_interval(Duration::from_secs(3600))
            .build()
            .expect("registry");
        let before = resident().expect("resident memory");
        for i in 0..N {
            registry.register(&instance(i)).await.expect("register");
        }
        let after = resident().expect("resident memory");
        assert_eq!(registry.len(), N);
        let grown = after.saturating_sub(before);
        let stored = registry.instances_shared("bench-service").expect("list");
        assert_eq!(stored.len(), N);
        let (mut data, mut data_blocks) = (0, 0);
        for info in &stored {
            let blocks = blocks_of(info);
            data += blocks.iter().sum::<usize>();
            data_blocks += blocks.into_iter().map(glibc_block).sum::<usize>();
        }
        drop(stored);
        let rest = grown.saturating_sub(data_blocks);
        let bound = (data + rest) / N;
        println!(
            "footprint: per instance ({N} instances, 2 metadata pairs and 2 tags): resident \
             memory grew {} B; the instance's own data {} B requested; indexes and view at most \
             {} B; requested in all at most {bound} B (budget {BUDGET} B)",
            grown / N,
            data / N,
            rest / N
        );
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(
                bound <= BUDGET,
                "at most {bound} bytes per instance; the budget is {BUDGET}"
            );
        }
        registry.close().await.expect("close");
    });
}
