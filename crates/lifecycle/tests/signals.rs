//! SIGTERM starts the graceful stop and a second SIGTERM stops at once. Its own test binary:
//! the signals go to the whole process.

#![cfg(all(unix, feature = "signal"))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use waypost_lifecycle::{Announcer, Phase};
use waypost_registry_memory::MemoryRegistry;

fn sigterm_self() {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sigterm_drains_and_a_second_one_stops_at_once() {
    let registry = MemoryRegistry::new();
    let addr = "10.0.0.7:9000";
    let announcer = Announcer::new(Arc::new(registry.clone()), "users")
        .with_advertise_addr(addr)
        .with_drain_delay(Duration::from_secs(30));
    let mut phases = announcer.phases();
    let run = tokio::spawn(announcer.serve(addr.parse().unwrap(), |stop| async move {
        stop.await;
        // In-flight work that would take far longer than the test.
        tokio::time::sleep(Duration::from_secs(600)).await;
        Ok::<(), std::io::Error>(())
    }));
    let wait = |want: Phase| {
        let mut phases = phases.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), phases.wait_for(|p| *p >= want))
                .await
                .expect("phase reached in time")
                .map(|p| *p)
        }
    };
    assert_eq!(wait(Phase::Serving).await.unwrap(), Phase::Serving);
    assert_eq!(registry.len(), 1);

    sigterm_self();
    assert_eq!(wait(Phase::Draining).await.unwrap(), Phase::Draining);
    assert!(registry.is_empty(), "deregistered before draining");
    assert!(!run.is_finished(), "still serving during the drain delay");

    let second = Instant::now();
    sigterm_self();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("a second SIGTERM stops at once")
        .unwrap()
        .unwrap();
    assert!(second.elapsed() < Duration::from_secs(5));
    assert_eq!(*phases.borrow_and_update(), Phase::Stopped);
}
