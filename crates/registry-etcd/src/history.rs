//! Is the server's history still the one a watch followed?
//!
//! A watch resumes from the revision after the last one it saw, which is right only if the
//! server still has the same history. An etcd that was wiped (or restored from an older backup)
//! and restarted on the same address starts its revisions again; once as many writes have landed
//! as before, the old revision exists again but means something else, and resuming there would
//! keep instances that are long gone. So a watch checks, on every response, that the server's
//! identity did not change (cluster id; raft term and revision never go backwards), and before
//! it resumes after a break, that the server agrees with its view at the last revision it saw:
//! the same keys, each last written at the same revision (compared as a [`Digest`] of the keys
//! of the range read at that revision, keys only); where the watch could not keep the digest
//! (an event without its previous value), the number of keys and the last key it saw written.
//! If not, the range is read again and every stream gets `Snapshot { reason: Reconnected }`.

use std::hash::{DefaultHasher, Hash, Hasher};

use etcd_client::{GetOptions, KeyValue, ResponseHeader};

use crate::error;
use crate::keys::{prefix_end, range_start};
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

/// A fingerprint of the keys of a range and the revision each was last written at: the XOR of
/// a hash of each (key, modification revision), so it follows puts and deletes one at a time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Digest(u64);

impl Digest {
    /// Adds the pair if absent, removes it if present.
    pub(crate) fn toggle(&mut self, key: &[u8], mod_revision: i64) {
        // `DefaultHasher::new` has fixed keys: the same pair hashes the same in this process.
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        mod_revision.hash(&mut h);
        self.0 ^= h.finish();
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
    /// `None` when an event came without its previous value.
    pub(crate) digest: Option<Digest>,
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
    match at.digest {
        Some(digest) => check_digest(inner, identity, range, at, digest).await,
        None => check_count_and_anchor(inner, identity, range, at).await,
    }
}

/// How a read for [`check`] failed.
fn failed(at: &Position, e: etcd_client::Error) -> Verdict {
    if error::is_compacted(&e) {
        Verdict::Lost(format!(
            "revision {} is compacted or not reached there ({e})",
            at.revision
        ))
    } else {
        Verdict::Unreachable(e.to_string())
    }
}

/// Reads the keys of `range` at `at.revision` (keys only, in pages) and compares their digest.
async fn check_digest(
    inner: &Inner,
    identity: &mut Identity,
    range: &str,
    at: &Position,
    want: Digest,
) -> Verdict {
    let timeout = inner.policy.attempt_timeout;
    let end = prefix_end(range.as_bytes());
    let mut kv = inner.client.kv_client();
    let mut from = range_start(range);
    let (mut got, mut count) = (Digest::default(), 0i64);
    loop {
        let opts = GetOptions::new()
            .with_range(end.clone())
            .with_keys_only()
            .with_revision(at.revision)
            .with_limit(PAGE);
        let resp = match tokio::time::timeout(timeout, kv.get(from.clone(), Some(opts))).await {
            Err(_) => return Verdict::Unreachable(format!("no answer within {timeout:?}")),
            Ok(Err(e)) => return failed(at, e),
            Ok(Ok(r)) => r,
        };
        if let Some(h) = resp.header() {
            if let Err(why) = identity.observe(&ServerHeader::from(h)) {
                return Verdict::Lost(why);
            }
        }
        for kv in resp.kvs() {
            got.toggle(kv.key(), kv.mod_revision());
            count += 1;
        }
        match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    if count != at.raw_count {
        Verdict::Lost(format!(
            "{count} keys in the range at revision {}, the watch saw {}",
            at.revision, at.raw_count
        ))
    } else if got != want {
        Verdict::Lost(format!(
            "the keys in the range at revision {} were written at other revisions than the \
             watch saw",
            at.revision
        ))
    } else {
        Verdict::Same
    }
}

/// Without a digest: the number of keys at `at.revision`, and the last key the watch saw
/// written.
async fn check_count_and_anchor(
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
    let resp = match tokio::time::timeout(timeout, kv.get(range_start(range), Some(count))).await {
        Err(_) => return Verdict::Unreachable(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => return failed(at, e),
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
        Ok(Err(e)) => return failed(at, e),
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

/// Keys per page of a digest read.
const PAGE: i64 = 1_000;

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
    fn a_digest_follows_puts_and_deletes_in_any_order() {
        let mut listed = Digest::default();
        listed.toggle(b"/p/s/a", 3);
        listed.toggle(b"/p/s/b", 5);
        // b rewritten at 7, a deleted, c created at 8.
        let mut followed = listed;
        followed.toggle(b"/p/s/b", 5);
        followed.toggle(b"/p/s/b", 7);
        followed.toggle(b"/p/s/a", 3);
        followed.toggle(b"/p/s/c", 8);
        let mut read = Digest::default();
        read.toggle(b"/p/s/c", 8);
        read.toggle(b"/p/s/b", 7);
        assert_eq!(followed, read);
        // The same keys written at other revisions (another history) differ.
        let mut other = Digest::default();
        other.toggle(b"/p/s/c", 2);
        other.toggle(b"/p/s/b", 7);
        assert_ne!(followed, other);
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
