//! Stopping: on SIGTERM the server answers the sends it read, closes every
//! STOMP connection with 1001 (going away) so clients know to reconnect,
//! exits cleanly and leaves its WALs empty; a client that sends again what
//! was not confirmed gets each message exactly once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use herald::stomp::Command;

/// Sends written without waiting, right before the SIGTERM.
const BURST: usize = 200;
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

fn server() -> TestServer {
    TestServer::start(&[
        ("HERALD_SEND_RATE_PER_SEC", "100000"),
        ("HERALD_SEND_BURST", "100000"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_what_was_read_closes_with_going_away_and_empties_the_wals() {
    let mut srv = server();
    let _log = srv.log_guard();
    let api = srv.api();
    let (alice, bob) = (api.new_user().await, api.new_user().await);
    let mut sender = srv.stomp(&alice.token).await;
    sender.subscribe("/user/queue/ack", "ack", "auto").await;
    let mut receiver = srv.stomp(&bob.token).await;
    receiver.subscribe("/user/queue/message", "m", "auto").await;
    let before = send_req_user(&bob.user_id, "before", &unique("c"));
    let before_id = assert_send_ack(
        &sender.send_message(&before, "ack").await,
        &cmid_of(&before),
    );

    let burst: Vec<_> = (0..BURST)
        .map(|i| send_req_user(&bob.user_id, &format!("burst {i}"), &format!("burst-{i}")))
        .collect();
    for req in &burst {
        sender.send_json("/app/send", req, None).await;
    }
    srv.terminate();

    for (who, client) in [("sender", &mut sender), ("receiver", &mut receiver)] {
        assert!(
            client.wait_closed(CLOSE_WITHIN).await,
            "the {who}'s connection stayed open"
        );
        let close = client.close_frame.as_ref().map(|(c, r)| (*c, r.as_str()));
        assert_eq!(
            close,
            Some((1001, "server shutting down")),
            "the {who}'s close frame"
        );
    }
    let status = srv.wait_for_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "a SIGTERMed server exits cleanly: {status}"
    );
    let wal = "herald.db-wal";
    let len = std::fs::metadata(srv.data_dir().join(wal)).map_or(0, |m| m.len());
    assert_eq!(len, 0, "{wal} was left with {len} bytes");
    // The topic logs saved where their consumers got to.
    for (topic, group) in [("session", "inbox-writer"), ("ack", "ack-cycle")] {
        let offsets = srv.data_dir().join("topics").join(topic).join("offsets");
        let saved = std::fs::read_to_string(&offsets).unwrap_or_default();
        assert!(
            saved.starts_with(&format!("{group} ")),
            "{} holds {saved:?}",
            offsets.display()
        );
    }

    // What the sender saw confirmed before the close.
    let mut confirmed = HashMap::new();
    for f in sender.drain_queue() {
        assert_eq!(f.command, Command::Message, "unexpected frame {f:?}");
        let ack = body_json(&f);
        let cmid = ack["clientMessageId"].as_str().expect("cmid").to_string();
        let id = assert_send_ack(&ack, &cmid);
        assert!(
            confirmed.insert(cmid, id).is_none(),
            "two SendAcks for one send"
        );
    }
    eprintln!(
        "{} of {BURST} burst sends confirmed before the close",
        confirmed.len()
    );

    // After a restart the client sends again whatever was not confirmed
    // (and, harmlessly, what was): each send exists once, under the id its
    // SendAck gave.
    srv.restart();
    let api = srv.api();
    for req in &burst {
        let cmid = cmid_of(req);
        let ack = api
            .send(&alice, req)
            .await
            .expect(202, "send again")
            .clone();
        let id = assert_send_ack(&ack, &cmid);
        if let Some(first) = confirmed.get(&cmid) {
            assert_eq!(&id, first, "{cmid} was confirmed under another id");
        }
    }
    let inbox = api.sync_all(&bob).await;
    let mut contents: Vec<&str> = inbox.iter().filter_map(|m| m["content"].as_str()).collect();
    contents.sort_unstable();
    contents.dedup();
    assert_eq!(
        inbox.len(),
        BURST + 1,
        "each send once in the recipient's inbox"
    );
    assert_eq!(contents.len(), BURST + 1, "no send twice");
    assert!(inbox
        .iter()
        .any(|m| m["messageId"].as_str() == Some(before_id.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_cuts_the_stop_short() {
    let mut srv = server();
    let _log = srv.log_guard();
    let alice = srv.api().new_user().await;
    // Never read again: the server waits (1 s) for this client to answer
    // its close frame, so the first stop lasts at least that long.
    let _silent = srv.stomp(&alice.token).await;
    srv.terminate();
    let deadline = std::time::Instant::now() + CLOSE_WITHIN;
    while !srv.log_tail(50).contains("stopping: closing connections") {
        assert!(
            std::time::Instant::now() < deadline,
            "the first SIGTERM was not seen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.terminate();
    let status = srv.wait_for_exit(Duration::from_secs(20)).await;
    assert_eq!(
        status.code(),
        Some(herald::app::SECOND_SIGNAL_EXIT),
        "the second SIGTERM exits at once: {status}"
    );
    assert!(srv.log_tail(50).contains("second signal"));
}

/// In-process, so that the moment between "asked to leave" and "stopped"
/// can be held open and looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_is_not_ready_and_lets_no_new_connection_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = herald::config::Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let node = herald::app::Node::start(cfg).await.expect("node starts");
    let connections = node.services.connections.clone();
    let app =
        herald::controller::routes(node.services.clone(), herald::telemetry::metrics_handle());
    let client = poem::test::TestClient::new(app);
    client.get("/readyz").send().await.assert_status_is_ok();

    connections.ask_to_leave();
    let ready = client.get("/readyz").send().await;
    ready.assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
    ready.assert_text("not ready: stopping").await;
    let ws = client
        .get("/ws")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await;
    ws.assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
    let body = ws.json().await;
    body.value()
        .object()
        .get("code")
        .assert_string("unavailable");
    assert_eq!(
        connections.count(),
        0,
        "a refused upgrade is not counted in"
    );
    node.stop().await;
}

/// The `clientMessageId` of a send request.
fn cmid_of(req: &serde_json::Value) -> String {
    req["clientMessageId"]
        .as_str()
        .expect("clientMessageId")
        .to_string()
}
