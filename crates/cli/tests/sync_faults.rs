//! `waypost sync` through faults: the source cut off (changes made while the syncer cannot see
//! them), the source server killed and restarted, the target server killed while the source
//! changes, and the syncer itself killed with SIGKILL and started again. A test that kills a
//! server starts its own; the others share this binary's servers.

mod sync_support;

use std::time::Duration;

use sync_support::*;
use waypost_integration_tests::etcd::{EtcdServer, TcpProxy};
use waypost_integration_tests::require;
use waypost_integration_tests::zookeeper::{ZkOptions, ZkServer};

/// Waits until the syncer's log contains `needle`.
async fn wait_log(syncer: &Syncer, needle: &str) {
    let start = tokio::time::Instant::now();
    while !syncer.log().contains(needle) {
        assert!(
            start.elapsed() < CONVERGE,
            "no `{needle}` in the log\n{}",
            syncer.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_cut_off_changes_made_meanwhile_arrive_after() {
    const T: &str = "source_cut_off_changes_made_meanwhile_arrive_after";
    let Some(etcd) = shared_etcd(T).await else {
        return;
    };
    let Some(zk) = shared_zk(T).await else {
        return;
    };
    // The syncer reaches etcd through a proxy the test can cut; the test writes directly.
    let proxy = TcpProxy::start(etcd.client_port()).await.expect("proxy");
    let src_url = etcd_url(&proxy.endpoint(), "cut");
    let direct = open(&etcd_url(&etcd.endpoint(), "cut")).await;
    let dst_url = zk_url(&zk.addr(), "cut");
    let dst = open(&dst_url).await;
    const SVC: &str = "cut-svc";
    direct
        .register(&instance("cut-1", SVC, 18401))
        .await
        .expect("1");
    direct
        .register(&instance("cut-2", SVC, 18402))
        .await
        .expect("2");
    let syncer = Syncer::start(&args(&[&src_url, &dst_url]));
    wait_for_ids("start", &*dst, SVC, &set(&["cut-1", "cut-2"]), &syncer).await;

    proxy.set_open(false);
    wait_log(&syncer, "registry-state side=source state=recovering").await;
    direct.deregister("cut-1").await.expect("deregister");
    direct
        .register(&instance("cut-2", SVC, 18402).with_version("2.0.0"))
        .await
        .expect("update");
    direct
        .register(&instance("cut-3", SVC, 18403))
        .await
        .expect("3");
    // The mirrors stay while the source is out of reach.
    stays(
        "cut off",
        &*dst,
        SVC,
        &set(&["cut-1", "cut-2"]),
        Duration::from_secs(1),
    )
    .await;

    proxy.set_open(true);
    wait_for_ids("back", &*dst, SVC, &set(&["cut-2", "cut-3"]), &syncer).await;
    let start = tokio::time::Instant::now();
    while get(&*dst, SVC, "cut-2").await.version != "2.0.0" {
        assert!(start.elapsed() < CONVERGE, "update lost\n{}", syncer.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // etcd resumes the watch where it stopped (the changes are replayed, no snapshot needed).
    // And it keeps following.
    direct
        .register(&instance("cut-4", SVC, 18404))
        .await
        .expect("4");
    wait_for_ids(
        "after",
        &*dst,
        SVC,
        &set(&["cut-2", "cut-3", "cut-4"]),
        &syncer,
    )
    .await;
    drop(syncer);
    direct.close().await.expect("close");
    dst.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_server_restarted_then_changed_converges() {
    const T: &str = "source_server_restarted_then_changed_converges";
    let Some(mut etcd) = require(T, EtcdServer::start().await) else {
        return;
    };
    let Some(zk) = shared_zk(T).await else {
        return;
    };
    let src_url = etcd_url(&etcd.endpoint(), "srcdown");
    let dst_url = zk_url(&zk.addr(), "srcdown");
    let src = open(&src_url).await;
    let dst = open(&dst_url).await;
    const SVC: &str = "srcdown-svc";
    src.register(&instance("sd-1", SVC, 18501))
        .await
        .expect("1");
    src.register(&instance("sd-2", SVC, 18502))
        .await
        .expect("2");
    let syncer = Syncer::start(&args(&[&src_url, &dst_url]));
    wait_for_ids("start", &*dst, SVC, &set(&["sd-1", "sd-2"]), &syncer).await;

    etcd.kill();
    wait_log(&syncer, "registry-state side=source state=recovering").await;
    stays(
        "source down",
        &*dst,
        SVC,
        &set(&["sd-1", "sd-2"]),
        Duration::from_secs(1),
    )
    .await;
    etcd.restart().await.expect("restart etcd");
    let start = tokio::time::Instant::now();
    while syncer
        .log()
        .matches("registry-state side=source state=connected")
        .count()
        < 2
    {
        assert!(
            start.elapsed() < CONVERGE,
            "not reconnected\n{}",
            syncer.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    src.deregister("sd-1")
        .await
        .expect("deregister after restart");
    src.register(&instance("sd-3", SVC, 18503))
        .await
        .expect("3");
    wait_for_ids("after", &*dst, SVC, &set(&["sd-2", "sd-3"]), &syncer).await;
    stays(
        "after",
        &*dst,
        SVC,
        &set(&["sd-2", "sd-3"]),
        Duration::from_secs(1),
    )
    .await;
    drop(syncer);
    src.close().await.expect("close");
    dst.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_server_killed_while_the_source_changes_loses_nothing() {
    const T: &str = "target_server_killed_while_the_source_changes_loses_nothing";
    let Some(etcd) = shared_etcd(T).await else {
        return;
    };
    let Some(mut zk) = require(T, ZkServer::start(ZkOptions::default()).await) else {
        return;
    };
    let src_url = etcd_url(&etcd.endpoint(), "dstdown");
    let dst_url = zk_url(&zk.addr(), "dstdown");
    let src = open(&src_url).await;
    const SVC: &str = "dstdown-svc";
    src.register(&instance("td-1", SVC, 18601))
        .await
        .expect("1");
    src.register(&instance("td-2", SVC, 18602))
        .await
        .expect("2");
    let syncer = Syncer::start(&args(&[&src_url, &dst_url, "--timeout", "3s"]));
    {
        let dst = open(&dst_url).await;
        wait_for_ids("start", &*dst, SVC, &set(&["td-1", "td-2"]), &syncer).await;
        dst.close().await.expect("close");
    }

    zk.kill();
    src.deregister("td-1").await.expect("deregister");
    src.register(&instance("td-2", SVC, 18602).with_version("2.0.0"))
        .await
        .expect("update");
    src.register(&instance("td-3", SVC, 18603))
        .await
        .expect("3");
    // The syncer tries, fails and keeps the changes.
    wait_log(&syncer, "write-failed").await;
    zk.restart().await.expect("restart zookeeper");
    let dst = open(&dst_url).await;
    wait_for_ids("back", &*dst, SVC, &set(&["td-2", "td-3"]), &syncer).await;
    let start = tokio::time::Instant::now();
    while get(&*dst, SVC, "td-2").await.version != "2.0.0" {
        assert!(start.elapsed() < CONVERGE, "update lost\n{}", syncer.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Beyond a session timeout: nothing comes back or goes away.
    stays(
        "back",
        &*dst,
        SVC,
        &set(&["td-2", "td-3"]),
        Duration::from_secs(3),
    )
    .await;
    src.register(&instance("td-4", SVC, 18604))
        .await
        .expect("4");
    wait_for_ids(
        "after",
        &*dst,
        SVC,
        &set(&["td-2", "td-3", "td-4"]),
        &syncer,
    )
    .await;
    drop(syncer);
    src.close().await.expect("close");
    dst.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncer_killed_and_restarted_takes_over_without_duplicates() {
    const T: &str = "syncer_killed_and_restarted_takes_over_without_duplicates";
    let Some(etcd) = shared_etcd(T).await else {
        return;
    };
    let Some(zk) = shared_zk(T).await else {
        return;
    };
    let src_url = etcd_url(&etcd.endpoint(), "crash");
    let dst_url = zk_url(&zk.addr(), "crash");
    let src = open(&src_url).await;
    let dst = open(&dst_url).await;
    const SVC: &str = "crash-svc";
    for (id, port) in [("k-1", 18701), ("k-2", 18702), ("k-3", 18703)] {
        src.register(&instance(id, SVC, port))
            .await
            .expect("register");
    }
    let mut syncer = Syncer::start(&args(&[&src_url, &dst_url]));
    wait_for_ids("start", &*dst, SVC, &set(&["k-1", "k-2", "k-3"]), &syncer).await;

    syncer.kill();
    src.deregister("k-1").await.expect("deregister");
    src.register(&instance("k-4", SVC, 18704)).await.expect("4");
    syncer.restart();
    let want = set(&["k-2", "k-3", "k-4"]);
    wait_for_ids("restarted", &*dst, SVC, &want, &syncer).await;
    // Past the killed syncer's session timeout (2 s): the mirrors it held were taken over,
    // none expired and none is doubled.
    stays("taken over", &*dst, SVC, &want, Duration::from_secs(5)).await;
    assert_eq!(
        syncer
            .log()
            .matches("INFO  target-listed reason=start")
            .count(),
        2,
        "{}",
        syncer.log()
    );

    // Killed for good: its mirrors expire on the target.
    syncer.kill();
    wait_for_ids("expired", &*dst, SVC, &set(&[]), &syncer).await;
    src.close().await.expect("close");
    dst.close().await.expect("close");
}
