//! What several subcommands share: how an instance is shown (table cells, the JSON shape), how
//! ages and TTLs read, how a command waits for Ctrl-C or SIGTERM, and how a registry is closed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use waypost::core::quote::quoted_up_to;
use waypost::{Health, ServiceInfo, ServiceRegistry};

use crate::output::Printer;
use crate::{CliError, CliResult, Exit};

/// The most characters of one registry-supplied value a table cell shows.
pub const MAX_CELL_CHARS: usize = 256;

/// A table cell for text that came from the registry: control characters escaped (no value can
/// move the cursor or forge a line), at most [`MAX_CELL_CHARS`] characters.
#[must_use]
pub fn cell(text: &str) -> String {
    quoted_up_to(text, MAX_CELL_CHARS).to_string()
}

/// A duration for people, in its largest whole unit: `850ms`, `5s`, `3m`, `2h`, `4d`.
#[must_use]
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.subsec_millis());
    }
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The AGE column: time since `created_at`, `-` when the registry did not record it.
#[must_use]
pub fn age(info: &ServiceInfo) -> String {
    if info.created_at.is_zero() {
        "-".to_owned()
    } else {
        human_duration(info.created_at.elapsed())
    }
}

/// The TTL column: `-` for none of its own (the registry's default applies).
#[must_use]
pub fn ttl(ttl: Duration) -> String {
    if ttl.is_zero() {
        "-".to_owned()
    } else {
        exact_duration(ttl)
    }
}

/// A duration exactly, in the units `--ttl` accepts: `30s`, `1m30s`, `2h`, `1500ms`.
#[must_use]
pub fn exact_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return match d.as_millis() {
            ms if Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)) == d => {
                format!("{ms}ms")
            }
            _ => format!("{}ns", d.as_nanos()),
        };
    }
    let secs = d.as_secs();
    if secs == 0 {
        return "0s".to_owned();
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if s > 0 {
        let _ = write!(out, "{s}s");
    }
    out
}

/// A health cell, green or red on a colour terminal.
#[must_use]
pub fn health(printer: &Printer, health: Health) -> String {
    let text = health.as_str();
    if !printer.color {
        return text.to_owned();
    }
    match health {
        Health::Healthy => format!("\u{1b}[32m{text}\u{1b}[0m"),
        Health::Unhealthy => format!("\u{1b}[31m{text}\u{1b}[0m"),
        Health::Unknown => format!("\u{1b}[33m{text}\u{1b}[0m"),
    }
}

/// Colours `text` green (`ok`) or red on a colour terminal.
#[must_use]
pub fn good_or_bad(printer: &Printer, ok: bool, text: &str) -> String {
    match (printer.color, ok) {
        (false, _) => text.to_owned(),
        (true, true) => format!("\u{1b}[32m{text}\u{1b}[0m"),
        (true, false) => format!("\u{1b}[31m{text}\u{1b}[0m"),
    }
}

/// The JSON of an instance: waypost's Go-compatible `ServiceInfo` JSON, byte for byte as the
/// Laravel-Go module writes it (its keys in its order, `ttl` in nanoseconds, RFC 3339 times;
/// `weight` only when not 100).
#[must_use]
pub fn instance_json(info: &ServiceInfo) -> String {
    info.to_json().unwrap_or_else(|e| {
        // A ServiceInfo always serialises; should that ever change, say so instead of failing.
        serde_json::json!({ "id": info.id, "error": e.to_string() }).to_string()
    })
}

/// A JSON object on one line from `fields` (each value already JSON text), in this order.
#[must_use]
pub fn json_object(fields: &[(&str, String)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::from(*key).to_string());
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

/// A JSON string's text.
#[must_use]
pub fn json_str(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// `address:port`, IPv6 in brackets.
#[must_use]
pub fn endpoint(info: &ServiceInfo) -> String {
    let mut out = String::new();
    if info.write_endpoint(&mut out).is_err() {
        let _ = write!(out, "{}:{}", info.address, info.port);
    }
    cell(&out)
}

/// Runs one registry call within `limit`.
///
/// # Errors
/// The call's error (mapped to an exit status), or Unavailable when it takes longer than `limit`.
pub async fn bounded<T>(
    what: &str,
    limit: Duration,
    call: impl std::future::Future<Output = waypost::Result<T>>,
) -> CliResult<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CliError::from(e).context(what)),
        Err(_) => Err(CliError::new(
            Exit::Unavailable,
            format!("{what}: no answer within {}", human_duration(limit)),
        )),
    }
}

/// Closes a registry within `limit`; a failure here changes nothing for the user (the command's
/// work is done), so it is not reported.
pub async fn close(registry: &Arc<dyn ServiceRegistry>, limit: Duration) {
    let _ = tokio::time::timeout(limit, registry.close()).await;
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM with the signal's name.
#[derive(Debug)]
pub struct Shutdown {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Installs the handlers now, so that a signal arriving from here on is caught rather than
    /// ending the process.
    ///
    /// # Errors
    /// When the handlers cannot be installed.
    pub fn install() -> CliResult<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let fail = |e: std::io::Error| {
                CliError::new(Exit::Failure, format!("installing signal handlers: {e}"))
            };
            Ok(Shutdown {
                term: signal(SignalKind::terminate()).map_err(fail)?,
                int: signal(SignalKind::interrupt()).map_err(fail)?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Shutdown {})
        }
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_their_largest_whole_unit() {
        assert_eq!(human_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(59)), "59s");
        assert_eq!(human_duration(Duration::from_secs(3 * 60 + 59)), "3m");
        assert_eq!(human_duration(Duration::from_secs(2 * 3600 + 1)), "2h");
        assert_eq!(human_duration(Duration::from_secs(4 * 86_400 + 7)), "4d");
        assert_eq!(human_duration(Duration::MAX), "213503982334601d");
    }

    #[test]
    fn exact_durations_round_trip_through_the_duration_parser() {
        for (d, text) in [
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_nanos(1_000_000_001), "1000000001ns"),
        ] {
            assert_eq!(exact_duration(d), text);
            assert_eq!(crate::parse_duration(text), Ok(d));
        }
    }

    #[test]
    fn instance_json_keeps_the_go_key_order_and_objects_nest_it_as_is() {
        let info = ServiceInfo::new("a-1", "a", "10.0.0.1", 80).with_weight(3);
        let text = instance_json(&info);
        assert!(
            text.starts_with(r#"{"id":"a-1","name":"a","version":"","address":"10.0.0.1""#),
            "{text}"
        );
        assert!(text.ends_with(r#""weight":3}"#), "{text}");
        let obj = json_object(&[("type", json_str("created")), ("instance", text.clone())]);
        assert_eq!(obj, format!(r#"{{"type":"created","instance":{text}}}"#));
        let v: serde_json::Value = serde_json::from_str(&obj).unwrap();
        assert_eq!(v["instance"]["weight"], 3);
        assert_eq!(json_str("q\"\n"), r#""q\"\n""#);
    }

    #[test]
    fn cells_escape_control_characters_and_stay_bounded() {
        assert_eq!(cell("a\u{1b}[31mb\n"), r"a\u{1b}[31mb\n");
        let long = "x".repeat(100_000);
        assert!(cell(&long).chars().count() < MAX_CELL_CHARS + 40);
    }

    #[test]
    fn health_is_coloured_only_when_asked() {
        let plain = Printer {
            format: crate::output::OutputFormat::Table,
            color: false,
        };
        let color = Printer {
            color: true,
            ..plain
        };
        assert_eq!(health(&plain, Health::Healthy), "healthy");
        assert_eq!(
            health(&color, Health::Healthy),
            "\u{1b}[32mhealthy\u{1b}[0m"
        );
        assert_eq!(
            health(&color, Health::Unhealthy),
            "\u{1b}[31munhealthy\u{1b}[0m"
        );
    }
}
