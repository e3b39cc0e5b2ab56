//! Skipping foreign data: what no configured record format decodes is logged once per path
//! (the formats themselves are [`waypost_core_types::record`]).

use std::collections::HashSet;

use parking_lot::Mutex;
use waypost_core_types::record::RecordFormat;

use crate::error::BACKEND;

/// The record formats a ZooKeeper registry reads and writes (`auto` reads the other two).
pub(crate) const FORMATS: &[RecordFormat] = &[
    RecordFormat::LaravelGo,
    RecordFormat::Curator,
    RecordFormat::Auto,
];

/// Most distinct foreign paths remembered as already reported.
const MAX_REMEMBERED: usize = 1024;

/// Reports skipped foreign data with one warning per path (later ones at debug level).
#[derive(Debug, Default)]
pub(crate) struct ForeignLog {
    reported: Mutex<HashSet<String>>,
}

impl ForeignLog {
    /// Logs that `path` was skipped; `true` when this was the first report for it (a warning).
    pub(crate) fn skip(&self, path: &str, problem: &str) -> bool {
        let first = {
            let mut reported = self.reported.lock();
            if reported.len() >= MAX_REMEMBERED {
                reported.clear();
            }
            reported.insert(path.to_owned())
        };
        if first {
            tracing::warn!(
                backend = BACKEND,
                path,
                "skipping foreign or corrupt data under the registry prefix: {problem}"
            );
        } else {
            tracing::debug!(backend = BACKEND, path, "skipping foreign data: {problem}");
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_path() {
        let log = ForeignLog::default();
        assert!(log.skip("/p/a/1", "junk"));
        assert!(!log.skip("/p/a/1", "junk"));
        assert!(log.skip("/p/a/2", "junk"));
        for i in 0..MAX_REMEMBERED + 5 {
            log.skip(&format!("/p/many/{i}"), "junk");
        }
        assert!(
            log.reported.lock().len() <= MAX_REMEMBERED,
            "bounded memory"
        );
    }
}
