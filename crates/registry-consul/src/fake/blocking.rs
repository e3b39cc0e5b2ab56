//! Reads with Consul's blocking-query semantics: `index` and `wait` (capped at 10 minutes,
//! default 5), up to `wait/16` of jitter, and the `X-Consul-Index` of the answer.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;
use waypost_core_types::time::parse_duration as parse_go_duration;

use super::query::Query;
use super::respond::{json_resp, text, with_index, Resp};
use super::state::State;
use super::Shared;

const MAX_QUERY_TIME: Duration = Duration::from_secs(600);
const DEFAULT_QUERY_TIME: Duration = Duration::from_secs(300);

/// A read with Consul's blocking-query semantics.
pub(crate) async fn blocking(
    shared: &Arc<Shared>,
    q: &Query,
    index_of: impl Fn(&State) -> u64,
    body_of: impl Fn(&State) -> Value,
) -> Resp {
    if q.has("stale") && q.has("consistent") {
        return text(
            400,
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        );
    }
    let requested = match q.get("index") {
        None | Some("") => 0,
        Some(v) => match v.parse::<u64>() {
            Ok(i) => i,
            Err(_) => return text(400, "Invalid index"),
        },
    };
    let wait = match q.get("wait") {
        None | Some("") => None,
        Some(w) => match parse_go_duration(w) {
            Ok(d) => Some(d),
            Err(_) => return text(400, "Invalid wait time"),
        },
    };
    if requested > 0 {
        let mut timeout = match wait {
            Some(w) if !w.is_zero() => w.min(MAX_QUERY_TIME),
            _ => DEFAULT_QUERY_TIME,
        };
        let jitter_max = (timeout / 16).as_nanos() as u64;
        if jitter_max > 0 {
            timeout += Duration::from_nanos(rand::rng().random_range(0..jitter_max));
        }
        let deadline = Instant::now() + timeout;
        let mut rx = shared.changed.subscribe();
        loop {
            if index_of(&shared.state.lock()) > requested {
                break;
            }
            tokio::select! {
                r = rx.changed() => { if r.is_err() { break; } }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    let st = shared.state.lock();
    with_index(json_resp(&body_of(&st)), index_of(&st))
}
