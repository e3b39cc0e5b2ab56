//! The arguments of `waypost sync` and the service-name prefix map.

use std::net::SocketAddr;
use std::time::Duration;

use waypost::core::quote::quoted;
use waypost::core::validate::{check_duration, validate_key_part, MAX_NAME_LEN, TTL};

use crate::error::{CliError, CliResult};

const EXAMPLES: &str = "Examples:\n  \
    waypost sync zookeeper://127.0.0.1:2181/services etcd://127.0.0.1:2379\n  \
    waypost sync consul://127.0.0.1:8500 nacos://127.0.0.1:8848 --service orders\n  \
    waypost sync etcd://10.0.0.1:2379 nacos://10.0.0.2:8848 --prefix-map legacy.=\n  \
    waypost sync etcd://h:2379 zk://h:2181/services --metrics-addr 127.0.0.1:9464";

/// The arguments of `waypost sync`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = EXAMPLES,
    after_long_help = concat!(
        "On start the target is reconciled with the source: missing instances are added, \
         changed ones rewritten, and instances this syncer mirrored before that the source no \
         longer has are removed. Then every change the source's watch reports is applied, and \
         every later snapshot (the source reconnected or lost history) reconciles again.\n\n\
         Mirrored instances keep their ids and carry their origin in metadata \
         (waypost.sync.origin, waypost.sync.source, waypost.sync.hash): a syncer never mirrors \
         an instance whose origin is its own target, so two syncers in opposite directions do \
         not loop. Instances nobody mirrored are never touched. Mirrored instances live as long \
         as the syncer: they expire on the target within --ttl (ZooKeeper: its session \
         timeout) when it dies, and are deregistered on Ctrl-C or SIGTERM (exit 0).\n\n\
         Logs go to stderr, one line per event (JSON lines with -o json), with a status line \
         every --status-every.\n\n",
        "Examples:\n  \
         waypost sync zookeeper://127.0.0.1:2181/services etcd://127.0.0.1:2379\n  \
         waypost sync consul://127.0.0.1:8500 nacos://127.0.0.1:8848 --service orders\n  \
         waypost sync etcd://10.0.0.1:2379 nacos://10.0.0.2:8848 --prefix-map legacy.=\n  \
         waypost sync etcd://h:2379 zk://h:2181/services --metrics-addr 127.0.0.1:9464"
    )
)]
pub struct Args {
    /// The registry to mirror from (a registry URL; it may hold a password: never printed).
    #[arg(value_name = "SRC_URL")]
    pub source: String,

    /// The registry to mirror into (a registry URL; `--registry` is not used by sync).
    #[arg(value_name = "DST_URL")]
    pub target: String,

    /// The options (boxed: they are larger than the other subcommands' arguments).
    #[command(flatten)]
    pub options: Box<Options>,
}

/// The options of `waypost sync`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Mirror only this service of the source (repeat for more); default: every service.
    #[arg(long = "service", value_name = "NAME")]
    pub services: Vec<String>,

    /// Rename services on the way: a source service whose name starts with FROM is mirrored
    /// under TO followed by the rest of its name (`legacy.=` drops the prefix `legacy.`,
    /// `=shop.` adds `shop.` to every name). Repeatable; the longest matching FROM wins.
    /// Instance ids are not renamed.
    #[arg(long = "prefix-map", value_name = "FROM=TO", value_parser = PrefixRule::parse)]
    pub prefix_map: Vec<PrefixRule>,

    /// The TTL of mirrored instances on the target: how long they outlive a syncer that died
    /// (etcd lease, Consul check, Nacos heartbeat; ZooKeeper uses its session timeout).
    #[arg(long, default_value = "15s", value_parser = crate::parse_duration, value_name = "DURATION")]
    pub ttl: Duration,

    /// How often to print a status line (`0s`: never).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration, value_name = "DURATION")]
    pub status_every: Duration,

    /// Serve the sync metrics in the Prometheus text format at `http://ADDR/metrics`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Most writes in flight on the target at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024), value_name = "N")]
    pub concurrency: u16,

    /// The identity of the source written into `waypost.sync.origin` (default: derived from
    /// SRC_URL without credentials: scheme, sorted hosts and prefix or namespace). Set it when
    /// syncers reach the same registry under different addresses.
    #[arg(long, value_name = "ID")]
    pub source_id: Option<String>,

    /// The identity of the target, compared with `waypost.sync.origin` to refuse mirroring the
    /// target's own mirrors back (default: derived from DST_URL as for --source-id).
    #[arg(long, value_name = "ID")]
    pub target_id: Option<String>,
}

impl Options {
    /// Checks what clap cannot: service names, the TTL and the identities.
    ///
    /// # Errors
    /// A usage error naming the bad value.
    pub fn check(&self) -> CliResult<()> {
        for name in &self.services {
            validate_key_part("--service", name, MAX_NAME_LEN)
                .map_err(|e| CliError::usage(e.to_string()))?;
        }
        check_duration("--ttl", self.ttl, TTL).map_err(CliError::usage)?;
        if self.ttl < Duration::from_secs(1) {
            return Err(CliError::usage(
                "--ttl must be at least 1s (registries keep instances alive in whole seconds)",
            ));
        }
        for (flag, id) in [
            ("--source-id", &self.source_id),
            ("--target-id", &self.target_id),
        ] {
            if let Some(id) = id {
                if id.is_empty() || id.len() > super::origin::MAX_IDENTITY_LEN {
                    return Err(CliError::usage(format!(
                        "{flag} must be 1 to {} characters long",
                        super::origin::MAX_IDENTITY_LEN
                    )));
                }
                if id.chars().any(char::is_control) {
                    return Err(CliError::usage(format!(
                        "{flag} `{}` contains a control character",
                        quoted(id)
                    )));
                }
            }
        }
        Ok(())
    }
}

/// One `--prefix-map FROM=TO` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixRule {
    /// The prefix of source service names (not empty).
    pub from: String,
    /// What replaces it on the target (may be empty).
    pub to: String,
}

impl PrefixRule {
    /// Parses `FROM=TO`.
    ///
    /// # Errors
    /// A message saying what is wrong (for clap).
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((from, to)) = text.split_once('=') else {
            return Err(format!("`{}` is not FROM=TO", quoted(text)));
        };
        if from.is_empty() && to.is_empty() {
            return Err("FROM and TO are both empty".to_owned());
        }
        for (what, part) in [("FROM", from), ("TO", to)] {
            if let Some(c) = part
                .chars()
                .find(|c| !waypost::core::validate::is_safe_name_char(*c))
            {
                return Err(format!(
                    "{what} `{}` contains {:?}; service names allow ASCII letters, digits and \
                     - _ . : @",
                    quoted(part),
                    quoted(c.encode_utf8(&mut [0; 4]))
                ));
            }
            if part.len() > MAX_NAME_LEN {
                return Err(format!("{what} is longer than {MAX_NAME_LEN} bytes"));
            }
        }
        Ok(PrefixRule {
            from: from.to_owned(),
            to: to.to_owned(),
        })
    }
}

/// The `--prefix-map` rules, longest FROM first.
#[derive(Debug, Clone, Default)]
pub struct PrefixMap {
    rules: Vec<PrefixRule>,
}

impl PrefixMap {
    /// The map of `rules` (the longest FROM wins; among equal ones, the first given).
    #[must_use]
    pub fn new(mut rules: Vec<PrefixRule>) -> Self {
        // A stable sort keeps the order given among rules of the same length.
        rules.sort_by_key(|r| std::cmp::Reverse(r.from.len()));
        PrefixMap { rules }
    }

    /// The target name of the source service `name`.
    #[must_use]
    pub fn map(&self, name: &str) -> String {
        for rule in &self.rules {
            if let Some(rest) = name.strip_prefix(rule.from.as_str()) {
                return format!("{}{rest}", rule.to);
            }
        }
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_reject_garbage() {
        assert_eq!(
            PrefixRule::parse("legacy.=").unwrap(),
            PrefixRule {
                from: "legacy.".into(),
                to: String::new()
            }
        );
        assert_eq!(PrefixRule::parse("=shop.").unwrap().to, "shop.");
        assert!(PrefixRule::parse("nothing").is_err());
        assert!(PrefixRule::parse("=").is_err());
        let err = PrefixRule::parse("a/b=c").unwrap_err();
        assert!(err.contains("`a/b`"), "{err}");
        let err = PrefixRule::parse(&format!("{}=x", "\u{1b}".repeat(10_000))).unwrap_err();
        assert!(err.len() < 700 && !err.contains('\u{1b}'), "{err}");
    }

    #[test]
    fn longest_prefix_wins_and_others_pass_unchanged() {
        let map = PrefixMap::new(vec![
            PrefixRule::parse("legacy.=").unwrap(),
            PrefixRule::parse("legacy.billing.=billing.").unwrap(),
        ]);
        assert_eq!(map.map("legacy.orders"), "orders");
        assert_eq!(map.map("legacy.billing.api"), "billing.api");
        assert_eq!(map.map("users"), "users");
        let add = PrefixMap::new(vec![PrefixRule::parse("=shop.").unwrap()]);
        assert_eq!(add.map("users"), "shop.users");
    }
}
