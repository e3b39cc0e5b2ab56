//! `waypost sync` between real registries, run as a child process: etcd → rnacos,
//! ZooKeeper → etcd (with `--service` and `--prefix-map`), the Consul fake → etcd (JSON logs
//! and the metrics endpoint), and etcd ⇄ ZooKeeper in both directions at once. The servers are
//! shared by the tests of this binary (each test has its own prefix and service names); with
//! `CI=true` a missing server fails the test.

mod sync_support;

use std::time::Duration;

use sync_support::*;
use waypost::core::validate::MAX_NAME_LEN;
use waypost_integration_tests::free_port;
use waypost_registry_consul::fake::{FakeConsul, FakeOptions};

const ORIGIN: &str = "waypost.sync.origin";
const SOURCE: &str = "waypost.sync.source";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_to_nacos_mirrors_changes_and_deregisters_on_sigterm() {
    const T: &str = "etcd_to_nacos_mirrors_changes_and_deregisters_on_sigterm";
    let Some(etcd) = shared_etcd(T).await else {
        return;
    };
    let Some(nacos) = shared_nacos(T).await else {
        return;
    };
    let cache = tempfile::tempdir().expect("temp dir");
    let src_url = etcd_url(&etcd.endpoint(), "e2n");
    let dst_url = nacos_url(&nacos.addr(), cache.path());
    let src = open(&src_url).await;
    let dst = open(&dst_url).await;
    for s in [
        instance("e2n-a1", "e2n-orders", 18001),
        instance("e2n-a2", "e2n-orders", 18002),
        instance("e2n-b1", "e2n-users", 18003),
    ] {
        src.register(&s).await.expect("register on etcd");
    }
    let mut syncer = Syncer::start(&args(&[&src_url, &dst_url, "--ttl", "5s"]));
    wait_for_ids(
        "start",
        &*dst,
        "e2n-orders",
        &set(&["e2n-a1", "e2n-a2"]),
        &syncer,
    )
    .await;
    wait_for_ids("start", &*dst, "e2n-users", &set(&["e2n-b1"]), &syncer).await;
    let mirror = get(&*dst, "e2n-orders", "e2n-a1").await;
    let origin = format!("etcd://127.0.0.1:{}/e2n", etcd.client_port());
    assert_eq!(mirror.metadata[ORIGIN], origin);
    assert_eq!(mirror.metadata[SOURCE], origin);
    assert_eq!(mirror.metadata["zone"], "z1");
    assert_eq!(mirror.version, "1.0.0");
    assert_eq!(mirror.tags, vec!["api".to_owned()]);
    assert_eq!((mirror.address.as_str(), mirror.port), ("127.0.0.1", 18001));

    // Changes: an update, a removal, a new instance.
    src.register(&instance("e2n-a1", "e2n-orders", 18001).with_version("2.0.0"))
        .await
        .expect("update");
    src.deregister("e2n-a2").await.expect("deregister");
    src.register(&instance("e2n-a3", "e2n-orders", 18004))
        .await
        .expect("register");
    wait_for_ids(
        "changes",
        &*dst,
        "e2n-orders",
        &set(&["e2n-a1", "e2n-a3"]),
        &syncer,
    )
    .await;
    let start = tokio::time::Instant::now();
    while get(&*dst, "e2n-orders", "e2n-a1").await.version != "2.0.0" {
        assert!(
            start.elapsed() < CONVERGE,
            "update not mirrored\n{}",
            syncer.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = syncer.log();
    assert!(
        log.contains("INFO  snapshot reason=initial scope=all"),
        "{log}"
    );
    assert!(
        log.contains(
            "INFO  mirrored id=e2n-a3 service=e2n-orders endpoint=127.0.0.1:18004 lag_ms="
        ),
        "{log}"
    );
    assert!(log.contains("INFO  removed id=e2n-a2"), "{log}");

    // A clean stop deregisters every mirror and leaves the source alone.
    let status = syncer.stop_with("TERM", Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", syncer.log());
    wait_for_ids("stopped", &*dst, "e2n-orders", &set(&[]), &syncer).await;
    wait_for_ids("stopped", &*dst, "e2n-users", &set(&[]), &syncer).await;
    assert_eq!(ids(&*src, "e2n-orders").await, set(&["e2n-a1", "e2n-a3"]));
    assert!(syncer.log().contains("INFO  stopping signal=SIGTERM"));
    src.close().await.expect("close");
    dst.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_to_etcd_one_service_renamed_leaving_others_alone() {
    const T: &str = "zookeeper_to_etcd_one_service_renamed_leaving_others_alone";
    let Some(etcd) = shared_etcd(T).await else {
        return;
    };
    let Some(zk) = shared_zk(T).await else {
        return;
    };
    let src_url = zk_url(&zk.addr(), "z2e");
    let dst_url = etcd_url(&etcd.endpoint(), "z2e");
    let src = open(&src_url).await;
    let dst = open(&dst_url).await;
    let src_id = format!("zookeeper://{}/z2e", zk.addr());
    for s in [
        instance("z2e-p1", "legacy.pay", 18101),
        instance("z2e-p2", "legacy.pay", 18102),
        // Same id as a native target instance: a conflict, never overwritten.
        instance("z2e-clash", "legacy.pay", 18103),
        instance("z2e-o1", "z2e-other", 18104),
    ] {
        src.register(&s).await.expect("register on zookeeper");
    }
    // On the target: a native instance of the renamed service, a native one whose id clashes,
    // and a mirror an earlier syncer of this source left for an instance the source no longer
    // has.
    let native = open(&dst_url).await;
    native
        .register(&instance("z2e-native", "pay", 18105))
        .await
        .expect("native");
    native
        .register(&instance("z2e-clash", "pay", 18106))
        .await
        .expect("native clash");
    // The leftover is written as a bare key (no lease), as a crashed syncer's would be
    // before its lease ends.
    let stale = instance("z2e-stale", "pay", 18107)
        .with_metadata(ORIGIN, &src_id)
        .with_metadata(SOURCE, &src_id);
    let json = serde_json::to_string(&stale).expect("json");
    etcd.etcdctl(&["put", "/z2e/pay/z2e-stale", &json])
        .expect("etcdctl put");
    assert!(ids(&*dst, "pay").await.contains("z2e-stale"));

    let mut syncer = Syncer::start(&args(&[
        &src_url,
        &dst_url,
        "--service",
        "legacy.pay",
        "--prefix-map",
        "legacy.=",
        "--status-every",
        "500ms",
    ]));
    wait_for_ids(
        "start",
        &*dst,
        "pay",
        &set(&["z2e-p1", "z2e-p2", "z2e-native", "z2e-clash"]),
        &syncer,
    )
    .await;
    // The clash keeps the native instance's port; other services are not mirrored.
    assert_eq!(get(&*dst, "pay", "z2e-clash").await.port, 18106);
    assert!(ids(&*dst, "z2e-other").await.is_empty());
    assert!(ids(&*dst, "legacy.pay").await.is_empty());
    let mirror = get(&*dst, "pay", "z2e-p1").await;
    assert_eq!(mirror.metadata[ORIGIN], src_id);

    src.deregister("z2e-p2").await.expect("deregister");
    wait_for_ids(
        "removal",
        &*dst,
        "pay",
        &set(&["z2e-p1", "z2e-native", "z2e-clash"]),
        &syncer,
    )
    .await;
    let start = tokio::time::Instant::now();
    while !syncer
        .log()
        .contains("INFO  status desired=2 mirrored=1 pending=0")
    {
        assert!(
            start.elapsed() < CONVERGE,
            "no status line\n{}",
            syncer.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = syncer.log();
    assert!(log.contains("WARN  skipped id=z2e-clash why=\"the target has an instance with this id that no syncer of this source mirrored\""), "{log}");
    assert!(log.contains("INFO  removed id=z2e-stale"), "{log}");

    let status = syncer.stop_with("INT", Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    wait_for_ids(
        "stopped",
        &*dst,
        "pay",
        &set(&["z2e-native", "z2e-clash"]),
        &syncer,
    )
    .await;
    native.close().await.expect("close");
    src.close().await.expect("close");
    dst.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_fake_to_etcd_with_json_logs_and_metrics() {
    const T: &str = "consul_fake_to_etcd_with_json_logs_and_metrics";
    let Some(etcd) = shared_etcd(T).await else {
        return;
    };
    let agent = FakeConsul::start(FakeOptions::default())
        .await
        .expect("start the fake agent");
    let src_url = format!(
        "consul://{}/c2e?connect_timeout=2s&watch_wait=2s&watch_min_interval=20ms",
        agent.addr()
    );
    let dst_url = etcd_url(&etcd.endpoint(), "c2e");
    let src = open(&src_url).await;
    let dst = open(&dst_url).await;
    for s in [
        instance("c2e-w1", "c2e-web", 18201),
        instance("c2e-w2", "c2e-web", 18202),
    ] {
        src.register(&s).await.expect("register on consul");
    }
    // A name the target cannot store once renamed: logged and skipped, the rest goes on.
    let long = format!("c2e-{}", "n".repeat(MAX_NAME_LEN - 10));
    src.register(&instance("c2e-long", &long, 18203))
        .await
        .expect("register");
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut syncer = Syncer::start(&args(&[
        &src_url,
        &dst_url,
        "-o",
        "json",
        "--prefix-map",
        "c2e-=c2e-mirrored.",
        "--metrics-addr",
        &metrics_addr,
    ]));
    wait_for_ids(
        "start",
        &*dst,
        "c2e-mirrored.web",
        &set(&["c2e-w1", "c2e-w2"]),
        &syncer,
    )
    .await;
    src.deregister("c2e-w2").await.expect("deregister");
    wait_for_ids(
        "removal",
        &*dst,
        "c2e-mirrored.web",
        &set(&["c2e-w1"]),
        &syncer,
    )
    .await;

    // Every stderr line is one JSON object.
    let log = syncer.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let event = |name: &'static str| lines.iter().filter(move |l| l["event"] == name);
    let snapshot = event("snapshot").next().expect("a snapshot line");
    assert_eq!(snapshot["reason"], "initial");
    assert_eq!(snapshot["level"], "info");
    let skipped = event("skipped").next().expect("a skipped line");
    assert_eq!(skipped["id"], "c2e-long");
    assert_eq!(skipped["level"], "warn");
    assert!(event("removed").any(|l| l["id"] == "c2e-w2"), "{log}");
    assert!(
        event("mirrored").any(|l| l["id"] == "c2e-w1" && l["lag_ms"].is_u64()),
        "{log}"
    );

    // The metrics endpoint (text format 0.0.4).
    let start = tokio::time::Instant::now();
    let text = loop {
        let text = http_get(port, "/metrics").await;
        if text.contains("waypost_sync_pending 0") {
            break text;
        }
        assert!(start.elapsed() < CONVERGE, "pending never 0:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("content-type: text/plain; version=0.0.4"),
        "{text}"
    );
    for name in [
        "waypost_sync_lag_seconds",
        "waypost_sync_pending",
        "waypost_sync_writes_total",
        "waypost_sync_resyncs_total",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
    }
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    let registers = value(r#"waypost_sync_writes_total{op="register",outcome="success"}"#);
    assert!(registers >= 2.0, "{text}");
    assert_eq!(
        value(r#"waypost_sync_writes_total{op="deregister",outcome="success"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(r#"waypost_sync_writes_total{op="register",outcome="error"}"#),
        0.0
    );
    assert_eq!(
        value(r#"waypost_sync_resyncs_total{reason="start"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(r#"waypost_sync_resyncs_total{reason="initial"}"#),
        1.0,
        "{text}"
    );
    assert!(value("waypost_sync_lag_seconds_count") >= 3.0, "{text}");
    assert!(
        text.contains(r#"waypost_sync_lag_seconds_bucket{le="1"}"#),
        "{text}"
    );
    assert!(http_get(port, "/other").await.starts_with("HTTP/1.1 404"));

    let status = syncer.stop_with("TERM", Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    wait_for_ids("stopped", &*dst, "c2e-mirrored.web", &set(&[]), &syncer).await;
    src.close().await.expect("close");
    dst.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_and_zookeeper_both_ways_at_once_do_not_loop() {
    const T: &str = "etcd_and_zookeeper_both_ways_at_once_do_not_loop";
    let Some(etcd) = shared_etcd(T).await else {
        return;
    };
    let Some(zk) = shared_zk(T).await else {
        return;
    };
    let etcd_url = etcd_url(&etcd.endpoint(), "bidi");
    let zk_url = zk_url(&zk.addr(), "bidi");
    let e = open(&etcd_url).await;
    let z = open(&zk_url).await;
    const SVC: &str = "bidi-svc";
    e.register(&instance("bidi-e1", SVC, 18301))
        .await
        .expect("e1");
    e.register(&instance("bidi-e2", SVC, 18302))
        .await
        .expect("e2");
    z.register(&instance("bidi-z1", SVC, 18303))
        .await
        .expect("z1");
    let forward = Syncer::start(&args(&[&etcd_url, &zk_url]));
    let backward = Syncer::start(&args(&[&zk_url, &etcd_url]));
    let all = set(&["bidi-e1", "bidi-e2", "bidi-z1"]);
    wait_for_ids("etcd side", &*e, SVC, &all, &backward).await;
    wait_for_ids("zookeeper side", &*z, SVC, &all, &forward).await;
    stays("etcd side", &*e, SVC, &all, Duration::from_secs(2)).await;
    stays("zookeeper side", &*z, SVC, &all, Duration::from_secs(2)).await;

    e.deregister("bidi-e1").await.expect("deregister e1");
    z.register(&instance("bidi-z2", SVC, 18304))
        .await
        .expect("z2");
    z.register(&instance("bidi-z1", SVC, 18313))
        .await
        .expect("z1 moved");
    let after = set(&["bidi-e2", "bidi-z1", "bidi-z2"]);
    wait_for_ids("etcd side", &*e, SVC, &after, &backward).await;
    wait_for_ids("zookeeper side", &*z, SVC, &after, &forward).await;
    let start = tokio::time::Instant::now();
    while get(&*e, SVC, "bidi-z1").await.port != 18313 {
        assert!(
            start.elapsed() < CONVERGE,
            "move not mirrored\n{}",
            backward.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stays("etcd side", &*e, SVC, &after, Duration::from_secs(2)).await;
    stays("zookeeper side", &*z, SVC, &after, Duration::from_secs(2)).await;

    // Each side's mirrors say where they came from, and neither syncer wrote back what the
    // other one mirrored.
    let etcd_id = format!("etcd://127.0.0.1:{}/bidi", etcd.client_port());
    let zk_id = format!("zookeeper://{}/bidi", zk.addr());
    assert_eq!(get(&*e, SVC, "bidi-z2").await.metadata[ORIGIN], zk_id);
    assert_eq!(get(&*z, SVC, "bidi-e2").await.metadata[ORIGIN], etcd_id);
    assert!(!get(&*e, SVC, "bidi-e2").await.metadata.contains_key(ORIGIN));
    assert!(!get(&*z, SVC, "bidi-z2").await.metadata.contains_key(ORIGIN));
    for (syncer, foreign) in [(&forward, "bidi-z"), (&backward, "bidi-e")] {
        let log = syncer.log();
        assert!(
            !log.lines()
                .any(|l| l.contains("mirrored") && l.contains(&format!("id={foreign}"))),
            "a mirror went back:\n{log}"
        );
    }
    drop((forward, backward));
    e.close().await.expect("close");
    z.close().await.expect("close");
}

/// A bare HTTP/1.0 GET on 127.0.0.1:`port`: the whole response.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics endpoint");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out
}

#[test]
fn bad_input_gives_one_line_errors_and_exit_codes() {
    let port = free_port(); // nothing listens there
    let unreachable = format!("etcd://127.0.0.1:{port}/x");
    let cases: Vec<(Vec<String>, i32, &str)> =
        vec![
        (
            args(&["etdc://root:s3cret@h:2379", "etcd://h:2379"]),
            2,
            "waypost: error: SRC_URL: invalid configuration: registry URL: unknown scheme `etdc`",
        ),
        (
            args(&["etcd://h:2379/a", "etcd://h:2379/a"]),
            2,
            "waypost: error: the source and the target are the same registry (etcd://h:2379/a)",
        ),
        (
            args(&["etcd://h:2379/a", "etcd://h:2379/b", "--ttl", "100ms"]),
            2,
            "waypost: error: --ttl must be at least 1s",
        ),
        (
            args(&["etcd://h:2379/a", "etcd://h:2379/b", "--prefix-map", "a/b=c"]),
            2,
            "waypost: error: invalid value 'a/b=c' for '--prefix-map <FROM=TO>'",
        ),
        (
            args(&[&unreachable, "etcd://127.0.0.1:1/y", "--timeout", "1s"]),
            4,
            "waypost: error: source: connecting to etcd",
        ),
        (
            args(&["etcd://h:2379/a"]),
            2,
            "waypost: error: the following required arguments were not provided: <DST_URL>",
        ),
    ];
    for (argv, code, start) in cases {
        let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("waypost"))
            .arg("sync")
            .args(&argv)
            .output()
            .expect("run waypost");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{argv:?}: {stderr}");
        assert!(stderr.starts_with(start), "{argv:?}: {stderr}");
        assert!(
            !stderr.contains("s3cret") && !stderr.contains("panicked"),
            "{stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{argv:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{argv:?}");
    }
}
