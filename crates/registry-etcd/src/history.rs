//! Is the server's history still the one a watch followed?
//!
//! A watch resumes from the revision after the last one it saw, which is right only if the
//! server still has the same history. An etcd that was wiped (or restored from an older backup)
//! and restarted on the same address starts its revisions again; once as many writes have landed
//! as before, the old revision exists again but means something else, and resuming there would
//! keep instances that are long gone. So a watch checks, on every response, that the server's
//! identity did not change (cluster id; raft term and revision never go backwards), and before
//! it resumes after a break, that the server agrees with its view at the last revision it saw:
//! the number of keys in its range, and the last key it saw written, at that revision. If not,
//! the range is read again and every stream gets `Snapshot { reason: Reconnected }`.

use etcd_client::{GetOptions, KeyValue, ResponseHeader};

use crate::error;
use crate::keys::prefix_end;
use crate::ops::Inner;

/// Who answered a request, from its response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerHeader {
    pub(crate) cluster_id: u64,
    pub(crate) member_id: u64,
    pub(crate) raft_term: u64,
    pub(crate) revision: i64,
}

impl From<&ResponseHeader> for ServerHeader {
    fn from(h: &ResponseHeader) -> Self {
        ServerHeader {
            cluster_id: h.cluster_id(),
            member_id: h.member_id(),
            raft_term: h.raft_term(),
            revision: h.revision(),
        }
    }
}

/// What a watch has seen of its server: checked against every later response.
#[derive(Debug, Clone, Default)]
pub(crate) struct Identity {
    /// 0 until known.
    cluster_id: u64,
    member_id: u64,
    /// The highest seen.
    raft_term: u64,
    /// The highest seen.
    revision: i64,
}

impl Identity {
    pub(crate) fn new(first: Option<ServerHeader>) -> Self {
        let mut id = Identity::default();
        if let Some(h) = first {
            // A fresh start cannot disagree with nothing.
            let _ = id.observe(&h);
        }
        id
    }

    /// Records `h`; the reason when it cannot come from the history seen so far: another
    /// cluster, or a raft term or revision lower than one seen before.
    pub(crate) fn observe(&mut self, h: &ServerHeader) -> Result<(), String> {
        if self.cluster_id != 0 && h.cluster_id != 0 && h.cluster_id != self.cluster_id {
            return Err(format!(
                "cluster id changed from {:x} to {:x}",
                self.cluster_id, h.cluster_id
            ));
        }
        if h.raft_term != 0 && h.raft_term < self.raft_term {
            return Err(format!(
                "raft term went back from {} to {} (member {:x}, before {:x})",
                self.raft_term, h.raft_term, h.member_id, self.member_id
            ));
        }
        if h.revision != 0 && h.revision < self.revision {
            return Err(format!(
                "revision went back from {} to {} (member {:x}, before {:x})",
                self.revision, h.revision, h.member_id, self.member_id
            ));
        }
        if h.cluster_id != 0 {
            self.cluster_id = h.cluster_id;
        }
        if h.member_id != 0 {
            self.member_id = h.member_id;
        }
        self.raft_term = self.raft_term.max(h.raft_term);
        self.revision = self.revision.max(h.revision);
        Ok(())
    }
}

/// The last key a watch saw written in its range: at any later revision of the same history it
/// still has these revisions (or is gone, if the watch saw it deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Anchor {
    pub(crate) key: Vec<u8>,
    pub(crate) mod_revision: i64,
    pub(crate) create_revision: i64,
    pub(crate) version: i64,
    pub(crate) deleted: bool,
}

impl Anchor {
    pub(crate) fn of(kv: &KeyValue) -> Self {
        Anchor {
            key: kv.key().to_vec(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
            version: kv.version(),
            deleted: false,
        }
    }

    /// Whether `found` (the key read at a later revision, as its modification revision,
    /// creation revision and version) is what the same history holds there.
    fn matches(&self, found: Option<(i64, i64, i64)>) -> bool {
        match found {
            None => self.deleted,
            Some(revs) => {
                !self.deleted && revs == (self.mod_revision, self.create_revision, self.version)
            }
        }
    }
}

/// A watch's view of its range at the last revision it saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Position {
    /// The last revision reflected in the view.
    pub(crate) revision: i64,
    /// Keys in the range (valid records or not).
    pub(crate) raw_count: i64,
    pub(crate) anchor: Option<Anchor>,
}

/// The outcome of [`check`].
#[derive(Debug)]
pub(crate) enum Verdict {
    /// The server agrees with the view: resume.
    Same,
    /// The server's history is another one (or lost the revision): read everything again.
    Lost(String),
    /// The server did not answer: try again later.
    Unreachable(String),
}

/// Asks the server whether `range` at `at.revision` is what the watch saw.
pub(crate) async fn check(
    inner: &Inner,
    identity: &mut Identity,
    range: &str,
    at: &Position,
) -> Verdict {
    let timeout = inner.policy.attempt_timeout;
    let mut kv = inner.client.kv_client();
    let count = GetOptions::new()
        .with_range(prefix_end(range.as_bytes()))
        .with_count_only()
        .with_revision(at.revision);
    let resp = match tokio::time::timeout(timeout, kv.get(range, Some(count))).await {
        Err(_) => return Verdict::Unreachable(format!("no answer within {timeout:?}")),
        Ok(Err(e)) if error::is_compacted(&e) => {
            return Verdict::Lost(format!(
                "revision {} is compacted or not reached there ({e})",
                at.revision
            ))
        }
        Ok(Err(e)) => return Verdict::Unreachable(e.to_string()),
        Ok(Ok(r)) => r,
    };
    if let Some(h) = resp.header() {
        if let Err(why) = identity.observe(&ServerHeader::from(h)) {
            return Verdict::Lost(why);
        }
    }
    if resp.count() != at.raw_count {
        return Verdict::Lost(format!(
            "{} keys in the range at revision {}, the watch saw {}",
            resp.count(),
            at.revision,
            at.raw_count
        ));
    }
    let Some(anchor) = &at.anchor else {
        return Verdict::Same;
    };
    let one = GetOptions::new().with_revision(at.revision);
    let resp = match tokio::time::timeout(timeout, kv.get(anchor.key.clone(), Some(one))).await {
        Err(_) => return Verdict::Unreachable(format!("no answer within {timeout:?}")),
        Ok(Err(e)) if error::is_compacted(&e) => {
            return Verdict::Lost(format!("revision {} is compacted ({e})", at.revision))
        }
        Ok(Err(e)) => return Verdict::Unreachable(e.to_string()),
        Ok(Ok(r)) => r,
    };
    let found = resp
        .kvs()
        .first()
        .map(|kv| (kv.mod_revision(), kv.create_revision(), kv.version()));
    if anchor.matches(found) {
        Verdict::Same
    } else {
        Verdict::Lost(format!(
            "the key written at revision {} differs at revision {}",
            anchor.mod_revision, at.revision
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cluster_id: u64, raft_term: u64, revision: i64) -> ServerHeader {
        ServerHeader {
            cluster_id,
            member_id: 7,
            raft_term,
            revision,
        }
    }

    #[test]
    fn the_same_history_moves_forward() {
        let mut id = Identity::new(Some(header(1, 2, 10)));
        id.observe(&header(1, 2, 10)).unwrap();
        id.observe(&header(1, 3, 12)).unwrap();
        // A header without ids (a test server, an old proxy) says nothing.
        id.observe(&header(0, 0, 0)).unwrap();
    }

    #[test]
    fn another_cluster_or_going_back_is_another_history() {
        let base = Identity::new(Some(header(1, 3, 10)));
        for (h, word) in [
            (header(2, 3, 10), "cluster id"),
            (header(1, 2, 11), "raft term"),
            (header(1, 3, 9), "revision"),
        ] {
            let why = base.clone().observe(&h).unwrap_err();
            assert!(why.contains(word), "{why}");
        }
    }

    #[test]
    fn an_anchor_matches_only_the_same_write() {
        let a = Anchor {
            key: b"/p/s/a".to_vec(),
            mod_revision: 8,
            create_revision: 5,
            version: 2,
            deleted: false,
        };
        assert!(a.matches(Some((8, 5, 2))));
        assert!(!a.matches(None), "gone although never seen deleted");
        assert!(
            !a.matches(Some((8, 6, 1))),
            "another key written at that revision"
        );
        assert!(!a.matches(Some((9, 5, 3))), "written again unseen");
        let deleted = Anchor {
            deleted: true,
            ..a.clone()
        };
        assert!(deleted.matches(None));
        assert!(!deleted.matches(Some((8, 5, 2))));
    }
}
