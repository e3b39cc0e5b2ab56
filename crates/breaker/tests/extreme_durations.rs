//! Every breaker API that takes a `Duration` at its extremes: `Duration::ZERO` and
//! `Duration::MAX` never panic, and mean what the docs say (zero: no wait, or a configuration
//! error where a zero window cannot count anything; MAX: "never" / "no limit").

use std::time::Duration;

use waypost_breaker::{
    AdaptiveThrottle, CircuitBreaker, CircuitState, FailureRateBreaker, Outcome,
    SimpleCircuitBreaker,
};
use waypost_core_types::Error;

const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn fail(cb: &dyn CircuitBreaker, elapsed: Duration) {
    if let Ok(p) = cb.try_acquire() {
        cb.record(p, Outcome::Failure, elapsed);
    }
}

#[tokio::test(start_paused = true)]
async fn simple_breaker_open_timeout_zero_probes_at_once_and_max_stays_open() {
    let zero = SimpleCircuitBreaker::new(1, Duration::ZERO);
    fail(&zero, Duration::ZERO);
    assert!(zero.try_acquire().is_ok(), "a zero timeout probes at once");

    let never = SimpleCircuitBreaker::new(1, Duration::MAX);
    fail(&never, Duration::MAX);
    assert_eq!(never.state(), CircuitState::Open);
    tokio::time::advance(CENTURY).await;
    assert!(matches!(never.try_acquire(), Err(Error::CircuitOpen)));
    assert_eq!(never.timeout(), Duration::MAX);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_breaker_windows_and_timeouts_at_the_extremes() {
    assert!(matches!(
        FailureRateBreaker::builder()
            .time_window(Duration::ZERO)
            .build(),
        Err(Error::InvalidConfig(_))
    ));

    // A window of Duration::MAX counts every call ever made.
    let cb = FailureRateBreaker::builder()
        .time_window(Duration::MAX)
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .open_timeout(Duration::MAX)
        .slow_calls(Duration::MAX, 1.0)
        .build()
        .unwrap();
    for _ in 0..2 {
        let p = cb.try_acquire().unwrap();
        cb.record(p, Outcome::Success, Duration::MAX);
        tokio::time::advance(CENTURY).await;
    }
    fail(&cb, Duration::ZERO);
    assert_eq!(cb.state(), CircuitState::Closed, "3 calls, minimum is 4");
    fail(&cb, Duration::ZERO);
    assert_eq!(cb.state(), CircuitState::Open, "2 of 4 calls failed");
    tokio::time::advance(CENTURY).await;
    assert!(
        cb.try_acquire().is_err(),
        "an open timeout of MAX never probes"
    );

    // A slow-call duration of zero makes every call slow; an open timeout of zero probes at once.
    let cb = FailureRateBreaker::builder()
        .count_window(2)
        .minimum_calls(2)
        .slow_calls(Duration::ZERO, 1.0)
        .open_timeout(Duration::ZERO)
        .build()
        .unwrap();
    for _ in 0..2 {
        let p = cb.try_acquire().unwrap();
        cb.record(p, Outcome::Success, Duration::ZERO);
    }
    assert_ne!(cb.state(), CircuitState::Closed, "every call was slow");
    assert!(
        cb.try_acquire().is_ok(),
        "a zero open timeout probes at once"
    );
}

/// Calls admitted out of 50 made at one instant, each succeeding.
fn admitted(t: &AdaptiveThrottle) -> usize {
    (0..50)
        .filter(|_| match t.try_acquire() {
            Ok(p) => {
                t.record(p, Outcome::Success, Duration::ZERO);
                true
            }
            Err(_) => false,
        })
        .count()
}

#[tokio::test(start_paused = true)]
async fn adaptive_throttle_windows_at_the_extremes() {
    for window in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
        let fresh = admitted(&AdaptiveThrottle::new(2.0, window));
        assert_eq!(fresh, 50, "window {window:?}: nothing failed yet");
        let t = AdaptiveThrottle::new(2.0, window);
        for _ in 0..50 {
            fail(&t, Duration::MAX);
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        tokio::time::advance(CENTURY).await;
        // A century later every window has forgotten the failures, except a MAX one.
        let now = admitted(&t);
        if window == Duration::MAX {
            assert!(now < 50, "a MAX window remembers the failures");
        } else {
            assert_eq!(now, 50, "window {window:?}");
        }
        assert_eq!(t.window(), window);
    }
}
