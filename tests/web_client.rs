//! The single-file web client served at `GET /`: served as HTML, fully
//! self-contained (works offline), and speaking the wire contract.

mod common;

use std::sync::OnceLock;

use common::*;

static SERVER: OnceLock<TestServer> = OnceLock::new();

const PAGE: &str = include_str!("../static/index.html");

#[tokio::test]
async fn root_serves_the_web_client() {
    let srv = TestServer::shared(&SERVER, &[]);
    let _g = srv.log_guard();
    let r = reqwest::get(format!("{}/", srv.base_url()))
        .await
        .expect("GET /");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/html"), "content-type {ct}");
    assert_eq!(r.text().await.unwrap(), PAGE);
}

#[test]
fn web_client_loads_nothing_from_outside() {
    let lower = PAGE.to_lowercase();
    for needle in [
        "src=\"http",
        "src='http",
        "href=\"http",
        "href='http",
        "src=\"//",
        "href=\"//",
        "@import",
        "url(",
        "<iframe",
    ] {
        assert!(
            !lower.contains(needle),
            "external resource reference {needle:?} in static/index.html"
        );
    }
    // Only inline scripts and styles.
    assert!(!lower.contains("<script src"), "external script");
    assert!(
        !lower.contains("<link rel=\"stylesheet\""),
        "external stylesheet"
    );
}

#[test]
fn web_client_never_renders_html_from_strings() {
    for needle in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(
            !PAGE.contains(needle),
            "{needle} in static/index.html: render user content as text"
        );
    }
}

#[test]
fn web_client_uses_the_contract() {
    for needle in [
        "v12.stomp",
        "'accept-version': '1.2'",
        "'heart-beat': '10000,10000'",
        "Authorization: 'Bearer '",
        "'/user/queue/message'",
        "ack: 'client-individual'",
        "'/user/queue/ack'",
        "'/user/queue/errors'",
        "'/app/send'",
        "'ACK'",
        "content-length",
        "/auth/register",
        "/auth/login",
        "'/sessions'",
        "/messages/mark-read",
        "/recall",
        "'/groups'",
        "sessionStorage",
        "randomUUID",
    ] {
        assert!(
            PAGE.contains(needle),
            "static/index.html should contain {needle:?}"
        );
    }
}
