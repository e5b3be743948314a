//! STOMP 1.2 over WebSocket contract tests against the real server binary.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use herald::stomp::Command;
use serde_json::{json, Value};

static SERVER: OnceLock<TestServer> = OnceLock::new();
static SMALL_FRAMES: OnceLock<TestServer> = OnceLock::new();

/// Heart-beat interval the shared server offers (ms).
const HB_MS: u64 = 1000;

fn server() -> (&'static TestServer, LogGuard) {
    let s = TestServer::shared(&SERVER, &[("HERALD_HEARTBEAT_MS", "1000")]);
    (s, s.log_guard())
}

fn small_frame_server() -> (&'static TestServer, LogGuard) {
    let s = TestServer::shared(
        &SMALL_FRAMES,
        &[
            ("HERALD_MAX_FRAME_BYTES", "8192"),
            ("HERALD_MAX_CONTENT_BYTES", "4096"),
        ],
    );
    (s, s.log_guard())
}

fn parse_hb(v: &str) -> (u64, u64) {
    let mut it = v.split(',').map(|p| p.trim().parse::<u64>());
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b)), None) => (a, b),
        _ => panic!("malformed heart-beat header {v:?}"),
    }
}

fn public_dest() -> String {
    format!("/topic/public.{}", unique("t-").replace('_', "-"))
}

/// A user with one connection subscribed to message, ack and errors queues
/// under the subscription ids "msg", "ack" and "err".
async fn online_user(srv: &TestServer, api: &Api) -> (TestUser, Stomp) {
    let u = api.new_user().await;
    let mut c = srv.stomp(&u.token).await;
    c.subscribe("/user/queue/message", "msg", "auto").await;
    c.subscribe("/user/queue/ack", "ack", "auto").await;
    c.subscribe("/user/queue/errors", "err", "auto").await;
    (u, c)
}

// ---------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------

#[tokio::test]
async fn connect_with_authorization_header() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let mut c = Stomp::open(srv.port()).await;
    let auth = format!("Bearer {}", u.token);
    let f = c.send_connect(&[("Authorization", auth.as_str())]).await;
    assert_eq!(f.command, Command::Connected, "{f:?}");
    assert_eq!(f.header("version"), Some("1.2"));
    assert_eq!(f.header("user-name"), Some(u.user_id.as_str()));
    let server = f.header("server").expect("server header");
    assert!(server.starts_with("herald/"), "server header {server:?}");
    assert!(
        server.len() > "herald/".len(),
        "server header lacks a version"
    );
    assert!(
        f.header("session").is_some_and(|s| !s.is_empty()),
        "session header: {f:?}"
    );
    parse_hb(f.header("heart-beat").expect("heart-beat header"));
    c.disconnect().await;
}

#[tokio::test]
async fn connect_with_passcode_and_stomp_command() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let mut c = Stomp::open(srv.port()).await;
    let f = c
        .send_connect(&[
            ("login", u.username.as_str()),
            ("passcode", u.token.as_str()),
        ])
        .await;
    assert_eq!(f.command, Command::Connected, "{f:?}");
    assert_eq!(f.header("user-name"), Some(u.user_id.as_str()));
    c.disconnect().await;

    // STOMP is a synonym of CONNECT.
    let mut c = Stomp::open(srv.port()).await;
    let f = frame(
        Command::Stomp,
        &[
            ("accept-version", "1.2"),
            ("host", "127.0.0.1"),
            ("passcode", u.token.as_str()),
        ],
        Bytes::new(),
    );
    c.send_frame(&f).await;
    let got = c.recv_frame(WAIT).await;
    assert_eq!(got.command, Command::Connected, "{got:?}");
    assert_eq!(got.header("user-name"), Some(u.user_id.as_str()));
}

#[tokio::test]
async fn connect_negotiates_version() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let auth = format!("Bearer {}", u.token);

    let mut c = Stomp::open(srv.port()).await;
    let f = c
        .send_connect(&[
            ("accept-version", "1.0,1.1,1.2"),
            ("Authorization", auth.as_str()),
        ])
        .await;
    assert_eq!(f.header("version"), Some("1.2"), "{f:?}");

    let mut c = Stomp::open(srv.port()).await;
    let f = c
        .send_connect(&[("accept-version", "1.1"), ("Authorization", auth.as_str())])
        .await;
    assert_eq!(f.command, Command::Connected, "1.1 is accepted: {f:?}");
    assert_eq!(f.header("version"), Some("1.1"));

    let mut c = Stomp::open(srv.port()).await;
    let f = c
        .send_connect(&[("accept-version", "2.0"), ("Authorization", auth.as_str())])
        .await;
    assert_eq!(f.command, Command::Error, "no common version: {f:?}");
    assert!(c.wait_closed(WAIT).await, "connection closes after ERROR");
}

#[tokio::test]
async fn bad_or_missing_token_gets_error_then_close() {
    let (srv, _g) = server();
    for headers in [
        vec![("Authorization", "Bearer not-a-token")],
        vec![("passcode", "not-a-token")],
        vec![],
    ] {
        let mut c = Stomp::open(srv.port()).await;
        let f = c.send_connect(&headers).await;
        assert_eq!(f.command, Command::Error, "{headers:?}: {f:?}");
        assert!(
            f.header("message").is_some_and(|m| !m.is_empty()),
            "ERROR needs a message header: {f:?}"
        );
        assert!(
            c.wait_closed(WAIT).await,
            "{headers:?}: the server must close after the ERROR"
        );
    }
}

#[tokio::test]
async fn frames_before_connect_get_error() {
    let (srv, _g) = server();
    let mut c = Stomp::open(srv.port()).await;
    c.send(
        "/app/send",
        &[("content-type", "application/json")],
        r#"{"toUserId":"1","messageType":1,"content":"x","clientMessageId":"c"}"#,
    )
    .await;
    let f = c.recv_frame(WAIT).await;
    assert_eq!(f.command, Command::Error, "{f:?}");

    let mut c = Stomp::open(srv.port()).await;
    let f = frame(
        Command::Subscribe,
        &[("destination", "/user/queue/message"), ("id", "0")],
        Bytes::new(),
    );
    c.send_frame(&f).await;
    let f = c.recv_frame(WAIT).await;
    assert_eq!(f.command, Command::Error, "{f:?}");
}

#[tokio::test]
async fn websocket_subprotocols_are_negotiated() {
    let (srv, _g) = server();
    for p in ["v12.stomp", "v11.stomp", "v10.stomp"] {
        let c = Stomp::open_with_protocol(srv.port(), p).await;
        assert!(c.is_ok(), "subprotocol {p}: {:?}", c.err());
    }
}

// ---------------------------------------------------------------------------
// /app/send
// ---------------------------------------------------------------------------

#[tokio::test]
async fn send_with_receipt_acks_sender_and_pushes_to_recipient_devices() {
    let (srv, _g) = server();
    let api = srv.api();
    let (a, mut a1) = online_user(srv, &api).await;
    let mut a2 = srv.stomp(&a.token).await;
    a2.subscribe("/user/queue/message", "mine", "auto").await;
    let (b, mut b1) = online_user(srv, &api).await;

    let cmid = unique("c");
    let req = send_req_user(&b.user_id, "hello over stomp", &cmid);
    a1.send_json("/app/send", &req, Some("rcpt-1")).await;
    let r = a1.recv_receipt("rcpt-1", WAIT).await;
    assert_eq!(r.header("receipt-id"), Some("rcpt-1"));
    let ackf = a1.recv_message_on("ack", WAIT).await;
    assert!(
        ackf.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{ackf:?}"
    );
    let ack = body_json(&ackf);
    let mid = assert_send_ack(&ack, &cmid);

    let f = b1.recv_message_on("msg", WAIT).await;
    assert!(
        f.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "content-type: {f:?}"
    );
    assert_eq!(f.header("subscription"), Some("msg"));
    assert_eq!(f.header("message-id"), Some(mid.as_str()));
    assert!(f.header("destination").is_some(), "{f:?}");
    let vo = body_json(&f);
    assert_message_vo(&vo);
    assert_eq!(vo["type"], json!("message"));
    assert_eq!(vo["messageId"].as_str(), Some(mid.as_str()));
    assert_eq!(vo["sessionId"], ack["sessionId"]);
    assert_eq!(vo["seq"], json!(1));
    assert_eq!(vo["status"], json!("pending"));
    assert_eq!(vo["content"], json!("hello over stomp"));
    assert_eq!(vo["senderId"].as_str(), Some(a.user_id.as_str()));
    assert_eq!(vo["clientMessageId"].as_str(), Some(cmid.as_str()));

    // The sender's other device gets the push too.
    let f = a2.recv_message_on("mine", WAIT).await;
    assert_eq!(f.header("message-id"), Some(mid.as_str()));
    let vo = body_json(&f);
    assert_eq!(vo["content"], json!("hello over stomp"));
    assert_eq!(vo["status"], json!("read"), "sender's own copy is read");

    // A repeat is acked with the original id and not pushed again.
    a1.send_json("/app/send", &req, Some("rcpt-2")).await;
    a1.recv_receipt("rcpt-2", WAIT).await;
    let again = a1.recv_json_on("ack", WAIT).await;
    assert_eq!(again["messageId"].as_str(), Some(mid.as_str()));
    b1.expect_no_message_on("msg", Duration::from_millis(500))
        .await;
}

/// STOMP bodies are held to the REST rules (`model::wire`): only JSON
/// strings for ids and texts, and ids without leading zeros.
#[tokio::test]
async fn app_send_takes_only_the_json_types_rest_takes() {
    let (srv, _g) = server();
    let api = srv.api();
    let (_a, mut c) = online_user(srv, &api).await;
    let b = api.new_user().await;
    let b_id: u64 = b.user_id.parse().unwrap();
    let mut as_number = send_req_user(&b.user_id, "x", "c-number");
    as_number["toUserId"] = json!(b_id);
    let padded = send_req_user(&format!("0{}", b.user_id), "x", "c-padded");
    let mut content = send_req_user(&b.user_id, "x", "c-content");
    content["content"] = json!(42);
    for (what, req, words) in [
        ("a numeric toUserId", as_number, ["string", "not a number"]),
        ("a padded toUserId", padded, ["positive", "leading zeros"]),
        ("a numeric content", content, ["content", "string"]),
    ] {
        c.send_json("/app/send", &req, None).await;
        let e = c.recv_json_on("err", WAIT).await;
        assert_eq!(e["code"], json!("invalid_argument"), "{what}: {e}");
        let message = e["message"].as_str().unwrap_or_default();
        for w in words {
            assert!(message.contains(w), "{what}: {w:?} not in {e}");
        }
    }
    let ack = json!({"messageIds": [b_id], "ackType": "read"});
    c.send_json("/app/ack", &ack, None).await;
    let e = c.recv_json_on("err", WAIT).await;
    assert_eq!(
        e["code"],
        json!("invalid_argument"),
        "numeric messageIds: {e}"
    );
    // None of it was sent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(api.sync_all(&b).await.is_empty(), "nothing reached b");
}

#[tokio::test]
async fn rejected_sends_go_to_the_errors_queue_and_connection_survives() {
    let (srv, _g) = server();
    let api = srv.api();
    let (a, mut c) = online_user(srv, &api).await;
    let b = api.new_user().await;
    let other = api.new_user().await;
    let g = api.create_group(&other, &unique("g"), &[]).await;
    let gid = g["groupId"].as_str().unwrap().to_string();

    // Malformed JSON: no clientMessageId can be known.
    c.send(
        "/app/send",
        &[("content-type", "application/json")],
        "{nope",
    )
    .await;
    let e = c.recv_json_on("err", WAIT).await;
    assert_eq!(e["code"], json!("invalid_argument"), "{e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");

    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "missing content",
            json!({"toUserId": b.user_id, "messageType": 1, "clientMessageId": "c-missing"}),
            &["invalid_argument"],
        ),
        (
            "content too large",
            send_req_user(&b.user_id, &"z".repeat(65_537), "c-large"),
            &["payload_too_large"],
        ),
        (
            "group one is not in",
            send_req_group(&gid, "hi", "c-nonmember"),
            &["forbidden"],
        ),
        (
            "to oneself",
            send_req_user(&a.user_id, "me", "c-self"),
            &["forbidden", "invalid_argument"],
        ),
        (
            "unknown user",
            send_req_user("1", "nobody", "c-unknown"),
            &["not_found"],
        ),
    ];
    for (what, req, codes) in &cases {
        c.send_json("/app/send", req, None).await;
        let e = c.recv_json_on("err", WAIT).await;
        assert!(
            e["code"].as_str().is_some_and(|code| codes.contains(&code)),
            "{what}: code must be one of {codes:?}: {e}"
        );
        assert_eq!(e["clientMessageId"], req["clientMessageId"], "{what}: {e}");
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {e}"
        );
    }
    assert!(
        c.queued().iter().all(|f| f.command != Command::Error),
        "no ERROR frame for rejected sends: {:?}",
        c.queued()
    );

    // Still usable.
    let cmid = unique("c");
    let ack = c
        .send_message(&send_req_user(&b.user_id, "still fine", &cmid), "ack")
        .await;
    let mid = assert_send_ack(&ack, &cmid);
    api.wait_visible(&b, &mid).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let list = api.sync_all(&b).await;
    assert_eq!(list.len(), 1, "only the valid message was stored: {list:?}");
}

// ---------------------------------------------------------------------------
// SUBSCRIBE destinations
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unknown_destinations_get_error() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    for dest in [
        "/queue/anything",
        "/user/queue/nope",
        "/topic/other",
        "/topic/public.a*b",
        "/topic/public.",
        "/app/send",
    ] {
        let mut c = srv.stomp(&u.token).await;
        let f = c.subscribe_frame(dest, "s1", "auto").await;
        assert_eq!(f.command, Command::Error, "SUBSCRIBE {dest}: {f:?}");
        assert!(f.header("message").is_some(), "{f:?}");
        assert!(
            f.header("receipt-id").is_some(),
            "ERROR for a frame with a receipt header should carry receipt-id: {f:?}"
        );
        assert!(
            c.wait_closed(WAIT).await,
            "STOMP 1.2: the server closes the connection after an ERROR"
        );
    }
}

#[tokio::test]
async fn public_topic_broadcast_preserves_headers_and_body() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let idle = api.new_user().await;
    let dest = public_dest();
    let mut ca = srv.stomp(&a.token).await;
    let mut cb = srv.stomp(&b.token).await;
    let mut cidle = srv.stomp(&idle.token).await;
    ca.subscribe(&dest, "pub-a", "auto").await;
    cb.subscribe(&dest, "pub-b", "auto").await;

    let escaped = "colon:here\\back\nline";
    ca.send(
        &dest,
        &[
            ("content-type", "text/plain;charset=utf-8"),
            ("x-custom", "hello world"),
            ("x-escaped", escaped),
        ],
        "typing…",
    )
    .await;
    let mut ids = Vec::new();
    for (c, sub) in [(&mut ca, "pub-a"), (&mut cb, "pub-b")] {
        let f = c.recv_message_on(sub, WAIT).await;
        assert_eq!(f.body_str(), Some("typing…"));
        assert_eq!(f.header("x-custom"), Some("hello world"), "{f:?}");
        assert_eq!(f.header("x-escaped"), Some(escaped), "{f:?}");
        assert_eq!(f.header("content-type"), Some("text/plain;charset=utf-8"));
        assert_eq!(f.header("destination"), Some(dest.as_str()));
        assert_eq!(f.header("subscription"), Some(sub));
        ids.push(f.header("message-id").expect("message-id").to_string());
    }

    // Binary body with NUL bytes, via content-length.
    let body: Vec<u8> = vec![0, 1, 2, 0, 0xff, b'\n', 0, b'x', 0];
    ca.send(
        &dest,
        &[("content-type", "application/octet-stream")],
        body.clone(),
    )
    .await;
    for (c, sub) in [(&mut ca, "pub-a"), (&mut cb, "pub-b")] {
        let f = c.recv_message_on(sub, WAIT).await;
        assert_eq!(&f.body[..], &body[..], "binary body altered");
        assert_eq!(f.header("content-type"), Some("application/octet-stream"));
        ids.push(f.header("message-id").expect("message-id").to_string());
    }
    // A fresh message-id per message.
    assert_ne!(ids[0], ids[2], "each broadcast needs a new message-id");
    cidle.expect_no_frame(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn session_topics_are_for_members_only() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(3).await;
    let (a, b, stranger) = (&users[0], &users[1], &users[2]);
    let k = api.send_to_user(a, &b.user_id, "hi").await;
    let sid = k["sessionId"].as_str().unwrap();
    let dest = format!("/topic/session.{sid}.typing");

    let mut ca = srv.stomp(&a.token).await;
    ca.subscribe(&dest, "typ", "auto").await;
    let mut cb = srv.stomp(&b.token).await;
    cb.send(
        &dest,
        &[("content-type", "application/json")],
        r#"{"typing":true}"#,
    )
    .await;
    let f = ca.recv_message_on("typ", WAIT).await;
    assert_eq!(f.body_str(), Some(r#"{"typing":true}"#));

    let mut cs = srv.stomp(&stranger.token).await;
    let f = cs.subscribe_frame(&dest, "spy", "auto").await;
    assert_eq!(f.command, Command::Error, "non-member SUBSCRIBE: {f:?}");

    let mut cs = srv.stomp(&stranger.token).await;
    cs.send(&dest, &[("receipt", "spy-send")], r#"{"typing":true}"#)
        .await;
    let f = cs
        .recv_matching(WAIT, "ERROR or RECEIPT", |f| {
            matches!(f.command, Command::Error | Command::Receipt)
        })
        .await;
    assert_eq!(f.command, Command::Error, "non-member SEND: {f:?}");
    ca.expect_no_message_on("typ", Duration::from_millis(300))
        .await;

    // Group sessions too.
    let g = api.create_group(a, &unique("g"), &[b]).await;
    let gdest = format!("/topic/session.{}.typing", g["sessionId"].as_str().unwrap());
    cb.subscribe(&gdest, "gtyp", "auto").await;
    ca.send(&gdest, &[], "g-typing").await;
    let f = cb.recv_message_on("gtyp", WAIT).await;
    assert_eq!(f.body_str(), Some("g-typing"));
    let mut cs = srv.stomp(&stranger.token).await;
    let f = cs.subscribe_frame(&gdest, "spy", "auto").await;
    assert_eq!(
        f.command,
        Command::Error,
        "non-member group SUBSCRIBE: {f:?}"
    );
}

// ---------------------------------------------------------------------------
// framing over WebSocket
// ---------------------------------------------------------------------------

#[tokio::test]
async fn several_frames_in_one_websocket_message() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let dest = public_dest();

    // CONNECT and SUBSCRIBE in one message.
    let mut c = Stomp::open(srv.port()).await;
    let auth = format!("Bearer {}", u.token);
    let mut bytes = encode(&frame(
        Command::Connect,
        &[
            ("accept-version", "1.2"),
            ("host", "x"),
            ("heart-beat", "0,0"),
            ("Authorization", auth.as_str()),
        ],
        Bytes::new(),
    ));
    bytes.extend(encode(&frame(
        Command::Subscribe,
        &[
            ("destination", dest.as_str()),
            ("id", "p"),
            ("receipt", "sub"),
        ],
        Bytes::new(),
    )));
    c.send_bytes(bytes, false).await;
    let f = c.recv_frame(WAIT).await;
    assert_eq!(f.command, Command::Connected, "{f:?}");
    c.recv_receipt("sub", WAIT).await;

    // Three SENDs (with heart-beat EOLs between them) in one message.
    let mut bytes = Vec::new();
    for i in 0..3 {
        let r = format!("s{i}");
        bytes.extend(encode(&frame(
            Command::Send,
            &[("destination", dest.as_str()), ("receipt", r.as_str())],
            format!("body-{i}"),
        )));
        bytes.extend_from_slice(b"\n\r\n");
    }
    c.send_bytes(bytes, false).await;
    for i in 0..3 {
        c.recv_receipt(&format!("s{i}"), WAIT).await;
    }
    for i in 0..3 {
        let f = c.recv_message_on("p", WAIT).await;
        assert_eq!(f.body_str(), Some(format!("body-{i}").as_str()));
    }
}

#[tokio::test]
async fn one_frame_split_across_websocket_messages() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let dest = public_dest();
    let mut c = srv.stomp(&u.token).await;
    c.subscribe(&dest, "p", "auto").await;

    let body: String = (0..5000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let bytes = encode(&frame(
        Command::Send,
        &[("destination", dest.as_str()), ("receipt", "split")],
        body.clone(),
    ));
    // Split inside the command, inside a header, and inside the body.
    let cuts = [2, 20, 700, bytes.len() - 1];
    let mut start = 0;
    for cut in cuts {
        c.send_bytes(bytes[start..cut].to_vec(), false).await;
        start = cut;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.expect_no_frame(Duration::from_millis(200)).await;
    c.send_bytes(bytes[start..].to_vec(), false).await;
    c.recv_receipt("split", WAIT).await;
    let f = c.recv_message_on("p", WAIT).await;
    assert_eq!(f.body.len(), 5000);
    assert_eq!(f.body_str(), Some(body.as_str()));

    // A JSON /app/send split in two also works.
    let (_a, mut ca) = online_user(srv, &api).await;
    let b = api.new_user().await;
    let cmid = unique("c");
    let req = serde_json::to_vec(&send_req_user(&b.user_id, "split send", &cmid)).unwrap();
    let bytes = encode(&frame(
        Command::Send,
        &[
            ("destination", "/app/send"),
            ("content-type", "application/json"),
            ("receipt", "r-split"),
        ],
        req,
    ));
    let mid = bytes.len() / 2;
    ca.send_bytes(bytes[..mid].to_vec(), false).await;
    ca.send_bytes(bytes[mid..].to_vec(), false).await;
    ca.recv_receipt("r-split", WAIT).await;
    let ack = ca.recv_json_on("ack", WAIT).await;
    assert_send_ack(&ack, &cmid);
}

#[tokio::test]
async fn binary_websocket_messages_are_answered_in_binary() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let mut c = Stomp::open(srv.port()).await;
    c.binary = true;
    let auth = format!("Bearer {}", u.token);
    let f = c.send_connect(&[("Authorization", auth.as_str())]).await;
    assert_eq!(f.command, Command::Connected);
    assert_eq!(
        c.last_rx_binary,
        Some(true),
        "CONNECTED must come in binary"
    );
    let dest = public_dest();
    c.subscribe(&dest, "p", "auto").await;
    assert_eq!(c.last_rx_binary, Some(true), "RECEIPT must come in binary");
    c.send(&dest, &[], "bin").await;
    let f = c.recv_message_on("p", WAIT).await;
    assert_eq!(f.body_str(), Some("bin"));
    assert_eq!(c.last_rx_binary, Some(true), "MESSAGE must come in binary");

    // Switching back to text switches the answers too.
    c.binary = false;
    c.send(&dest, &[("receipt", "t")], "txt").await;
    c.recv_receipt("t", WAIT).await;
    let f = c.recv_message_on("p", WAIT).await;
    assert_eq!(f.body_str(), Some("txt"));
    assert_eq!(
        c.last_rx_binary,
        Some(false),
        "answers follow the client's last type"
    );
}

#[tokio::test]
async fn oversized_frame_gets_error_and_close() {
    let (srv, _g) = small_frame_server();
    let api = srv.api();
    let u = api.new_user().await;
    let dest = public_dest();

    // Under the limit: fine.
    let mut c = srv.stomp(&u.token).await;
    c.subscribe(&dest, "p", "auto").await;
    c.send(&dest, &[], "a".repeat(7000)).await;
    let f = c.recv_message_on("p", WAIT).await;
    assert_eq!(f.body.len(), 7000);

    // Over it in one message.
    c.send(&dest, &[], "b".repeat(10_000)).await;
    let f = c.recv_error(WAIT).await;
    assert!(f.header("message").is_some(), "{f:?}");
    assert!(
        c.wait_closed(WAIT).await,
        "must close after oversized frame"
    );

    // Over it, streamed in small pieces without ever finishing the frame.
    let mut c = srv.stomp(&u.token).await;
    let head = format!("SEND\ndestination:{dest}\n\n").into_bytes();
    c.send_bytes(head, false).await;
    let mut closed = false;
    for _ in 0..20 {
        if c.try_send_bytes(vec![b'c'; 1000], false).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got_error = c
        .try_recv_matching(WAIT, |f| f.command == Command::Error)
        .await
        .is_ok();
    assert!(
        got_error || closed,
        "a frame growing past the limit must be refused"
    );
    assert!(got_error, "an ERROR frame must precede the close");
    assert!(
        c.wait_closed(WAIT).await,
        "must close after oversized frame"
    );

    // The server is fine afterwards.
    let mut c = srv.stomp(&u.token).await;
    c.subscribe(&dest, "p2", "auto").await;
}

// ---------------------------------------------------------------------------
// heart-beats
// ---------------------------------------------------------------------------

#[tokio::test]
async fn heart_beats_are_negotiated_and_sent() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let auth = format!("Bearer {}", u.token);
    let mut c = Stomp::open(srv.port()).await;
    let f = c
        .send_connect(&[
            ("Authorization", auth.as_str()),
            ("heart-beat", "1000,1000"),
        ])
        .await;
    assert_eq!(f.command, Command::Connected);
    let (sx, sy) = parse_hb(f.header("heart-beat").unwrap());
    assert!(
        sx > 0 && sy > 0,
        "server configured with {HB_MS} ms offers heart-beats: {sx},{sy}"
    );
    assert!(sx <= 60_000 && sy <= 60_000, "sensible values: {sx},{sy}");
    let send_every = sx.max(1000); // server -> client
    let expect_every = sy.max(1000); // client -> server
    assert!(
        send_every <= 2_000 && expect_every <= 2_000,
        "with heartbeat_ms={HB_MS} the agreed intervals should be about 1 s: {sx},{sy}"
    );

    let start = Instant::now();
    let window = Duration::from_millis(send_every * 4 + 500);
    while start.elapsed() < window {
        c.send_heartbeat().await;
        c.pump(Duration::from_millis(expect_every / 3)).await;
    }
    assert!(
        c.closed.is_none(),
        "closed although we sent heart-beats: {:?}",
        c.closed
    );
    let beats: Vec<Instant> = c
        .heartbeats
        .iter()
        .copied()
        .filter(|t| *t >= start)
        .collect();
    assert!(
        beats.len() >= 3,
        "expected ~4 heart-beats in {window:?} at {send_every} ms, got {}",
        beats.len()
    );
    assert!(
        beats.len() <= 12,
        "too many heart-beats ({}) for a {send_every} ms interval",
        beats.len()
    );
    let max_gap = beats
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        max_gap <= Duration::from_millis(send_every * 2),
        "gap of {max_gap:?} between heart-beats (interval {send_every} ms)"
    );
    c.disconnect().await;

    // heart-beat 0,0: none at all.
    let mut quiet = srv.stomp(&u.token).await;
    quiet.pump(Duration::from_millis(2_500)).await;
    assert!(
        quiet.heartbeats.is_empty(),
        "no heart-beats may be sent to a client that asked for none"
    );
    assert!(quiet.closed.is_none(), "a 0,0 client is never timed out");
}

#[tokio::test]
async fn silent_client_is_disconnected_after_twice_the_interval() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let auth = format!("Bearer {}", u.token);
    let mut c = Stomp::open(srv.port()).await;
    let f = c
        .send_connect(&[
            ("Authorization", auth.as_str()),
            ("heart-beat", "1000,1000"),
        ])
        .await;
    let start = Instant::now();
    assert_eq!(f.command, Command::Connected);
    let (_sx, sy) = parse_hb(f.header("heart-beat").unwrap());
    assert!(sy > 0, "server must ask for client heart-beats: {f:?}");
    let interval = Duration::from_millis(sy.max(1000));
    let closed = c
        .wait_closed(interval * 2 + Duration::from_millis(2_500))
        .await;
    let at = start.elapsed();
    assert!(
        closed,
        "a silent client must be disconnected (waited {at:?})"
    );
    assert!(
        at >= interval * 3 / 2,
        "disconnected after {at:?}, before twice the interval {interval:?}"
    );
}

// ---------------------------------------------------------------------------
// UNSUBSCRIBE, DISCONNECT
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unsubscribe_stops_pushes() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "m", "auto").await;
    let dest = public_dest();
    cb.subscribe(&dest, "p", "auto").await;

    api.send_to_user(&a, &b.user_id, "one").await;
    let v = cb.recv_json_on("m", WAIT).await;
    assert_eq!(v["content"], json!("one"));
    cb.unsubscribe("m").await;
    let two = api.send_to_user(&a, &b.user_id, "two").await;
    cb.expect_no_message_on("m", Duration::from_millis(700))
        .await;

    let mut ca = srv.stomp(&a.token).await;
    ca.send(&dest, &[], "p1").await;
    cb.recv_message_on("p", WAIT).await;
    cb.unsubscribe("p").await;
    // Unsubscribing twice, or an id never subscribed, is answered (its
    // RECEIPT) without an ERROR: the connection stays.
    cb.unsubscribe("p").await;
    cb.unsubscribe("never-subscribed").await;
    ca.send(&dest, &[("receipt", "p2")], "p2").await;
    ca.recv_receipt("p2", WAIT).await;
    cb.expect_no_message_on("p", Duration::from_millis(500))
        .await;

    // The message sent meanwhile is not lost: it is still in the inbox.
    let list = api
        .wait_visible(&b, two["messageId"].as_str().unwrap())
        .await;
    assert_eq!(contents_of(&list), vec!["one", "two"]);
}

fn contents_of(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn disconnect_with_receipt() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let mut c = srv.stomp(&u.token).await;
    c.send_frame(&frame(
        Command::Disconnect,
        &[("receipt", "bye-77")],
        Bytes::new(),
    ))
    .await;
    let f = c.recv_frame(WAIT).await;
    assert_eq!(f.command, Command::Receipt, "{f:?}");
    assert_eq!(f.header("receipt-id"), Some("bye-77"));
    assert!(c.wait_closed(WAIT).await, "server closes after DISCONNECT");
}

#[tokio::test]
async fn receipts_for_any_frame() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let mut c = srv.stomp(&u.token).await;
    for (cmd, extra) in [
        (Command::Begin, vec![("transaction", "tx-r")]),
        (Command::Abort, vec![("transaction", "tx-r")]),
    ] {
        let mut headers = extra.clone();
        headers.push(("receipt", "rr"));
        c.send_frame(&frame(cmd, &headers, Bytes::new())).await;
        c.recv_receipt("rr", WAIT).await;
    }
}

// ---------------------------------------------------------------------------
// transactions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn transactions_apply_sends_at_commit_only() {
    let (srv, _g) = server();
    let api = srv.api();
    let (_a, mut ca) = online_user(srv, &api).await;
    let (b, mut cb) = online_user(srv, &api).await;

    ca.send_frame(&frame(
        Command::Begin,
        &[("transaction", "tx1")],
        Bytes::new(),
    ))
    .await;
    let cm1 = unique("t");
    let cm2 = unique("t");
    for (cmid, text) in [(&cm1, "t1"), (&cm2, "t2")] {
        let body = serde_json::to_vec(&send_req_user(&b.user_id, text, cmid)).unwrap();
        ca.send(
            "/app/send",
            &[("content-type", "application/json"), ("transaction", "tx1")],
            body,
        )
        .await;
    }
    cb.expect_no_message_on("msg", Duration::from_millis(600))
        .await;
    ca.expect_no_message_on("ack", Duration::from_millis(10))
        .await;
    assert!(
        api.sync_all(&b).await.is_empty(),
        "nothing stored before COMMIT"
    );

    ca.send_frame(&frame(
        Command::Commit,
        &[("transaction", "tx1"), ("receipt", "c1")],
        Bytes::new(),
    ))
    .await;
    ca.recv_receipt("c1", WAIT).await;
    let m1 = cb.recv_json_on("msg", WAIT).await;
    let m2 = cb.recv_json_on("msg", WAIT).await;
    assert_eq!(
        (m1["content"].clone(), m2["content"].clone()),
        (json!("t1"), json!("t2"))
    );
    assert_eq!(m2["seq"].as_i64(), m1["seq"].as_i64().map(|s| s + 1));
    let k1 = ca.recv_json_on("ack", WAIT).await;
    let k2 = ca.recv_json_on("ack", WAIT).await;
    assert_eq!(k1["clientMessageId"].as_str(), Some(cm1.as_str()));
    assert_eq!(k2["clientMessageId"].as_str(), Some(cm2.as_str()));

    // ABORT discards.
    ca.send_frame(&frame(
        Command::Begin,
        &[("transaction", "tx2")],
        Bytes::new(),
    ))
    .await;
    let body = serde_json::to_vec(&send_req_user(&b.user_id, "t3", &unique("t"))).unwrap();
    ca.send(
        "/app/send",
        &[("content-type", "application/json"), ("transaction", "tx2")],
        body,
    )
    .await;
    ca.send_frame(&frame(
        Command::Abort,
        &[("transaction", "tx2"), ("receipt", "a2")],
        Bytes::new(),
    ))
    .await;
    ca.recv_receipt("a2", WAIT).await;
    cb.expect_no_message_on("msg", Duration::from_millis(600))
        .await;
    ca.expect_no_message_on("ack", Duration::from_millis(10))
        .await;

    // A connection ending inside a transaction discards it too.
    ca.send_frame(&frame(
        Command::Begin,
        &[("transaction", "tx3")],
        Bytes::new(),
    ))
    .await;
    let body = serde_json::to_vec(&send_req_user(&b.user_id, "t4", &unique("t"))).unwrap();
    ca.send(
        "/app/send",
        &[("content-type", "application/json"), ("transaction", "tx3")],
        body,
    )
    .await;
    ca.close().await;
    cb.expect_no_message_on("msg", Duration::from_millis(600))
        .await;
    let list = api.sync_all(&b).await;
    assert_eq!(contents_of(&list), vec!["t1", "t2"]);
}

#[tokio::test]
async fn transactions_on_public_topics() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let dest = public_dest();
    let mut c = srv.stomp(&u.token).await;
    c.subscribe(&dest, "p", "auto").await;
    c.send_frame(&frame(
        Command::Begin,
        &[("transaction", "x")],
        Bytes::new(),
    ))
    .await;
    c.send(&dest, &[("transaction", "x")], "in-tx").await;
    c.expect_no_message_on("p", Duration::from_millis(400))
        .await;
    c.send_frame(&frame(
        Command::Commit,
        &[("transaction", "x")],
        Bytes::new(),
    ))
    .await;
    let f = c.recv_message_on("p", WAIT).await;
    assert_eq!(f.body_str(), Some("in-tx"));
}

// ---------------------------------------------------------------------------
// ACK / NACK
// ---------------------------------------------------------------------------

async fn status_of(api: &Api, u: &TestUser, mid: &str) -> String {
    api.sync_all(u)
        .await
        .iter()
        .find(|m| m["messageId"].as_str() == Some(mid))
        .map(|m| m["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("message {mid} not in the inbox"))
}

async fn wait_status(api: &Api, u: &TestUser, mid: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status_of(api, u, mid).await;
        if s == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status of {mid} stayed {s:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ack_and_nack_frames_on_client_individual() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "ci", "client-individual")
        .await;

    let k = api.send_to_user(&a, &b.user_id, "please ack").await;
    let mid = k["messageId"].as_str().unwrap().to_string();
    let f = cb.recv_message_on("ci", WAIT).await;
    assert_eq!(f.header("message-id"), Some(mid.as_str()));
    let ack_id = f
        .header("ack")
        .expect("client-individual MESSAGE has an ack header");
    // Not acked yet: still pending.
    assert_eq!(status_of(&api, &b, &mid).await, "pending");

    // NACK: redelivered at once (the ack timeout here is the default 10 s).
    let nacked = Instant::now();
    cb.send_frame(&frame(Command::Nack, &[("id", ack_id)], Bytes::new()))
        .await;
    let f = cb.recv_message_on("ci", Duration::from_secs(3)).await;
    assert!(nacked.elapsed() < Duration::from_secs(3));
    assert_eq!(
        f.header("message-id"),
        Some(mid.as_str()),
        "same message-id"
    );
    let ack_id = f.header("ack").expect("ack header").to_string();

    cb.send_frame(&frame(
        Command::Ack,
        &[("id", ack_id.as_str()), ("receipt", "acked")],
        Bytes::new(),
    ))
    .await;
    cb.recv_receipt("acked", WAIT).await;
    wait_status(&api, &b, &mid, "delivered").await;
}

#[tokio::test]
async fn app_ack_by_ids_and_by_session() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "ci", "client-individual")
        .await;

    let k1 = api.send_to_user(&a, &b.user_id, "one").await;
    let k2 = api.send_to_user(&a, &b.user_id, "two").await;
    let k3 = api.send_to_user(&a, &b.user_id, "three").await;
    for _ in 0..3 {
        cb.recv_message_on("ci", WAIT).await;
    }
    let m1 = k1["messageId"].as_str().unwrap();
    cb.send_json(
        "/app/ack",
        &json!({"messageIds": [m1], "ackType": "received"}),
        Some("ack1"),
    )
    .await;
    cb.recv_receipt("ack1", WAIT).await;
    wait_status(&api, &b, m1, "delivered").await;
    assert_eq!(
        status_of(&api, &b, k2["messageId"].as_str().unwrap()).await,
        "pending"
    );

    cb.send_json(
        "/app/ack",
        &json!({"sessionId": k1["sessionId"], "upToSeq": 2, "ackType": "read"}),
        Some("ack2"),
    )
    .await;
    cb.recv_receipt("ack2", WAIT).await;
    wait_status(&api, &b, m1, "read").await;
    wait_status(&api, &b, k2["messageId"].as_str().unwrap(), "read").await;
    let m3 = k3["messageId"].as_str().unwrap();
    assert_eq!(status_of(&api, &b, m3).await, "pending");
}

#[tokio::test]
async fn malformed_frames_get_error_and_close() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown command", b"HELLO\nx:y\n\nbody\0".to_vec()),
        ("SEND without destination", b"SEND\nx:y\n\nbody\0".to_vec()),
        (
            "SUBSCRIBE without id",
            b"SUBSCRIBE\ndestination:/user/queue/message\n\n\0".to_vec(),
        ),
        (
            "content-length mismatch",
            b"SEND\ndestination:/topic/public.x\ncontent-length:2\n\nabcdef\0".to_vec(),
        ),
        (
            "bad header escape",
            b"SEND\ndestination:/topic/public.x\nx:a\\qb\n\n\0".to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        let mut c = srv.stomp(&u.token).await;
        c.send_bytes(bytes, false).await;
        let f = c.recv_error(WAIT).await;
        assert!(f.header("message").is_some(), "{what}: {f:?}");
        assert!(c.wait_closed(WAIT).await, "{what}: must close after ERROR");
    }
    // A BEGIN twice / COMMIT of an unknown transaction are protocol errors too.
    let mut c = srv.stomp(&u.token).await;
    c.send_frame(&frame(
        Command::Commit,
        &[("transaction", "nope")],
        Bytes::new(),
    ))
    .await;
    c.recv_error(WAIT).await;
}

#[tokio::test]
async fn max_size_content_is_delivered_intact_over_stomp() {
    let (srv, _g) = server();
    let api = srv.api();
    let (_a, mut ca) = online_user(srv, &api).await;
    let (b, mut cb) = online_user(srv, &api).await;
    // 65 536 bytes with multi-byte characters and JSON-escaped ones.
    let mut content = String::new();
    while content.len() < 65_536 - 8 {
        content.push_str("é\"\\\n<>");
    }
    while content.len() < 65_536 {
        content.push('x');
    }
    assert_eq!(content.len(), 65_536);
    let cmid = unique("big");
    let ack = ca
        .send_message(&send_req_user(&b.user_id, &content, &cmid), "ack")
        .await;
    assert_send_ack(&ack, &cmid);
    let v = cb.recv_json_on("msg", WAIT).await;
    assert_eq!(v["content"].as_str().map(str::len), Some(65_536));
    assert_eq!(v["content"].as_str(), Some(content.as_str()));
}

static RATE_LIMITED: OnceLock<TestServer> = OnceLock::new();

#[tokio::test]
async fn rate_limited_sends_go_to_the_errors_queue() {
    let srv = TestServer::shared(
        &RATE_LIMITED,
        &[
            ("HERALD_SEND_RATE_PER_SEC", "1"),
            ("HERALD_SEND_BURST", "2"),
        ],
    );
    let _g = srv.log_guard();
    let api = srv.api();
    let (_a, mut ca) = online_user(srv, &api).await;
    let b = api.new_user().await;
    // One at a time until one is refused: the burst (2) passes, and no more
    // than the bucket refilled (1/s) while they were answered.
    let started = Instant::now();
    let mut accepted = 0;
    loop {
        let cmid = unique("rl");
        let req = send_req_user(&b.user_id, "burst", &cmid);
        ca.send_json("/app/send", &req, None).await;
        let answer = ca
            .recv_matching(WAIT, "SendAck or error", |f| {
                f.command == Command::Message
                    && matches!(f.header("subscription"), Some("ack" | "err"))
            })
            .await;
        if answer.header("subscription") == Some("err") {
            let e = body_json(&answer);
            assert_eq!(e["code"], json!("rate_limited"), "{e}");
            assert_eq!(e["clientMessageId"].as_str(), Some(cmid.as_str()));
            break;
        }
        assert_send_ack(&body_json(&answer), &cmid);
        accepted += 1;
        assert_within_refill(accepted, 2, started);
    }
    assert!(accepted >= 2, "the burst of 2 passes; only {accepted} did");
    // Still connected and usable once the bucket refills.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let cmid = unique("ok");
    let ack = ca
        .send_message(&send_req_user(&b.user_id, "later", &cmid), "ack")
        .await;
    assert_send_ack(&ack, &cmid);
}

#[tokio::test]
async fn client_without_heart_beats_is_not_timed_out() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    let auth = format!("Bearer {}", u.token);
    let mut c = Stomp::open(srv.port()).await;
    // cx = 0: the client promises no heart-beats; it wants them every 1 s.
    let f = c
        .send_connect(&[("Authorization", auth.as_str()), ("heart-beat", "0,1000")])
        .await;
    assert_eq!(f.command, Command::Connected);
    c.pump(Duration::from_millis(3_200)).await;
    assert!(
        c.closed.is_none(),
        "closed a client that promised no heart-beats: {:?}",
        c.closed
    );
    assert!(
        c.heartbeats.len() >= 2,
        "asked for heart-beats every second, got {} in 3.2 s",
        c.heartbeats.len()
    );
    let dest = public_dest();
    c.subscribe(&dest, "p", "auto").await;
}
