//! Hostile configuration: at least 100,000 generated and adversarial registry URLs and JSON
//! configs, each carrying a marker password and a marker token, go through every backend's URL
//! parser and serde config, the facade's `RegistryConfig` (URL and serde), `RegistryBuilder` and
//! `new_service_registry`. Nothing may panic, and the markers may appear in no error text, no
//! `Debug` output, no saved config and no log line (a TRACE subscriber captures every line).
//! Error texts stay short and carry the `invalid configuration:` prefix at most once.
//!
//! The generator is a seeded xorshift, so a failure names an input that can be replayed.
//! Configs that parse are connected (a sample of them, remote ones to a closed loopback port
//! with a short connect timeout), so that the run stays within seconds.

#![cfg(feature = "full")]

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde_json::{json, Map, Value};
use waypost::{
    new_service_registry, ConsulConfig, EtcdConfig, MemoryConfig, NacosConfig, RegistryBuilder,
    RegistryConfig, RegistryType, ZookeeperConfig,
};

const PASSWORD: &str = "Pw7Marker";
const TOKEN: &str = "Tk9Marker";
/// How many inputs of each kind (URLs, JSON configs) are generated.
const CASES: usize = 50_000;
/// Longest error text accepted.
const MAX_ERROR_LEN: usize = 1500;

/// A small, seeded xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

/// Characters that break a URL or a log line, placed around the markers.
const SPECIALS: &[&str] = &[
    "",
    "",
    "",
    "/",
    "?",
    "#",
    "@",
    "%",
    "%2F",
    "%40",
    "%zz",
    "%ff",
    ":",
    "&",
    "=",
    ",",
    "[",
    "]",
    "ü",
    "🔑",
    "\u{0}",
    "\t",
    "\n",
    "\r\n",
    "\u{1b}[31m",
    " ",
    "\u{202e}",
    "..",
    "\\",
    "'",
    "\"",
];

fn secret(rng: &mut Rng, marker: &str) -> String {
    let (pre, mid, post) = (rng.pick(SPECIALS), rng.pick(SPECIALS), rng.pick(SPECIALS));
    let (a, b) = marker.split_at(rng.below(marker.len() + 1));
    // The marker itself stays whole in most cases; split by a special in the others.
    if rng.chance(4) {
        format!("{pre}{a}{mid}{b}{post}")
    } else {
        format!("{pre}{marker}{post}")
    }
}

const SCHEMES: &[&str] = &[
    "memory",
    "mem",
    "etcd",
    "consul",
    "nacos",
    "zookeeper",
    "zk",
    "ETCD",
    "Zk",
    "etdc",
    "consl",
    "nacso",
    "et cd",
    "e\u{0}tcd",
    "ｅｔｃｄ",
    "consul+https",
    "1etcd",
    "",
    "http",
];

const SEPARATORS: &[&str] = &[
    "://", "://", "://", "://", ":/", "//", ":", "", ":///", ":\\\\",
];

const HOSTS: &[&str] = &[
    "h",
    "h:2379",
    "127.0.0.1:1",
    "[::1]:2379",
    "[::1]",
    "[]",
    "[zz]",
    "h\u{0}",
    "h\t1",
    "%68",
    "!ocalhost",
    "h:+80",
    "h:080",
    "h:",
    ":1",
    "h:65536",
    "h:0",
    "h1:1,h2:2",
    ",,",
    "höst",
    "etcd-0.etcd.svc",
    "compose_etcd_1:2379",
    "256.1.1.1",
    "h:1:2",
    "[::1",
    "",
];

const PATHS: &[&str] = &[
    "",
    "",
    "/",
    "/svc",
    "/laravel-go/services",
    "/a/../b",
    "/a//b",
    "/%00",
    "/x@y",
    "/%2e%2e",
    "/\u{1b}",
];

const DURATIONS: &[&str] = &[
    "0",
    "0s",
    "1ns",
    "9ms",
    "10ms",
    "100ms",
    "1s",
    "1.5s",
    "24h",
    "25h",
    "18446744073709551615ns",
    "18446744073709551616ns",
    "99999999999999999999h",
    "1e9h",
    "-1s",
    "+1s",
    "1m30s",
    "soon",
    "",
    "1.",
    ".5s",
    "1..2s",
    "5124096h",
];

const PORTS: &[&str] = &[
    "1", "80", "65535", "0", "65536", "+80", "080", "", "-1", "8O",
];

const PARAMS: &[&str] = &[
    "ttl",
    "connect_timeout",
    "request_timeout",
    "max_backoff",
    "watch_buffer",
    "cleanup_interval",
    "default_ttl",
    "session_timeout",
    "probe_interval",
    "service_poll_interval",
    "deregister_critical_after",
    "watch_wait",
    "watch_min_interval",
    "retry_initial_backoff",
    "retry_max_backoff",
    "grpc_port",
    "namespace",
    "group",
    "cluster",
    "chroot",
    "datacenter",
    "dc",
    "scheme",
    "tls",
    "ca_file",
    "foreign_services",
    "max_response_bytes",
    "colour",
    "",
    "ttl\u{0}",
];

/// One registry URL.
fn url(rng: &mut Rng) -> String {
    let mut out = String::new();
    out.push_str(rng.pick(SCHEMES));
    out.push_str(rng.pick(SEPARATORS));
    match rng.below(6) {
        0 => {}
        1 | 2 => {
            out.push_str("admin:");
            out.push_str(&secret(rng, PASSWORD));
            out.push('@');
        }
        3 => {
            out.push(':');
            out.push_str(&secret(rng, TOKEN));
            out.push('@');
        }
        4 => {
            // A password with an `@` of its own, or two `@`.
            out.push_str("admin:");
            out.push_str(&secret(rng, PASSWORD));
            out.push_str("@x@");
        }
        _ => {
            out.push_str("%61dmin:");
            out.push_str(&secret(rng, PASSWORD));
            out.push_str(rng.pick(&["@", "", "/", "?"]));
        }
    }
    for i in 0..=rng.below(3) {
        if i > 0 {
            out.push(',');
        }
        out.push_str(rng.pick(HOSTS));
        if rng.chance(4) {
            out.push(':');
            out.push_str(rng.pick(PORTS));
        }
    }
    out.push_str(rng.pick(PATHS));
    let params = rng.below(5);
    for i in 0..params {
        out.push(if i == 0 { '?' } else { '&' });
        if rng.chance(6) {
            out.push_str("token=");
            out.push_str(&secret(rng, TOKEN));
            continue;
        }
        let key = rng.pick(PARAMS);
        out.push_str(key);
        if rng.chance(12) {
            continue; // no value
        }
        out.push('=');
        let value = match key {
            "watch_buffer" | "max_response_bytes" => {
                rng.pick(&["1", "0", "64", "99999999999999999999", "-1", "x"])
            }
            "grpc_port" => rng.pick(PORTS),
            "tls" => rng.pick(&["true", "false", "yes"]),
            "namespace" | "group" | "cluster" | "datacenter" | "dc" | "chroot" | "scheme"
            | "ca_file" | "foreign_services" => rng.pick(&[
                "public", "a b", "/app", "https", "skip", "@@", "dc1", "", "/a/../b",
            ]),
            _ => rng.pick(DURATIONS),
        };
        out.push_str(value);
    }
    if rng.chance(20) {
        out.push('#');
        out.push_str(&secret(rng, PASSWORD));
    }
    if rng.chance(2_500) {
        // Huge inputs: a long password, host list, parameter or duration.
        let blob = "9".repeat(100_000);
        match rng.below(4) {
            0 => out = format!("etcd://admin:{PASSWORD}{blob}@h:2379"),
            1 => out = format!("zk://{}", "h,".repeat(50_000)),
            2 => out = format!("nacos://admin:{PASSWORD}@h?connect_timeout={blob}s"),
            _ => out = format!("consul://:{TOKEN}@h?{blob}=1"),
        }
    }
    if rng.chance(50) {
        // Cut anywhere (at a character boundary).
        let mut cut = rng.below(out.len() + 1);
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn duration_value(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => json!(u64::MAX),
        1 => json!(-1),
        2 => json!(1e30),
        3 => json!(0),
        4 => json!(1),
        5 => json!(30_000_000_000u64),
        _ => json!(rng.pick(DURATIONS)),
    }
}

/// One JSON config: the tagged shape or the Laravel-Go nested one.
fn config_json(rng: &mut Rng) -> String {
    let kind = rng.pick(&[
        "memory",
        "etcd",
        "consul",
        "nacos",
        "zookeeper",
        "zk",
        "mem",
        "redis",
        "",
        "ETCD",
    ]);
    let mut body = Map::new();
    let keys: &[&str] = match kind {
        "memory" | "mem" => &["cleanup_interval", "default_ttl", "watch_buffer"],
        "etcd" | "ETCD" => &[
            "endpoints",
            "username",
            "password",
            "prefix",
            "ttl",
            "connect_timeout",
            "request_timeout",
            "max_backoff",
            "watch_buffer",
            "tls",
        ],
        "consul" => &[
            "address",
            "token",
            "datacenter",
            "prefix",
            "ttl",
            "deregister_critical_after",
            "connect_timeout",
            "request_timeout",
            "watch_wait",
            "watch_min_interval",
            "retry_initial_backoff",
            "retry_max_backoff",
            "max_response_bytes",
            "watch_buffer",
            "foreign_services",
        ],
        "nacos" => &[
            "server_addr",
            "namespace",
            "group",
            "cluster",
            "username",
            "password",
            "ttl",
            "connect_timeout",
            "probe_interval",
            "service_poll_interval",
            "watch_buffer",
            "grpc_port",
            "app_name",
        ],
        _ => &[
            "servers",
            "prefix",
            "session_timeout",
            "ttl",
            "username",
            "password",
            "chroot",
            "connect_timeout",
            "max_backoff",
            "watch_buffer",
        ],
    };
    for _ in 0..rng.below(6) {
        let key = rng.pick(keys);
        let value = match key {
            "password" => json!(secret(rng, PASSWORD)),
            "token" => json!(secret(rng, TOKEN)),
            "username" => json!(rng.pick(&["admin", "", "a:b", "u\u{0}"])),
            "endpoints" | "servers" => {
                let hosts: Vec<&str> = (0..rng.below(3)).map(|_| rng.pick(HOSTS)).collect();
                if rng.chance(5) {
                    json!(format!("http://admin:{}@h:2379", secret(rng, PASSWORD)))
                } else {
                    json!(hosts)
                }
            }
            "address" | "server_addr" => {
                if rng.chance(5) {
                    json!(format!("http://admin:{}@h:1", secret(rng, TOKEN)))
                } else {
                    json!(rng.pick(HOSTS))
                }
            }
            "prefix" | "chroot" => json!(rng.pick(PATHS)),
            "watch_buffer" | "max_response_bytes" | "grpc_port" => {
                json!([0i64, 1, 64, 65535, 65536, -1][rng.below(6)])
            }
            "tls" => json!({"ca_file": "/ca.pem", "cert_file": "c"}),
            "namespace" | "group" | "cluster" | "datacenter" | "app_name" | "foreign_services" => {
                json!(rng.pick(&["public", "a b", "@@", "", "dc1", "skip"]))
            }
            _ => duration_value(rng),
        };
        body.insert(key.to_owned(), value);
    }
    if rng.chance(10) {
        // A misspelt secret key: an unknown field whose value must not be echoed.
        body.insert("passwd".into(), json!(secret(rng, PASSWORD)));
    }
    let mut top = Map::new();
    if !kind.is_empty() {
        top.insert("type".into(), json!(kind));
    }
    if rng.chance(2) {
        top.insert(kind.to_ascii_lowercase(), Value::Object(body));
        if rng.chance(5) {
            top.insert("etcd".into(), json!({"password": PASSWORD}));
        }
    } else {
        top.extend(body);
    }
    let mut text = Value::Object(top).to_string();
    if rng.chance(2_500) {
        text = format!(
            r#"{{"type":"zookeeper","password":"{PASSWORD}","session_timeout":"{}s"}}"#,
            "9".repeat(100_000)
        );
    }
    if rng.chance(30) {
        let mut cut = rng.below(text.len() + 1);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Everything the run checks about one text (an error, a `Debug`, a saved config).
#[derive(Default)]
struct Findings {
    texts: usize,
    failures: Vec<String>,
}

impl Findings {
    fn check(&mut self, input: &str, what: &str, text: &str, is_error: bool) {
        self.texts += 1;
        let mut problem = None;
        if text.contains(PASSWORD) || text.contains(TOKEN) {
            problem = Some("shows a marker");
        } else if is_error && text.len() > MAX_ERROR_LEN {
            problem = Some("is too long");
        } else if is_error && text.matches("invalid configuration:").count() > 1 {
            problem = Some("repeats its prefix");
        } else if is_error && text.chars().any(char::is_control) {
            problem = Some("has a raw control character");
        }
        if let Some(problem) = problem {
            if self.failures.len() < 20 {
                let cut: String = text.chars().take(300).collect();
                let input: String = input.chars().take(200).collect();
                self.failures
                    .push(format!("{what} {problem}: {cut:?}\n    input: {input:?}"));
            }
        }
    }

    fn result<T: std::fmt::Debug, E: std::fmt::Display + std::fmt::Debug>(
        &mut self,
        input: &str,
        what: &str,
        result: &Result<T, E>,
    ) {
        match result {
            Ok(v) => self.check(input, &format!("{what} Debug"), &format!("{v:?}"), false),
            Err(e) => {
                self.check(input, &format!("{what} error"), &e.to_string(), true);
                self.check(
                    input,
                    &format!("{what} error Debug"),
                    &format!("{e:?}"),
                    false,
                );
            }
        }
    }
}

/// A log writer shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Checks what was logged since the last call, then forgets it.
    fn drain(&self, findings: &mut Findings, input: &str) -> usize {
        let bytes = std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines() {
            findings.check(input, "log line", line, false);
        }
        text.lines().count()
    }
}

/// One backend's own URL parser (`from_str`), by number.
fn backend_url(findings: &mut Findings, input: &str, backend: usize) {
    match backend {
        0 => findings.result(
            input,
            "MemoryConfig::from_str",
            &MemoryConfig::from_str(input),
        ),
        1 => findings.result(input, "EtcdConfig::from_str", &EtcdConfig::from_str(input)),
        2 => findings.result(
            input,
            "ConsulConfig::from_str",
            &ConsulConfig::from_str(input),
        ),
        3 => findings.result(
            input,
            "NacosConfig::from_str",
            &NacosConfig::from_str(input),
        ),
        _ => findings.result(
            input,
            "ZookeeperConfig::from_str",
            &ZookeeperConfig::from_str(input),
        ),
    }
}

/// One backend's own serde config, by number, then its `validate`.
fn backend_serde(findings: &mut Findings, input: &str, body: &str, backend: usize) {
    fn one<C>(
        findings: &mut Findings,
        input: &str,
        body: &str,
        what: &str,
        validate: fn(&C) -> waypost::Result<()>,
    ) where
        C: serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let r = serde_json::from_str::<C>(body);
        findings.result(input, what, &r);
        if let Ok(c) = &r {
            findings.result(input, what, &validate(c));
        }
    }
    match backend {
        0 => one(
            findings,
            input,
            body,
            "MemoryConfig serde",
            MemoryConfig::validate,
        ),
        1 => one(
            findings,
            input,
            body,
            "EtcdConfig serde",
            EtcdConfig::validate,
        ),
        2 => one(
            findings,
            input,
            body,
            "ConsulConfig serde",
            ConsulConfig::validate,
        ),
        3 => one(
            findings,
            input,
            body,
            "NacosConfig serde",
            NacosConfig::validate,
        ),
        _ => one(
            findings,
            input,
            body,
            "ZookeeperConfig serde",
            ZookeeperConfig::validate,
        ),
    }
}

/// The backend a scheme or type names (the rotating one for anything else).
fn backend_of(name: &str, rotating: usize) -> usize {
    match name.to_ascii_lowercase().as_str() {
        "memory" | "mem" => 0,
        "etcd" => 1,
        "consul" => 2,
        "nacos" => 3,
        "zookeeper" | "zk" => 4,
        _ => rotating,
    }
}

/// Every parser and constructor that does not connect: the facade's, the backend the input
/// names, and one other backend in turn (each input is also tried on a backend it was not
/// written for).
fn parse_all(
    findings: &mut Findings,
    input: &str,
    is_url: bool,
    case: usize,
) -> Option<RegistryConfig> {
    let rotating = case / 2 % 5;
    let parsed = if is_url {
        let facade = RegistryConfig::from_url(input);
        findings.result(input, "RegistryConfig::from_url", &facade);
        let scheme = input.split("://").next().unwrap_or("");
        let own = backend_of(scheme, rotating);
        backend_url(findings, input, own);
        if own != rotating {
            backend_url(findings, input, rotating);
        }
        let builder = RegistryBuilder::from_url(input);
        findings.check(
            input,
            "RegistryBuilder Debug",
            &format!("{builder:?}"),
            false,
        );
        findings.result(input, "RegistryBuilder::config", &builder.config());
        facade.ok()
    } else {
        let facade = serde_json::from_str::<RegistryConfig>(input);
        findings.result(input, "RegistryConfig serde", &facade);
        let top = serde_json::from_str::<Value>(input)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        let kind = top.get("type").and_then(Value::as_str).unwrap_or("memory");
        let own = backend_of(kind, rotating);
        // The backend's own settings: its section (Laravel-Go shape), or the map beside `type`.
        let body = match top.get(&kind.to_ascii_lowercase()) {
            Some(Value::Object(section)) => Value::Object(section.clone()).to_string(),
            _ => {
                let mut m = top.clone();
                m.remove("type");
                Value::Object(m).to_string()
            }
        };
        backend_serde(findings, input, &body, own);
        if own != rotating {
            backend_serde(findings, input, &body, rotating);
        }
        facade.ok()
    };
    if let Some(config) = &parsed {
        let saved = serde_json::to_string(config).unwrap_or_default();
        findings.check(input, "saved config", &saved, false);
        findings.result(input, "RegistryConfig::validate", &config.validate());
        let builder = RegistryBuilder::from_config(config.clone());
        findings.check(
            input,
            "RegistryBuilder Debug",
            &format!("{builder:?}"),
            false,
        );
    }
    parsed
}

/// The builder with secrets and extreme values given through its setters.
fn builder_cases(findings: &mut Findings, rng: &mut Rng) {
    let kinds = [
        RegistryType::Memory,
        RegistryType::Etcd,
        RegistryType::Consul,
        RegistryType::Nacos,
        RegistryType::Zookeeper,
    ];
    let durations = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_millis(50),
        Duration::from_secs(10),
        Duration::from_secs(365 * 86_400 + 1),
        Duration::MAX,
    ];
    let kind = kinds[rng.below(kinds.len())];
    let mut d = || durations[rng.below(durations.len())];
    let (d1, d2, d3) = (d(), d(), d());
    let mut b = RegistryBuilder::new().with_type(kind);
    let pw = secret(rng, PASSWORD);
    let tk = secret(rng, TOKEN);
    if rng.chance(2) {
        b = b.with_credentials("admin", pw);
    }
    if rng.chance(2) {
        b = b.with_token(tk);
    }
    b = match rng.below(6) {
        0 => b.with_ttl(d1),
        1 => b.with_connect_timeout(d1),
        2 => b.with_session_timeout(d1),
        3 => b.with_default_ttl(d1),
        4 => b.with_cleanup_interval(d1),
        _ => b
            .with_ttl(d1)
            .with_connect_timeout(d2)
            .with_session_timeout(d3),
    };
    let input = format!("builder {kind} {d1:?} {d2:?} {d3:?}");
    findings.check(&input, "RegistryBuilder Debug", &format!("{b:?}"), false);
    findings.result(&input, "RegistryBuilder::config", &b.config());
}

/// Points a remote config at a closed loopback port with short timeouts, carrying the marker
/// credentials, so that every log line of the connection attempt is checked for them.
fn at_closed_port(config: &mut RegistryConfig, port: u16) {
    let addr = format!("127.0.0.1:{port}");
    let short = Duration::from_millis(300);
    match config {
        RegistryConfig::Memory(_) => {}
        RegistryConfig::Etcd(c) => {
            c.username = Some("admin".into());
            c.password = Some(PASSWORD.into());
            c.endpoints = vec![addr];
            c.tls = None;
            c.connect_timeout = short;
            c.request_timeout = short;
        }
        RegistryConfig::Consul(c) => {
            c.token = Some(TOKEN.into());
            c.address = addr;
            c.ca_file = None;
            c.ca_pem = None;
            c.connect_timeout = short;
            c.request_timeout = short;
        }
        RegistryConfig::Nacos(c) => {
            c.username = Some("admin".into());
            c.password = Some(PASSWORD.into());
            c.server_addr = addr;
            c.grpc_port = None;
            c.connect_timeout = short;
            c.cache_dir = Some(std::env::temp_dir().join("waypost-hostile-config-nacos"));
        }
        RegistryConfig::Zookeeper(c) => {
            c.username = Some("admin".into());
            c.password = Some(PASSWORD.into());
            c.servers = vec![addr];
            c.connect_timeout = short;
            c.session_timeout = Duration::from_secs(1);
        }
        _ => {}
    }
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn hostile_urls_and_configs_never_panic_nor_leak_a_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let started = Instant::now();
    let mut findings = Findings::default();
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let (mut inputs, mut panics, mut parsed_ok, mut log_lines) = (0usize, Vec::new(), 0usize, 0);
    let mut connected: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let port = closed_port();
    let mut phases = [Duration::ZERO; 3];

    for case in 0..2 * CASES {
        let is_url = case % 2 == 0;
        let input = if is_url {
            url(&mut rng)
        } else {
            config_json(&mut rng)
        };
        inputs += 1;
        let t0 = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            parse_all(&mut findings, &input, is_url, case)
        }));
        phases[usize::from(is_url)] += t0.elapsed();
        let parsed = match outcome {
            Ok(parsed) => parsed,
            Err(_) => {
                panics.push(input.chars().take(200).collect::<String>());
                None
            }
        };
        if case % 7 == 0 {
            inputs += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| builder_cases(&mut findings, &mut rng)));
            if outcome.is_err() {
                panics.push(format!("builder case {case}"));
            }
        }
        if let Some(mut config) = parsed {
            parsed_ok += 1;
            let kind = config.kind().as_str();
            let seen = connected.entry(kind).or_default();
            // Every memory config the first 200 times, then a sample; remote ones: a few each.
            let budget = if kind == "memory" { 200 } else { 3 };
            if *seen < budget || case % 4_000 == 0 {
                *seen += 1;
                let t0 = Instant::now();
                at_closed_port(&mut config, port);
                let result = runtime.block_on(
                    AssertUnwindSafe(async {
                        let built = new_service_registry(&config).await;
                        if let Ok(registry) = &built {
                            let _ = registry.close().await;
                        }
                        built.map(|r| r.backend())
                    })
                    .catch_unwind(),
                );
                match result {
                    Ok(result) => {
                        findings.result(&input, "new_service_registry", &result);
                        if kind != "memory" {
                            assert!(result.is_err(), "{kind} connected to a closed port");
                        }
                    }
                    Err(_) => panics.push(format!("new_service_registry: {input}")),
                }
                phases[2] += t0.elapsed();
            }
        }
        if case % 1_000 == 0 {
            log_lines += captured.drain(&mut findings, &input);
        }
    }
    log_lines += captured.drain(&mut findings, "(end)");
    let elapsed = started.elapsed();
    println!(
        "{inputs} inputs, {parsed_ok} parsed, {} texts checked, {log_lines} log lines, \
         connected {connected:?}, in {elapsed:?} (JSON {:?}, URLs {:?}, connecting {:?})",
        findings.texts, phases[0], phases[1], phases[2]
    );
    assert!(inputs >= 100_000, "{inputs} inputs");
    assert!(
        panics.is_empty(),
        "{} panics, first: {:?}",
        panics.len(),
        &panics[..panics.len().min(5)]
    );
    assert!(
        findings.failures.is_empty(),
        "{}",
        findings.failures.join("\n")
    );
    // The generator reaches every backend and both outcomes.
    assert!(parsed_ok > 1_000, "only {parsed_ok} inputs parsed");
    for kind in ["memory", "etcd", "consul", "nacos", "zookeeper"] {
        assert!(
            connected.get(kind).copied().unwrap_or(0) >= 1,
            "{kind} never built: {connected:?}"
        );
    }
    assert!(
        log_lines > 0,
        "no log line was captured: the subscriber is not in place"
    );
}

/// The cases of the issue, one by one, with the exact promise for each.
#[test]
fn the_reported_leaks_are_closed() {
    for url in [
        "etcd:/admin:PASSWORD@h:2379",
        "etcd//admin:PASSWORD@h",
        "admin:PASSWORD@h:2379",
        "etcd:admin:PASSWORD@h",
        "etcd://admin:Qz7k/PASSWORD@h:2379",
        "etcd://admin:PASSWORD?x@h:2379",
        "etcd://admin:PASSWORD#x@h:2379",
    ] {
        let e = RegistryConfig::from_url(url).unwrap_err().to_string();
        assert!(!e.contains("PASSWORD") && !e.contains("Qz7k"), "{url}: {e}");
        let builder = RegistryBuilder::from_url(url);
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains("PASSWORD") && !shown.contains("Qz7k"),
            "{shown}"
        );
        let e = builder.config().unwrap_err().to_string();
        assert_eq!(e.matches("invalid configuration:").count(), 1, "{e}");
    }
    let builder = RegistryBuilder::new()
        .with_etcd(["h:2379"], "/svc")
        .with_credentials("admin", "PASSWORD");
    assert!(!format!("{builder:?}").contains("PASSWORD"));
    let builder = RegistryBuilder::new()
        .with_consul("h:8500", "svc")
        .with_token("PASSWORD");
    assert!(!format!("{builder:?}").contains("PASSWORD"));
    // A builder error never doubles its prefix.
    for builder in [
        RegistryBuilder::from_url("zk://h?session_timeout=1ms"),
        RegistryBuilder::new().with_cleanup_interval(Duration::from_nanos(1)),
        RegistryBuilder::new().with_token("t"),
        RegistryBuilder::new()
            .with_type(RegistryType::Zookeeper)
            .with_session_timeout(Duration::MAX),
    ] {
        let e = builder.config().unwrap_err().to_string();
        assert!(e.starts_with("invalid configuration: "), "{e}");
        assert_eq!(e.matches("invalid configuration:").count(), 1, "{e}");
    }
}

/// A ZooKeeper session timeout the backend would refuse is an error of the config parse.
#[test]
fn out_of_bounds_values_fail_at_parse() {
    for json in [
        r#"{"type":"zookeeper","session_timeout":"10ms"}"#,
        r#"{"type":"zookeeper","zookeeper":{"session_timeout":"25h"}}"#,
        r#"{"type":"memory","cleanup_interval":"1ns"}"#,
        r#"{"type":"nacos","connect_timeout":18446744073709551615}"#,
        r#"{"type":"etcd","ttl":"18446744073709551616ns"}"#,
        r#"{"type":"consul","prefix":"a/../b"}"#,
        r#"{"type":"etcd","endpoints":["h:080"]}"#,
    ] {
        let e = serde_json::from_str::<RegistryConfig>(json)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outside")
                || e.contains("larger than")
                || e.contains("segment")
                || e.contains("port"),
            "{json}: {e}"
        );
    }
    // A 100 KB duration is not repeated in full.
    let json = format!(r#"{{"type":"etcd","ttl":"{}s"}}"#, "9".repeat(100_000));
    let e = serde_json::from_str::<RegistryConfig>(&json)
        .unwrap_err()
        .to_string();
    assert!(e.len() < 400, "{} bytes", e.len());
    let e = RegistryConfig::from_url(&format!("etcd://h?ttl={}s", "9".repeat(100_000)))
        .unwrap_err()
        .to_string();
    assert!(e.len() < 400, "{} bytes", e.len());
    // An unknown type of 100 KB, likewise.
    let json = format!(r#"{{"type":"{}"}}"#, "x".repeat(100_000));
    let e = serde_json::from_str::<RegistryConfig>(&json)
        .unwrap_err()
        .to_string();
    assert!(e.len() < 400, "{} bytes", e.len());
    // A string where the config's map should be is not echoed either.
    let json = format!(r#""{PASSWORD}{}""#, "x".repeat(100_000));
    let e = serde_json::from_str::<RegistryConfig>(&json)
        .unwrap_err()
        .to_string();
    assert!(
        e.len() < 400 && !e.contains(PASSWORD),
        "{}",
        &e[..e.len().min(200)]
    );
}

/// `deregister`, `renew` and `get_service` with a 10 MiB id answer with a short message.
#[test]
fn huge_ids_give_short_errors() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let registry = new_service_registry(&RegistryConfig::memory())
            .await
            .unwrap();
        let id = "i".repeat(10 << 20);
        let texts = [
            registry.deregister(&id).await.unwrap_err(),
            registry.renew(&id).await.unwrap_err(),
            registry.get_service(&id).await.unwrap_err(),
        ];
        for e in texts {
            let (shown, debug) = (e.to_string(), format!("{e:?}"));
            assert!(
                shown.len() < 200 && debug.len() < 200,
                "{} / {} bytes",
                shown.len(),
                debug.len()
            );
        }
        registry.close().await.unwrap();
    });
}
