//! The resilience lab runs in its quick mode, prints its table of six configurations and writes
//! a well-formed SVG chart naming each of them; outlier ejection keeps traffic off the instance
//! that fails every request.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LAB: &str = env!("CARGO_BIN_EXE_resilience_lab");

const CONFIGURATIONS: [&str; 6] = [
    "round robin",
    "round robin + ejection",
    "least request",
    "least request + ejection",
    "peak EWMA",
    "peak EWMA + ejection",
];

/// One row of the lab's table.
#[derive(Debug)]
struct Row {
    label: String,
    calls: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    errors: f64,
    error_rate_pct: f64,
    to_normal: f64,
    to_slow: f64,
    to_failing: f64,
}

/// The table's rows: lines `| label | n | n | … |` after the header and its `|---|` line.
fn rows(stdout: &str) -> Vec<Row> {
    stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| configuration"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 10, "a row of ten cells: {line}");
            let num = |i: usize| -> f64 {
                cells[i]
                    .parse()
                    .unwrap_or_else(|_| panic!("cell {i} is not a number: {line}"))
            };
            Row {
                label: cells[0].to_owned(),
                calls: num(1),
                p50_ms: num(2),
                p90_ms: num(3),
                p99_ms: num(4),
                errors: num(5),
                error_rate_pct: num(6),
                to_normal: num(7),
                to_slow: num(8),
                to_failing: num(9),
            }
        })
        .collect()
}

/// Runs the lab with `args`, killed if it has not finished within `limit`.
fn run_lab(args: &[&str], limit: Duration) -> (bool, String, String) {
    let mut child = Command::new(LAB)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the lab");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the lab did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status.success(), stdout, stderr)
}

#[test]
fn quick_lab_prints_six_configurations_and_writes_a_well_formed_chart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("charts").join("lab.svg");
    let out_arg = out.to_str().expect("a UTF-8 temp path");
    let (ok, stdout, stderr) = run_lab(&["--quick", "--out", out_arg], Duration::from_secs(120));
    assert!(ok, "the lab failed:\n{stdout}\n{stderr}");

    let rows = rows(&stdout);
    let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, CONFIGURATIONS, "{stdout}");
    for r in &rows {
        assert_eq!(r.calls, 400.0, "quick mode makes 400 calls: {r:?}");
        assert!(
            r.p50_ms > 0.0 && r.p50_ms <= r.p90_ms && r.p90_ms <= r.p99_ms,
            "0 < p50 <= p90 <= p99: {r:?}"
        );
        assert!(
            (0.0..=100.0).contains(&r.error_rate_pct)
                && (r.error_rate_pct - r.errors * 100.0 / r.calls).abs() < 0.01,
            "error rate is errors / calls: {r:?}"
        );
        // Every call reached an instance at least once.
        assert!(
            r.to_normal + r.to_slow + r.to_failing >= r.calls - r.errors,
            "{r:?}"
        );
    }
    // The failing instance answers 503 to every request: with ejection no more calls fail, for
    // every balancer; round robin, which does not learn from failures, keeps giving it its turn
    // (one first attempt in five) unless ejection takes it out after five failures in a row.
    for pair in rows.chunks(2) {
        let (plain, ejecting) = (&pair[0], &pair[1]);
        assert!(
            ejecting.error_rate_pct <= plain.error_rate_pct,
            "ejection must not add errors: {plain:?} vs {ejecting:?}"
        );
    }
    let (rr, rr_eject) = (&rows[0], &rows[1]);
    assert!(
        rr.to_failing >= rr.calls / 10.0,
        "round robin keeps sending the failing instance its turn: {rr:?}"
    );
    assert!(
        rr_eject.to_failing < rr.to_failing / 2.0,
        "ejection keeps round robin off the failing instance: {rr:?} vs {rr_eject:?}"
    );

    let svg = std::fs::read_to_string(&out).expect("the chart was written");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    let doc = roxmltree::Document::parse(&svg).expect("the chart is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
        .collect();
    for label in CONFIGURATIONS {
        assert!(
            texts.iter().any(|t| t == label),
            "no `{label}` label in the chart: {texts:?}"
        );
    }
    assert!(
        doc.descendants().filter(|n| n.has_tag_name("rect")).count() >= 5 * CONFIGURATIONS.len(),
        "bars for p50, p90, p99, attempts on the failing instance and errors of each configuration"
    );
}

#[test]
fn bad_arguments_fail_with_a_clear_line() {
    for (args, expected) in [
        (&["--requests", "0"][..], "--requests must be 1 to 1000000"),
        (
            &["--concurrency", "lots"][..],
            "invalid --concurrency `lots`",
        ),
        (&["--out"][..], "--out needs a value"),
        (&["--frobnicate"][..], "unknown argument `--frobnicate`"),
    ] {
        let (ok, _, stderr) = run_lab(args, Duration::from_secs(30));
        assert!(!ok, "{args:?} must fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
