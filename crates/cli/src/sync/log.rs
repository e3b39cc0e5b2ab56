//! The syncer's log: one line per notable thing on stderr, as text for people or as JSON lines
//! (`-o json`).
//!
//! Text: `2026-12-04T23:45:00.123456789Z INFO  reconciled reason=start desired=3 …`; JSON:
//! `{"ts":"…","level":"info","event":"reconciled","reason":"start","desired":3,…}`. Text from
//! the registries (ids, names, error messages) is bounded and escaped first, so a peer cannot
//! forge a line.

use std::io::Write;

use serde_json::{Map, Value};
use waypost::core::quote::{quoted, quoted_up_to};
use waypost::core::Timestamp;

/// How bad a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Normal operation.
    Info,
    /// Something was skipped or failed and is retried.
    Warn,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
        }
    }
}

/// Text that came from a registry, bounded and escaped (ids and names).
#[must_use]
pub fn peer(text: &str) -> Value {
    Value::String(quoted(text).to_string())
}

/// An error message, bounded (longer than ids) and escaped.
#[must_use]
pub fn message(text: &str) -> Value {
    Value::String(quoted_up_to(text, 300).to_string())
}

/// Where log lines go.
#[derive(Debug, Clone, Copy)]
pub struct Log {
    json: bool,
}

impl Log {
    /// A log writing JSON lines (`json`) or text.
    #[must_use]
    pub fn new(json: bool) -> Self {
        Log { json }
    }

    /// Writes one line.
    pub fn emit(&self, level: Level, event: &str, fields: &[(&str, Value)]) {
        let line = self.render(&Timestamp::now().to_string(), level, event, fields);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
        let _ = err.flush();
    }

    /// An info line.
    pub fn info(&self, event: &str, fields: &[(&str, Value)]) {
        self.emit(Level::Info, event, fields);
    }

    /// A warning line.
    pub fn warn(&self, event: &str, fields: &[(&str, Value)]) {
        self.emit(Level::Warn, event, fields);
    }

    fn render(&self, ts: &str, level: Level, event: &str, fields: &[(&str, Value)]) -> String {
        if self.json {
            let mut map = Map::with_capacity(fields.len() + 3);
            map.insert("ts".into(), Value::String(ts.to_owned()));
            map.insert("level".into(), Value::String(level.as_str().to_owned()));
            map.insert("event".into(), Value::String(event.to_owned()));
            for (k, v) in fields {
                map.insert((*k).to_owned(), v.clone());
            }
            return Value::Object(map).to_string();
        }
        let mut line = format!("{ts} {:<5} {event}", level.as_str().to_ascii_uppercase());
        for (k, v) in fields {
            line.push(' ');
            line.push_str(k);
            line.push('=');
            match v {
                // Bounded and escaped already; quoted when it holds a space.
                Value::String(s) if s.contains(' ') || s.is_empty() => {
                    line.push('"');
                    line.push_str(&s.replace('"', "\\\""));
                    line.push('"');
                }
                Value::String(s) => line.push_str(s),
                other => line.push_str(&other.to_string()),
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_and_json_lines() {
        let fields = [
            ("id", peer("a-1")),
            ("error", message("no route to host")),
            ("n", json!(3)),
        ];
        let text = Log::new(false).render("T", Level::Warn, "write-failed", &fields);
        assert_eq!(
            text,
            r#"T WARN  write-failed id=a-1 error="no route to host" n=3"#
        );
        let line = Log::new(true).render("T", Level::Info, "mirrored", &fields);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["event"], "mirrored");
        assert_eq!(v["id"], "a-1");
        assert_eq!(v["n"], 3);
    }

    #[test]
    fn peer_text_cannot_forge_lines() {
        let hostile = format!("x\nT INFO  forged{}", "y".repeat(100_000));
        let text = Log::new(false).render("T", Level::Info, "e", &[("id", peer(&hostile))]);
        assert!(!text.contains('\n') && text.len() < 300, "{text}");
    }
}
