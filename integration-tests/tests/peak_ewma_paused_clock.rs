//! Peak EWMA measured on tokio's clock: built inside the test's runtime (current-thread, as
//! `#[tokio::test]` makes it), its default time source is tokio's clock, so with the clock paused
//! the guards see the time a call took on it.

use std::sync::Arc;
use std::time::Duration;

use waypost_balancer::PeakEwma;
use waypost_core_types::{Health, LoadBalancer, Outcome, SelectContext, ServiceInfo};

#[tokio::test(start_paused = true)]
async fn prefers_the_faster_instance_as_measured_by_the_guards() {
    // Calls take their time on tokio's paused clock, and the guards must measure it there:
    // on the std clock every call would take about nothing.
    let s: Vec<Arc<ServiceInfo>> = (0..2)
        .map(|i| {
            Arc::new(
                ServiceInfo::new(format!("t-{i}"), "t", "10.0.0.1", 80 + i)
                    .with_health(Health::Healthy),
            )
        })
        .collect();
    let latency = |id: &str| Duration::from_millis(if id == "t-0" { 10 } else { 100 });
    let call = |lb: &PeakEwma, instance: &Arc<ServiceInfo>| {
        let guard = lb.begin(instance);
        let took = latency(&instance.id);
        async move {
            tokio::time::advance(took).await;
            guard.finish(Outcome::Success);
        }
    };
    // A default below both latencies, so that the first sample of each is a peak, taken as
    // is.
    let lb = PeakEwma::builder()
        .default_rtt(Duration::from_millis(1))
        .build()
        .unwrap();
    // The slow instance is measured first and then left idle for 2 s, so that its estimate
    // has decayed (100 ms × e^(−2.01 s / 10 s) ≈ 81.8 ms): still well above the fast one's.
    call(&lb, &s[1]).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    call(&lb, &s[0]).await;
    let estimate = |id| lb.estimate(id).unwrap().as_secs_f64() * 1e3;
    assert!((estimate("t-0") - 10.0).abs() < 0.01, "{}", estimate("t-0"));
    assert!((estimate("t-1") - 81.8).abs() < 0.1, "{}", estimate("t-1"));

    let mut picks = [0usize; 2];
    for _ in 0..1000 {
        let p = lb.select(&s, &SelectContext::default()).unwrap();
        picks[usize::from(p.id == "t-1")] += 1;
        call(&lb, p).await;
    }
    // The slow one's estimate decays below 10 ms only after about 21 s (2,100 fast calls).
    assert_eq!(picks, [1000, 0]);
}
