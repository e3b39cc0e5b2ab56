//! Hostile and non-gRPC peers: garbage statuses, huge or control-character messages, bad
//! details, HTML pages, responses without a status, enormous headers. Each call ends with a
//! clear, bounded, escaped error naming the service and instance; nothing panics.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{grpc_head, instance, ok_trailers, responder, serving_message, setup, Mode, Reply};
use hyper::body::Frame;
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use waypost_balancer::RoundRobin;
use waypost_grpc::Channel;

/// Calls an instance `h` answering with `answer`.
async fn call(
    answer: impl Fn() -> (http::response::Builder, Reply) + Send + Sync + 'static,
) -> Result<i32, Status> {
    let server = responder(Mode::Custom(Arc::new(answer))).await;
    let (_r, d) = setup(
        &[instance("h", server.addr.port())],
        Arc::new(RoundRobin::new()),
    )
    .await;
    let channel = Channel::builder(d, "greeter")
        .no_outlier_detection()
        .build()
        .expect("channel");
    let r = HealthClient::new(channel).check(common::check()).await;
    r.map(|r| r.into_inner().status)
}

/// The error is bounded, has no control character, and names service and instance.
fn assert_clear(e: &Status, code: Code, contains: &str) {
    let m = e.message();
    assert_eq!(e.code(), code, "{m}");
    assert!(m.len() < 1024, "{} bytes: {m}", m.len());
    assert!(!m.chars().any(char::is_control), "{m:?}");
    assert!(
        m.contains("service `greeter`, instance `h` (127.0.0.1:"),
        "{m}"
    );
    assert!(m.contains(contains), "{m}");
}

fn status_only(status: &'static str) -> (http::response::Builder, Reply) {
    (grpc_head().header("grpc-status", status), Reply(None, None))
}

#[tokio::test]
async fn a_grpc_status_that_is_not_a_number_is_unknown() {
    let e = call(|| status_only("abc")).await.expect_err("garbage");
    assert_clear(&e, Code::Unknown, "invalid grpc-status `abc`");
}

#[tokio::test]
async fn a_huge_grpc_status_is_unknown_and_bounded() {
    let e = call(|| status_only("999999999999999999999999999999999999999999999999999"))
        .await
        .expect_err("garbage");
    assert_clear(&e, Code::Unknown, "invalid grpc-status `99999");
    let e = call(|| status_only("17")).await.expect_err("out of range");
    assert_clear(&e, Code::Unknown, "invalid grpc-status `17`");
}

#[tokio::test]
async fn a_huge_control_character_message_is_bounded_and_escaped() {
    let e = call(|| {
        let message = format!("%01%1B[31mred%0A{}", "A".repeat(8000));
        (
            grpc_head()
                .header("grpc-status", "14")
                .header("grpc-message", message),
            Reply(None, None),
        )
    })
    .await
    .expect_err("unavailable");
    assert_clear(&e, Code::Unavailable, "red");
    assert!(e.message().contains("\\u{1b}"), "{}", e.message());
}

#[tokio::test]
async fn details_that_are_not_base64_are_dropped_not_a_panic() {
    let e = call(|| {
        (
            grpc_head()
                .header("grpc-status", "3")
                .header("grpc-message", "bad")
                .header("grpc-status-details-bin", "!!not base64!!"),
            Reply(None, None),
        )
    })
    .await
    .expect_err("invalid argument");
    assert_clear(&e, Code::InvalidArgument, "bad");
    assert!(e.details().is_empty());

    // In trailers, after a message, with an OK status: the call succeeds.
    let ok = call(|| {
        let mut trailers = ok_trailers();
        trailers.insert(
            "grpc-status-details-bin",
            "%%%".parse().expect("header value"),
        );
        (
            grpc_head(),
            Reply(
                Some(Frame::data(serving_message())),
                Some(Frame::trailers(trailers)),
            ),
        )
    })
    .await
    .expect("OK in trailers");
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn a_garbage_status_in_trailers_is_unknown() {
    let e = call(|| {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "x1".parse().expect("value"));
        (
            grpc_head(),
            Reply(
                Some(Frame::data(serving_message())),
                Some(Frame::trailers(trailers)),
            ),
        )
    })
    .await
    .expect_err("garbage");
    assert_clear(&e, Code::Unknown, "invalid grpc-status `x1`");
}

#[tokio::test]
async fn an_error_status_in_trailers_names_the_instance() {
    let e = call(|| {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().expect("value"));
        trailers.insert("grpc-message", "no%20such%20user".parse().expect("value"));
        (
            grpc_head(),
            Reply(
                Some(Frame::data(serving_message())),
                Some(Frame::trailers(trailers)),
            ),
        )
    })
    .await
    .expect_err("not found");
    assert_clear(
        &e,
        Code::NotFound,
        "no such user (service `greeter`, instance `h`",
    );
}

#[tokio::test]
async fn a_response_without_any_status_is_internal() {
    let e = call(|| {
        (
            grpc_head(),
            Reply(Some(Frame::data(serving_message())), None),
        )
    })
    .await
    .expect_err("no status");
    assert_clear(&e, Code::Internal, "ended without a grpc-status");
}

#[tokio::test]
async fn an_html_404_is_unimplemented_and_an_html_200_unknown() {
    let page = || {
        Some(Frame::data(Bytes::from_static(
            b"<html><body>Not Found</body></html>",
        )))
    };
    let e = call(move || {
        (
            hyper::Response::builder()
                .status(404)
                .header("content-type", "text/html"),
            Reply(page(), None),
        )
    })
    .await
    .expect_err("404");
    assert_clear(
        &e,
        Code::Unimplemented,
        "not a gRPC response: HTTP 404, content type `text/html`",
    );
    let e = call(move || {
        (
            hyper::Response::builder().header("content-type", "text/html"),
            Reply(page(), None),
        )
    })
    .await
    .expect_err("HTML");
    assert_clear(&e, Code::Unknown, "HTTP 200, content type `text/html`");
    let e = call(|| (hyper::Response::builder().status(503), Reply(None, None)))
        .await
        .expect_err("503");
    assert_clear(&e, Code::Unavailable, "HTTP 503");
}

#[tokio::test]
async fn an_enormous_header_fails_the_call_clearly() {
    let e = call(|| {
        (
            grpc_head().header("x-huge", "h".repeat(256 * 1024)),
            Reply(
                Some(Frame::data(serving_message())),
                Some(Frame::trailers(ok_trailers())),
            ),
        )
    })
    .await
    .expect_err("headers above the limit");
    // hyper's HTTP/2 client refuses header lists above 16 KiB (a connection error).
    assert_clear(&e, Code::Unavailable, "http2 error");
}
