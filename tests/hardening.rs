//! Limits on what an outsider can hold open, and the answers to abuse:
//! idle and half-sent requests, connection floods, unfinished frames,
//! oversized WebSocket messages, heart-beats, and the HTTP policy headers.
//! Each test starts its own server with small limits.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use herald::stomp::Command;
use serde_json::{json, Value};

/// Reads from a raw socket until the server closes it; the bytes read, or
/// `None` if it was still open after `within`.
fn closed_within(sock: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).ok()?;
        match sock.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            // A reset is a close too.
            Err(_) => return Some(got),
        }
    }
}

fn tcp(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).expect("connect")
}

fn http_get(port: u16, path: &str, extra: &str) -> String {
    let mut s = tcp(port);
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let got = closed_within(&mut s, Duration::from_secs(5)).expect("answer and close");
    String::from_utf8_lossy(&got).into_owned()
}

fn raw_request(port: u16, method: &str, path: &str, extra: &str) -> String {
    let mut s = tcp(port);
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).expect("write");
    let got = closed_within(&mut s, Duration::from_secs(5)).expect("answer and close");
    String::from_utf8_lossy(&got).into_owned()
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn silent_and_half_sent_requests_are_closed() {
    let s = TestServer::start(&[("HERALD_REQUEST_HEADER_TIMEOUT_MS", "1000")]);
    let mut silent = tcp(s.port());
    let mut half = tcp(s.port());
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).is_some(),
        "a connection that sends nothing stays open"
    );
    assert!(
        closed_within(&mut half, Duration::from_secs(5)).is_some(),
        "a connection that never finishes its headers stays open"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A keep-alive connection idle after its answer is closed too.
    let mut kept = tcp(s.port());
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = closed_within(&mut kept, Duration::from_secs(5)).expect("idle keep-alive closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_flood_of_waiting_connections_cannot_lock_others_out() {
    let s = TestServer::start(&[
        ("HERALD_MAX_WAITING_PER_ADDRESS", "8"),
        ("HERALD_MAX_CONNECTIONS", "64"),
    ]);
    let api = s.api();
    let (a, b) = (api.new_user().await, api.new_user().await);
    let mut flood: Vec<TcpStream> = (0..200).map(|_| tcp(s.port())).collect();
    // The server still answers, and chat still works.
    assert!(http_get(s.port(), "/healthz", "").starts_with("HTTP/1.1 200"));
    let mut rx = s.stomp(&b.token).await;
    rx.subscribe("/user/queue/message", "m", "auto").await;
    api.send_to_user(&a, &b.user_id, "still here").await;
    let m = rx.recv_json_on("m", Duration::from_secs(5)).await;
    assert_eq!(m["content"], "still here");
    // The oldest waiting connections were closed to make room.
    let first = flood.first_mut().unwrap();
    assert!(closed_within(first, Duration::from_secs(2)).is_some());
    let metrics = http_get(s.port(), "/metrics", "");
    let evicted: f64 = metrics
        .lines()
        .find(|l| l.starts_with("herald_tcp_connections_evicted_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(evicted >= 1.0, "no eviction counted:\n{metrics}");
}

#[tokio::test]
async fn connections_over_the_per_address_cap_get_503() {
    let s = TestServer::start(&[("HERALD_MAX_CONNECTIONS_PER_ADDRESS", "3")]);
    // Three keep-alive connections that made a request (so none is waiting
    // and none can be closed to make room).
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = tcp(s.port());
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = c.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    let mut extra = tcp(s.port());
    let got = closed_within(&mut extra, Duration::from_secs(5)).expect("refused at once");
    let resp = String::from_utf8_lossy(&got).into_owned();
    assert_eq!(status(&resp), 503, "{resp}");
    assert_eq!(header(&resp, "retry-after"), Some("1"));
    let body: Value = serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "unavailable");
    drop(held);
    // Places are given back when connections close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while raw_http_status(s.port(), "/healthz") != Some(200) {
        assert!(Instant::now() < deadline, "places not released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_unfinished_frame_is_closed_whatever_the_heart_beats() {
    let s = TestServer::start(&[("HERALD_FRAME_TIMEOUT_MS", "1500")]);
    let user = s.api().new_user().await;
    let auth = format!("Bearer {}", user.token);
    let mut c =
        Stomp::connect_with(s.port(), &[("Authorization", &auth), ("heart-beat", "0,0")]).await;
    let started = Instant::now();
    c.send_bytes(
        b"SEND\ndestination:/topic/public.x\n\nno end".to_vec(),
        false,
    )
    .await;
    let f = c.recv_frame(Duration::from_secs(6)).await;
    assert_eq!(f.command, Command::Error, "{f:?}");
    assert!(
        f.header("message").unwrap().contains("not completed"),
        "{f:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1400));
    // A connection with nothing unfinished stays open.
    let mut idle =
        Stomp::connect_with(s.port(), &[("Authorization", &auth), ("heart-beat", "0,0")]).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    idle.send_frame(&frame(Command::Disconnect, &[("receipt", "r")], ""))
        .await;
    let r = idle.recv_frame(Duration::from_secs(5)).await;
    assert_eq!(r.command, Command::Receipt);
}

#[tokio::test]
async fn unfinished_frames_are_budgeted_per_user() {
    let s = TestServer::start(&[
        ("HERALD_MAX_FRAME_BYTES", "100000"),
        ("HERALD_MAX_CONTENT_BYTES", "50000"),
        ("HERALD_PARTIAL_FRAME_BYTES_PER_USER", "150000"),
    ]);
    let user = s.api().new_user().await;
    let part = |n: usize| {
        let mut v = b"SEND\ndestination:/topic/public.x\n\n".to_vec();
        v.resize(n, b'x');
        v
    };
    let mut first = s.stomp(&user.token).await;
    let mut second = s.stomp(&user.token).await;
    first.send_bytes(part(90_000), false).await;
    second.send_bytes(part(90_000), false).await;
    // Whichever the server read second is over the user's budget.
    let wait = Duration::from_secs(3);
    let (refused, mut kept) = match first.try_recv_frame(wait).await {
        Ok(f) => (f, second),
        Err(_) => (second.recv_frame(wait).await, first),
    };
    assert_eq!(refused.command, Command::Error, "{refused:?}");
    let message = refused.header("message").unwrap_or_default();
    assert!(message.contains("unfinished"), "{refused:?}");
    // The other one finishes its frame and carries on.
    kept.send_bytes(b"\0".to_vec(), false).await;
    kept.send_frame(&frame(Command::Disconnect, &[("receipt", "r")], ""))
        .await;
    let r = kept.recv_frame(Duration::from_secs(5)).await;
    assert_eq!(r.command, Command::Receipt, "{r:?}");
}

#[tokio::test]
async fn an_oversized_websocket_message_gets_an_error_frame() {
    let s = TestServer::start(&[]);
    let user = s.api().new_user().await;
    let mut c = s.stomp(&user.token).await;
    let mut big = b"SEND\ndestination:/topic/public.x\n\n".to_vec();
    big.resize(3 * 1024 * 1024, b'x');
    big.push(0);
    c.send_bytes(big, true).await;
    let f = c.recv_frame(Duration::from_secs(5)).await;
    assert_eq!(f.command, Command::Error, "{f:?}");
    assert!(f.header("message").unwrap().contains("too large"), "{f:?}");
    // The server is fine.
    assert_eq!(raw_http_status(s.port(), "/healthz"), Some(200));
}

#[tokio::test]
async fn anonymous_connections_cannot_make_the_server_buffer() {
    let s = TestServer::start(&[]);
    let mut c = Stomp::open(s.port()).await;
    // 200 KiB of a CONNECT that never ends: refused before the frame limit.
    let mut junk = b"CONNECT\naccept-version:1.2\nx:".to_vec();
    junk.resize(200 * 1024, b'y');
    let _ = c.try_send_bytes(junk, false).await;
    let closed = c.try_recv_frame(Duration::from_secs(5)).await;
    assert!(
        matches!(closed, Err(RecvError::Closed(_))),
        "still open: {closed:?}"
    );
}

#[tokio::test]
async fn heart_beats_honour_the_client_down_to_the_floor() {
    let s = TestServer::start(&[]);
    let user = s.api().new_user().await;
    let auth = format!("Bearer {}", user.token);
    for (asked, expected) in [
        ("1000,1000", "1000,1000"),
        ("10000,10000", "10000,10000"),
        ("100,100", "1000,1000"),
        ("0,0", "0,0"),
    ] {
        let c =
            Stomp::connect_with(s.port(), &[("Authorization", &auth), ("heart-beat", asked)]).await;
        let hb = c.connected.as_ref().and_then(|f| f.header("heart-beat"));
        assert_eq!(hb, Some(expected), "asked {asked}");
    }
}

#[tokio::test]
async fn a_rejected_send_still_gets_its_receipt() {
    let s = TestServer::start(&[]);
    let user = s.api().new_user().await;
    let mut c = s.stomp(&user.token).await;
    c.subscribe("/user/queue/errors", "e", "auto").await;
    for body in [
        "not json".to_string(),
        json!({"toUserId": user.user_id, "messageType": 1, "content": "me",
               "clientMessageId": "self"})
        .to_string(),
    ] {
        c.send_frame(&frame(
            Command::Send,
            &[("destination", "/app/send"), ("receipt", "r1")],
            body,
        ))
        .await;
        let err = c.recv_json_on("e", Duration::from_secs(5)).await;
        let code = err["code"].as_str().unwrap_or_default();
        assert!(["invalid_argument", "forbidden"].contains(&code), "{err}");
        let r = c
            .recv_matching(Duration::from_secs(5), "RECEIPT", |f| {
                f.command == Command::Receipt
            })
            .await;
        assert_eq!(r.header("receipt-id"), Some("r1"));
    }
}

#[test]
fn http_answers_name_methods_and_policies() {
    let s = TestServer::start(&[("HERALD_CORS_ORIGINS", "https://app.example")]);
    let port = s.port();
    let resp = raw_request(port, "PUT", "/api/v1/messages/pull", "");
    assert_eq!(status(&resp), 405, "{resp}");
    assert_eq!(header(&resp, "allow"), Some("GET, HEAD, OPTIONS"));
    let resp = raw_request(port, "DELETE", "/healthz", "");
    assert_eq!(status(&resp), 405, "{resp}");
    assert_eq!(header(&resp, "allow"), Some("GET, HEAD, OPTIONS"));
    // A preflight from an allowed origin.
    let pre = "Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n\
               Access-Control-Request-Headers: authorization, content-type\r\n";
    let resp = raw_request(port, "OPTIONS", "/api/v1/messages", pre);
    assert_eq!(status(&resp), 204, "{resp}");
    assert_eq!(
        header(&resp, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(header(&resp, "access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    // Another origin gets no CORS headers (the browser blocks it).
    let resp = raw_request(
        port,
        "OPTIONS",
        "/api/v1/messages",
        "Origin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n",
    );
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
    // The web client: a strict policy, no framing, no sniffing.
    let resp = http_get(port, "/", "");
    assert_eq!(status(&resp), 200);
    let csp = header(&resp, "content-security-policy").expect("CSP");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&resp, "x-frame-options"), Some("DENY"));
}

#[tokio::test]
async fn a_slow_consumer_is_counted_once() {
    let s = TestServer::start(&[
        ("HERALD_CONNECTION_QUEUE", "2"),
        ("HERALD_SEND_RATE_PER_SEC", "10000"),
        ("HERALD_SEND_BURST", "10000"),
    ]);
    let api = s.api();
    let (a, b) = (api.new_user().await, api.new_user().await);
    // b subscribes and never reads: its socket fills, then its queue.
    let mut slow = s.stomp(&b.token).await;
    slow.subscribe("/user/queue/message", "m", "auto").await;
    let content = "x".repeat(60_000);
    for i in 0..400 {
        let r = api
            .send(&a, &send_req_user(&b.user_id, &content, &format!("c{i}")))
            .await;
        r.expect(202, "send");
    }
    let metrics = api.get("/metrics", None).await.text;
    let count = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(count("herald_slow_consumers_total"), 1.0, "{metrics}");
    assert!(count("herald_dropped_pushes_total") >= 1.0, "{metrics}");
    // And it is closed although it never reads again (its writes block).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = api.get("/metrics", None).await.text;
        let open = text
            .lines()
            .find(|l| l.starts_with("herald_ws_connections "))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok());
        if open == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the slow consumer is still open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(slow);
}
