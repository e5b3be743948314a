//! Delivery guarantees: ordering under load and concurrency, fan-out,
//! redelivery of unacked pushes, offline recipients.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use herald::stomp::{Command, Frame};
use serde_json::{json, Value};

static SERVER: OnceLock<TestServer> = OnceLock::new();
static MAX2: OnceLock<TestServer> = OnceLock::new();

const ACK_TIMEOUT_MS: u64 = 300;

fn server() -> (&'static TestServer, LogGuard) {
    let s = TestServer::shared(
        &SERVER,
        &[
            ("HERALD_ACK_TIMEOUT_MS", "300"),
            ("HERALD_SEND_RATE_PER_SEC", "100000"),
            ("HERALD_SEND_BURST", "100000"),
        ],
    );
    (s, s.log_guard())
}

fn max2_server() -> (&'static TestServer, LogGuard) {
    let s = TestServer::shared(
        &MAX2,
        &[
            ("HERALD_ACK_TIMEOUT_MS", "300"),
            ("HERALD_MAX_REDELIVERIES", "2"),
        ],
    );
    (s, s.log_guard())
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

async fn sync_status(api: &Api, u: &TestUser, mid: &str) -> String {
    api.sync_all(u)
        .await
        .iter()
        .find(|m| m["messageId"].as_str() == Some(mid))
        .map(|m| m["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("message {mid} missing from the inbox"))
}

async fn wait_status(api: &Api, u: &TestUser, mid: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = sync_status(api, u, mid).await;
        if s == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status of {mid} stayed {s:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Receives pushes on `sub` for `dur`; returns (arrival, frame) pairs.
async fn collect_pushes(c: &mut Stomp, sub: &str, dur: Duration) -> Vec<(Instant, Frame)> {
    let deadline = Instant::now() + dur;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        match c.try_recv_message_on(sub, left).await {
            Ok(f) => out.push((Instant::now(), f)),
            Err(RecvError::Timeout) => return out,
            Err(RecvError::Closed(why)) => panic!("connection closed: {why}"),
        }
    }
}

// ---------------------------------------------------------------------------
// ordering
// ---------------------------------------------------------------------------

#[tokio::test]
async fn burst_of_200_sends_is_acked_and_delivered_in_order() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut ca = srv.stomp(&a.token).await;
    ca.subscribe("/user/queue/ack", "ack", "auto").await;
    ca.subscribe("/user/queue/errors", "err", "auto").await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "msg", "auto").await;

    const N: usize = 200;
    let run = unique("b");
    let cmids: Vec<String> = (0..N).map(|i| format!("{run}-{i}")).collect();
    for (i, cmid) in cmids.iter().enumerate() {
        let req = send_req_user(&b.user_id, &format!("burst {i}"), cmid);
        ca.send_json("/app/send", &req, None).await;
    }

    let mut acked: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.len() < N {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = ca
            .try_recv_matching(left, |f| {
                f.command == Command::Message || f.command == Command::Error
            })
            .await
            .unwrap_or_else(|e| panic!("only {} of {N} SendAcks arrived: {e:?}", acked.len()));
        assert_eq!(f.command, Command::Message, "{f:?}");
        assert_eq!(
            f.header("subscription"),
            Some("ack"),
            "rejected send: {:?}",
            f.body_str()
        );
        let ack = body_json(&f);
        let cmid = ack["clientMessageId"].as_str().unwrap().to_string();
        let mid = assert_send_ack(&ack, &cmid);
        assert!(acked.insert(cmid, mid).is_none(), "duplicate SendAck");
    }

    let mut got = Vec::with_capacity(N);
    for _ in 0..N {
        let f = cb.recv_message_on("msg", Duration::from_secs(15)).await;
        got.push(body_json(&f));
    }
    let seqs: Vec<i64> = got.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    let want: Vec<i64> = (1..=N as i64).collect();
    assert_eq!(seqs, want, "pushed in seq order 1..=200 without gaps");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(
            m["clientMessageId"].as_str(),
            Some(cmids[i].as_str()),
            "one connection's sends keep their order"
        );
        assert_eq!(
            m["messageId"].as_str(),
            acked.get(&cmids[i]).map(String::as_str)
        );
    }
    cb.expect_no_message_on("msg", Duration::from_millis(300))
        .await;
    let stored = api.sync_all(&b).await;
    assert_eq!(stored.len(), N);
}

#[tokio::test]
async fn concurrent_group_senders_share_one_gap_free_order() {
    let (srv, _g) = server();
    let api = srv.api();
    const SENDERS: usize = 4;
    const PER: usize = 50;
    const TOTAL: usize = SENDERS * PER;
    let senders = api.new_users(SENDERS).await;
    let observer = api.new_user().await;
    let mut members: Vec<&TestUser> = senders.iter().skip(1).collect();
    members.push(&observer);
    let g = api
        .create_group(&senders[0], &unique("conc"), &members)
        .await;
    let gid = g["groupId"].as_str().unwrap().to_string();

    // One receiving device per member (senders included).
    let mut receivers = Vec::new();
    for u in senders.iter().chain(std::iter::once(&observer)) {
        let mut c = srv.stomp(&u.token).await;
        c.subscribe("/user/queue/message", "msg", "auto").await;
        receivers.push(c);
    }
    let mut txs = Vec::new();
    for u in &senders {
        let mut c = srv.stomp(&u.token).await;
        c.subscribe("/user/queue/ack", "ack", "auto").await;
        txs.push(c);
    }

    let run = unique("k");
    let sends = txs.into_iter().enumerate().map(|(s, mut c)| {
        let gid = gid.clone();
        let run = run.clone();
        async move {
            for i in 0..PER {
                let req = send_req_group(&gid, &format!("s{s}-{i}"), &format!("{run}-{s}-{i}"));
                c.send_json("/app/send", &req, None).await;
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            let mut acks = Vec::new();
            for _ in 0..PER {
                let ack = c.recv_json_on("ack", Duration::from_secs(20)).await;
                acks.push(ack);
            }
            acks
        }
    });
    let all_acks: Vec<Vec<Value>> = futures_util::future::join_all(sends).await;
    let acked: HashSet<String> = all_acks
        .iter()
        .flatten()
        .map(|a| a["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        acked.len(),
        TOTAL,
        "every send acked once with a distinct id"
    );

    let mut orders: Vec<Vec<String>> = Vec::new();
    for (r, c) in receivers.iter_mut().enumerate() {
        let mut seqs = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..TOTAL {
            let v = c.recv_json_on("msg", Duration::from_secs(20)).await;
            seqs.push(v["seq"].as_i64().unwrap());
            ids.push(v["messageId"].as_str().unwrap().to_string());
            assert_eq!(v["groupId"].as_str(), Some(gid.as_str()));
        }
        let want: Vec<i64> = (1..=TOTAL as i64).collect();
        assert_eq!(
            seqs, want,
            "receiver {r}: seq must be 1..={TOTAL} in push order"
        );
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), TOTAL, "receiver {r}: duplicates");
        assert!(
            ids.iter().all(|i| acked.contains(i)),
            "receiver {r}: unknown ids"
        );
        c.expect_no_message_on("msg", Duration::from_millis(200))
            .await;
        orders.push(ids);
    }
    for (r, o) in orders.iter().enumerate().skip(1) {
        assert_eq!(
            o, &orders[0],
            "receiver {r} saw another order than receiver 0"
        );
    }

    // Each sender's messages keep that sender's order.
    let history = api.sync_all(&observer).await;
    assert_eq!(history.len(), TOTAL);
    for (s, sender) in senders.iter().enumerate() {
        let mine: Vec<&str> = history
            .iter()
            .filter(|m| m["senderId"].as_str() == Some(sender.user_id.as_str()))
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        let want: Vec<String> = (0..PER).map(|i| format!("s{s}-{i}")).collect();
        assert_eq!(mine, want, "sender {s}'s order");
    }
}

#[tokio::test]
async fn group_fan_out_reaches_every_online_member() {
    let (srv, _g) = server();
    let api = srv.api();
    const N: usize = 8;
    let users = api.new_users(N).await;
    let owner = &users[0];
    let others: Vec<&TestUser> = users.iter().skip(1).collect();
    let g = api.create_group(owner, &unique("fan"), &others).await;
    let gid = g["groupId"].as_str().unwrap();
    // Member n first gets n direct messages while offline, so each member's
    // pushes must carry its own inboxSeq (n + 1, n + 2, ...), not a shared one.
    let outsider = api.new_user().await;
    for (n, u) in users.iter().enumerate() {
        for k in 0..n {
            api.send_to_user(&outsider, &u.user_id, &format!("before {k}"))
                .await;
        }
    }
    let mut conns = Vec::new();
    for u in &users {
        let mut c = srv.stomp(&u.token).await;
        c.subscribe("/user/queue/message", "msg", "auto").await;
        conns.push(c);
    }
    let mut mids = Vec::new();
    for i in 0..5 {
        let k = api.send_to_group(owner, gid, &format!("fan {i}")).await;
        mids.push(k["messageId"].as_str().unwrap().to_string());
    }
    for (n, c) in conns.iter_mut().enumerate() {
        for (i, mid) in mids.iter().enumerate() {
            let f = c.recv_message_on("msg", WAIT).await;
            assert_eq!(f.header("message-id"), Some(mid.as_str()), "member {n}");
            let v = body_json(&f);
            assert_eq!(v["seq"], json!(i as i64 + 1));
            assert_eq!(v["inboxSeq"], json!((n + i) as i64 + 1), "member {n}");
            assert_eq!(v["sessionType"], json!("group"));
            let want = if n == 0 { "read" } else { "pending" };
            assert_eq!(v["status"], json!(want), "member {n}: {v}");
        }
    }
    // Auto-acked on write: the entries become delivered.
    wait_status(&api, &users[N - 1], &mids[4], "delivered").await;
}

// ---------------------------------------------------------------------------
// redelivery
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unacked_push_is_redelivered_with_backoff_until_acked() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "ci", "client-individual")
        .await;
    let k = api.send_to_user(&a, &b.user_id, "ack me").await;
    let mid = k["messageId"].as_str().unwrap().to_string();

    let f0 = cb.recv_message_on("ci", WAIT).await;
    let t0 = Instant::now();
    assert_eq!(f0.header("message-id"), Some(mid.as_str()));
    let f1 = cb.recv_message_on("ci", Duration::from_secs(3)).await;
    let t1 = Instant::now();
    let f2 = cb.recv_message_on("ci", Duration::from_secs(3)).await;
    let t2 = Instant::now();
    for f in [&f1, &f2] {
        assert_eq!(
            f.header("message-id"),
            Some(mid.as_str()),
            "same message-id"
        );
        assert_eq!(body_json(f)["messageId"].as_str(), Some(mid.as_str()));
    }
    let (d1, d2) = (t1 - t0, t2 - t1);
    assert!(
        (200..=1_000).contains(&ms(d1)),
        "1st redelivery after {d1:?}, expected ~{ACK_TIMEOUT_MS} ms"
    );
    assert!(
        (450..=1_600).contains(&ms(d2)),
        "2nd redelivery {d2:?} after the 1st, expected ~{} ms",
        2 * ACK_TIMEOUT_MS
    );
    assert!(d2 > d1, "waits grow: {d1:?} then {d2:?}");
    assert_eq!(sync_status(&api, &b, &mid).await, "pending");

    let ack_id = f2.header("ack").expect("ack header").to_string();
    cb.send_frame(&frame(
        Command::Ack,
        &[("id", ack_id.as_str()), ("receipt", "ok")],
        Bytes::new(),
    ))
    .await;
    cb.recv_receipt("ok", WAIT).await;
    // The 3rd would come ~1200 ms after the 2nd.
    cb.expect_no_message_on("ci", Duration::from_millis(2_000))
        .await;
    wait_status(&api, &b, &mid, "delivered").await;
}

#[tokio::test]
async fn app_ack_stops_redelivery() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "ci", "client-individual")
        .await;
    let k = api.send_to_user(&a, &b.user_id, "ack me by app").await;
    let mid = k["messageId"].as_str().unwrap().to_string();
    let f = cb.recv_message_on("ci", WAIT).await;
    assert_eq!(f.header("message-id"), Some(mid.as_str()));
    cb.send_json(
        "/app/ack",
        &json!({"messageIds": [mid], "ackType": "received"}),
        Some("app-ack"),
    )
    .await;
    cb.recv_receipt("app-ack", WAIT).await;
    cb.expect_no_message_on("ci", Duration::from_millis(1_300))
        .await;
    assert_eq!(sync_status(&api, &b, &mid).await, "delivered");
}

#[tokio::test]
async fn rest_ack_and_pull_stop_redelivery() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "ci", "client").await;

    let k1 = api.send_to_user(&a, &b.user_id, "rest ack").await;
    let m1 = k1["messageId"].as_str().unwrap();
    cb.recv_message_on("ci", WAIT).await;
    let r = api
        .post(
            &format!("{API}/messages/ack"),
            Some(&b.token),
            &json!({"messageIds": [m1], "ackType": "read"}),
        )
        .await;
    assert_eq!(r.expect(200, "rest ack")["updated"], json!(1));
    cb.expect_no_message_on("ci", Duration::from_millis(1_300))
        .await;

    let k2 = api.send_to_user(&a, &b.user_id, "pulled").await;
    let sid = k2["sessionId"].as_str().unwrap();
    cb.recv_message_on("ci", WAIT).await;
    let r = api
        .get(
            &format!("{API}/messages/pull?sessionId={sid}&lastMessageId={m1}"),
            Some(&b.token),
        )
        .await;
    assert_eq!(
        r.expect(200, "pull")["messages"].as_array().map(Vec::len),
        Some(1)
    );
    cb.expect_no_message_on("ci", Duration::from_millis(1_300))
        .await;
}

#[tokio::test]
async fn redelivery_goes_to_every_online_device() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut d1 = srv.stomp(&b.token).await;
    d1.subscribe("/user/queue/message", "ci", "client-individual")
        .await;
    let mut d2 = srv.stomp(&b.token).await;
    d2.subscribe("/user/queue/message", "ci", "client-individual")
        .await;
    let k = api.send_to_user(&a, &b.user_id, "two devices").await;
    let mid = k["messageId"].as_str().unwrap();
    for d in [&mut d1, &mut d2] {
        let first = d.recv_message_on("ci", WAIT).await;
        assert_eq!(first.header("message-id"), Some(mid));
        let again = d.recv_message_on("ci", Duration::from_secs(3)).await;
        assert_eq!(again.header("message-id"), Some(mid));
    }
    // One device acks: both stop.
    let f = d1.recv_message_on("ci", Duration::from_secs(3)).await;
    let ack_id = f.header("ack").unwrap().to_string();
    d1.send_frame(&frame(
        Command::Ack,
        &[("id", ack_id.as_str()), ("receipt", "r")],
        Bytes::new(),
    ))
    .await;
    d1.recv_receipt("r", WAIT).await;
    // Pushes already on their way to d2 before the ack are fine; none after.
    tokio::join!(
        d1.expect_no_message_on("ci", Duration::from_millis(1_500)),
        async {
            d2.pump(Duration::from_millis(150)).await;
            d2.drain_queue();
            d2.expect_no_message_on("ci", Duration::from_millis(1_350))
                .await;
        }
    );
}

#[tokio::test]
async fn auto_ack_is_never_redelivered_and_marks_delivered() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "auto", "auto").await;
    let k = api.send_to_user(&a, &b.user_id, "auto").await;
    let mid = k["messageId"].as_str().unwrap();
    let f = cb.recv_message_on("auto", WAIT).await;
    assert_eq!(f.header("message-id"), Some(mid));
    cb.expect_no_message_on("auto", Duration::from_millis(1_200))
        .await;
    wait_status(&api, &b, mid, "delivered").await;
}

#[tokio::test]
async fn redeliveries_stop_at_the_maximum_and_message_stays_pending() {
    let (srv, _g) = max2_server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "ci", "client-individual")
        .await;
    let k = api.send_to_user(&a, &b.user_id, "never acked").await;
    let mid = k["messageId"].as_str().unwrap();
    // Pushes at ~0, ~300, ~900 ms; a 3rd redelivery would be at ~2100 ms.
    let pushes = collect_pushes(&mut cb, "ci", Duration::from_millis(3_200)).await;
    assert_eq!(
        pushes.len(),
        3,
        "original + 2 redeliveries, got {} pushes",
        pushes.len()
    );
    assert!(pushes
        .iter()
        .all(|(_, f)| f.header("message-id") == Some(mid)));

    let r = api
        .get(&format!("{API}/messages/unread"), Some(&b.token))
        .await;
    let body = r.expect(200, "unread").clone();
    let m = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["messageId"].as_str() == Some(mid))
        .unwrap_or_else(|| panic!("dead-lettered message missing from unread: {body}"))
        .clone();
    assert_eq!(m["status"], json!("pending"));
    assert_eq!(sync_status(&api, &b, mid).await, "pending");

    let metrics = api.get("/metrics", None).await;
    let line = metrics
        .text
        .lines()
        .find(|l| l.starts_with("herald_messages_dead_lettered_total"))
        .unwrap_or_else(|| panic!("no dead-letter metric:\n{}", metrics.text));
    let v: f64 = line.split_whitespace().last().unwrap().parse().unwrap();
    assert!(v >= 1.0, "{line}");
}

#[tokio::test]
async fn nack_counts_as_one_redelivery() {
    let (srv, _g) = max2_server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "ci", "client-individual")
        .await;
    let k = api.send_to_user(&a, &b.user_id, "nack me").await;
    let mid = k["messageId"].as_str().unwrap();
    let f = cb.recv_message_on("ci", WAIT).await;
    let ack_id = f.header("ack").expect("ack header").to_string();
    let nacked = Instant::now();
    cb.send_frame(&frame(
        Command::Nack,
        &[("id", ack_id.as_str())],
        Bytes::new(),
    ))
    .await;
    let again = cb.recv_message_on("ci", WAIT).await;
    let after = nacked.elapsed();
    assert_eq!(again.header("message-id"), Some(mid));
    assert!(
        after < Duration::from_millis(200),
        "NACK must redeliver at once, took {after:?} (the timer would fire at {ACK_TIMEOUT_MS} ms)"
    );
    // One more timed redelivery, then nothing.
    let rest = collect_pushes(&mut cb, "ci", Duration::from_millis(2_500)).await;
    assert_eq!(
        rest.len(),
        1,
        "after a NACK (1 of 2) only one more redelivery, got {}",
        rest.len()
    );
}

// ---------------------------------------------------------------------------
// offline
// ---------------------------------------------------------------------------

#[tokio::test]
async fn offline_recipient_finds_messages_pending() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut ca = srv.stomp(&a.token).await;
    ca.subscribe("/user/queue/ack", "ack", "auto").await;
    let mut mids = Vec::new();
    for i in 0..3 {
        let cmid = unique("off");
        let ack = ca
            .send_message(
                &send_req_user(&b.user_id, &format!("offline {i}"), &cmid),
                "ack",
            )
            .await;
        mids.push(assert_send_ack(&ack, &cmid));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    let r = api
        .get(&format!("{API}/messages/unread"), Some(&b.token))
        .await;
    let body = r.expect(200, "unread").clone();
    assert_eq!(body["total"], json!(3));
    let unread: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["status"], json!("pending"), "{m}");
            m["messageId"].as_str().unwrap()
        })
        .collect();
    assert_eq!(unread, mids.iter().map(String::as_str).collect::<Vec<_>>());

    let synced = api.sync_all(&b).await;
    assert_eq!(synced.len(), 3);
    assert!(synced.iter().all(|m| m["status"] == "pending"));

    let sid = synced[0]["sessionId"].as_str().unwrap();
    let r = api
        .get(
            &format!("{API}/messages/pull?sessionId={sid}"),
            Some(&b.token),
        )
        .await;
    let pulled = r.expect(200, "pull")["messages"]
        .as_array()
        .unwrap()
        .clone();
    let seqs: Vec<i64> = pulled.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let r = api
        .get(&format!("{API}/messages/unread"), Some(&b.token))
        .await;
    assert_eq!(r.expect(200, "unread after pull")["total"], json!(0));
}

#[tokio::test]
async fn client_ack_mode_is_cumulative() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "cl", "client").await;
    let mut mids = Vec::new();
    for i in 0..3 {
        let k = api.send_to_user(&a, &b.user_id, &format!("cum {i}")).await;
        mids.push(k["messageId"].as_str().unwrap().to_string());
    }
    let mut last = None;
    for mid in &mids {
        let f = cb.recv_message_on("cl", WAIT).await;
        assert_eq!(f.header("message-id"), Some(mid.as_str()));
        last = Some(f);
    }
    // Acking the last one acks all earlier ones of the subscription.
    let ack_id = last
        .unwrap()
        .header("ack")
        .expect("client-mode MESSAGE has an ack header")
        .to_string();
    cb.send_frame(&frame(
        Command::Ack,
        &[("id", ack_id.as_str()), ("receipt", "cum")],
        Bytes::new(),
    ))
    .await;
    cb.recv_receipt("cum", WAIT).await;
    cb.pump(Duration::from_millis(100)).await;
    cb.drain_queue(); // redeliveries already on the wire before the ACK
    cb.expect_no_message_on("cl", Duration::from_millis(1_300))
        .await;
    for mid in &mids {
        wait_status(&api, &b, mid, "delivered").await;
    }
}

#[tokio::test]
async fn ack_inside_a_transaction_takes_effect_at_commit() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "ci", "client-individual")
        .await;
    let k = api.send_to_user(&a, &b.user_id, "tx ack").await;
    let mid = k["messageId"].as_str().unwrap().to_string();
    let f = cb.recv_message_on("ci", WAIT).await;
    let ack_id = f.header("ack").expect("ack header").to_string();

    cb.send_frame(&frame(
        Command::Begin,
        &[("transaction", "t")],
        Bytes::new(),
    ))
    .await;
    cb.send_frame(&frame(
        Command::Ack,
        &[("id", ack_id.as_str()), ("transaction", "t")],
        Bytes::new(),
    ))
    .await;
    // Not in effect yet: the redelivery timer still fires (~300 ms).
    let again = cb.recv_message_on("ci", Duration::from_secs(2)).await;
    assert_eq!(again.header("message-id"), Some(mid.as_str()));
    assert_eq!(sync_status(&api, &b, &mid).await, "pending");

    cb.send_frame(&frame(
        Command::Commit,
        &[("transaction", "t"), ("receipt", "c")],
        Bytes::new(),
    ))
    .await;
    cb.recv_receipt("c", WAIT).await;
    cb.pump(Duration::from_millis(100)).await;
    cb.drain_queue();
    cb.expect_no_message_on("ci", Duration::from_millis(1_500))
        .await;
    wait_status(&api, &b, &mid, "delivered").await;
}

#[tokio::test]
async fn aborted_ack_does_not_stop_redelivery() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "ci", "client-individual")
        .await;
    let k = api.send_to_user(&a, &b.user_id, "aborted ack").await;
    let mid = k["messageId"].as_str().unwrap().to_string();
    let f = cb.recv_message_on("ci", WAIT).await;
    let ack_id = f.header("ack").expect("ack header").to_string();
    cb.send_frame(&frame(
        Command::Begin,
        &[("transaction", "t")],
        Bytes::new(),
    ))
    .await;
    cb.send_frame(&frame(
        Command::Ack,
        &[("id", ack_id.as_str()), ("transaction", "t")],
        Bytes::new(),
    ))
    .await;
    cb.send_frame(&frame(
        Command::Abort,
        &[("transaction", "t"), ("receipt", "ab")],
        Bytes::new(),
    ))
    .await;
    cb.recv_receipt("ab", WAIT).await;
    let again = cb.recv_message_on("ci", Duration::from_secs(2)).await;
    assert_eq!(again.header("message-id"), Some(mid.as_str()));
    assert_eq!(sync_status(&api, &b, &mid).await, "pending");
}

#[tokio::test]
async fn group_membership_changes_affect_fan_out() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(3).await;
    let (owner, b, c) = (&users[0], &users[1], &users[2]);
    let g = api.create_group(owner, &unique("mship"), &[b]).await;
    let gid = g["groupId"].as_str().unwrap().to_string();
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "m", "auto").await;
    let mut cc = srv.stomp(&c.token).await;
    cc.subscribe("/user/queue/message", "m", "auto").await;

    api.send_to_group(owner, &gid, "before").await;
    assert_eq!(cb.recv_json_on("m", WAIT).await["content"], json!("before"));
    cc.expect_no_message_on("m", Duration::from_millis(300))
        .await;

    let r = api
        .post(
            &format!("{API}/groups/{gid}/members"),
            Some(&owner.token),
            &json!({"userIds": [c.user_id]}),
        )
        .await;
    r.expect(200, "add c");
    api.send_to_group(owner, &gid, "with c").await;
    let v = cc.recv_json_on("m", WAIT).await;
    assert_eq!(v["content"], json!("with c"));
    assert_eq!(v["seq"], json!(2));
    assert_eq!(cb.recv_json_on("m", WAIT).await["content"], json!("with c"));
    // The new member may send now.
    api.send_to_group(c, &gid, "from c").await;
    assert_eq!(cb.recv_json_on("m", WAIT).await["content"], json!("from c"));
    // c's device gets its own message too (it was sent over REST).
    assert_eq!(cc.recv_json_on("m", WAIT).await["content"], json!("from c"));

    let r = api
        .delete(
            &format!("{API}/groups/{gid}/members/{}", b.user_id),
            Some(&owner.token),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    api.send_to_group(owner, &gid, "without b").await;
    assert_eq!(
        cc.recv_json_on("m", WAIT).await["content"],
        json!("without b")
    );
    cb.expect_no_message_on("m", Duration::from_millis(500))
        .await;
    api.send(b, &send_req_group(&gid, "left", &unique("c")))
        .await
        .expect_error(403, "forbidden", "removed member sends");
}

#[tokio::test]
async fn unacked_push_is_redelivered_to_a_new_connection() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut old = srv.stomp(&b.token).await;
    old.subscribe("/user/queue/message", "ci", "client-individual")
        .await;
    let k = api.send_to_user(&a, &b.user_id, "survive reconnect").await;
    let mid = k["messageId"].as_str().unwrap().to_string();
    let f = old.recv_message_on("ci", WAIT).await;
    assert_eq!(f.header("message-id"), Some(mid.as_str()));
    old.close().await; // gone without acking

    let mut new = srv.stomp(&b.token).await;
    new.subscribe("/user/queue/message", "ci2", "client-individual")
        .await;
    let f = new.recv_message_on("ci2", Duration::from_secs(3)).await;
    assert_eq!(
        f.header("message-id"),
        Some(mid.as_str()),
        "the unacked message is redelivered to the user's current device"
    );
    let ack_id = f.header("ack").expect("ack header").to_string();
    new.send_frame(&frame(
        Command::Ack,
        &[("id", ack_id.as_str()), ("receipt", "r")],
        Bytes::new(),
    ))
    .await;
    new.recv_receipt("r", WAIT).await;
    wait_status(&api, &b, &mid, "delivered").await;
}

#[tokio::test]
async fn concurrent_duplicate_sends_create_one_message() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut cb = srv.stomp(&b.token).await;
    cb.subscribe("/user/queue/message", "m", "auto").await;
    let cmid = unique("race");
    let req = send_req_user(&b.user_id, "only once", &cmid);

    // 10 REST requests and 2 STOMP devices race on one clientMessageId.
    let mut d1 = srv.stomp(&a.token).await;
    d1.subscribe("/user/queue/ack", "ack", "auto").await;
    let mut d2 = srv.stomp(&a.token).await;
    d2.subscribe("/user/queue/ack", "ack", "auto").await;
    let rest = (0..10).map(|_| {
        let api = api.clone();
        let (a, req) = (a.clone(), req.clone());
        async move { api.send(&a, &req).await }
    });
    let (rest, ack1, ack2) = tokio::join!(
        futures_util::future::join_all(rest),
        d1.send_message(&req, "ack"),
        d2.send_message(&req, "ack"),
    );
    let mut ids: HashSet<String> = HashSet::new();
    for r in &rest {
        ids.insert(assert_send_ack(r.expect(202, "racing send"), &cmid));
    }
    ids.insert(assert_send_ack(&ack1, &cmid));
    ids.insert(assert_send_ack(&ack2, &cmid));
    assert_eq!(ids.len(), 1, "racing duplicates got different ids: {ids:?}");
    let mid = ids.into_iter().next().unwrap();

    let f = cb.recv_message_on("m", WAIT).await;
    assert_eq!(f.header("message-id"), Some(mid.as_str()));
    cb.expect_no_message_on("m", Duration::from_millis(500))
        .await;
    let list = api.wait_visible(&b, &mid).await;
    assert_eq!(list.len(), 1, "exactly one message stored: {list:?}");
}

/// Read-your-writes: a REST read right after an auto-ack push, or after the
/// RECEIPT of a STOMP ACK, sees the new status, with no polling.
#[tokio::test]
async fn reads_right_after_an_ack_see_it() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let mut auto = srv.stomp(&b.token).await;
    auto.subscribe("/user/queue/message", "auto", "auto").await;
    for i in 0..5 {
        let k = api.send_to_user(&a, &b.user_id, &format!("auto {i}")).await;
        let mid = k["messageId"].as_str().unwrap();
        let f = auto.recv_message_on("auto", WAIT).await;
        assert_eq!(f.header("message-id"), Some(mid));
        assert_eq!(
            sync_status(&api, &b, mid).await,
            "delivered",
            "auto-ack {i}"
        );
    }
    drop(auto);

    let mut manual = srv.stomp(&b.token).await;
    manual
        .subscribe("/user/queue/message", "m", "client-individual")
        .await;
    for i in 0..5 {
        let k = api
            .send_to_user(&a, &b.user_id, &format!("manual {i}"))
            .await;
        let mid = k["messageId"].as_str().unwrap();
        let f = manual.recv_message_on("m", WAIT).await;
        assert_eq!(
            sync_status(&api, &b, mid).await,
            "pending",
            "not acked yet {i}"
        );
        let ack_id = f.header("ack").unwrap().to_string();
        let receipt = format!("ack-{i}");
        manual
            .send_frame(&frame(
                Command::Ack,
                &[("id", &ack_id), ("receipt", &receipt)],
                "",
            ))
            .await;
        manual.recv_receipt(&receipt, WAIT).await;
        assert_eq!(sync_status(&api, &b, mid).await, "delivered", "acked {i}");
    }
}
