//! Several Herald nodes in cluster mode on the real services of
//! `scripts/services.sh` (MongoDB wire server, RocketMQ, Redis): users on
//! different nodes chat as on one node, `seq` stays gap-free with senders
//! on different nodes, broadcasts and presence cross nodes, and nothing
//! acknowledged is lost when a node is SIGKILLed or Redis or the broker
//! restart mid-stream. Run by `scripts/test.sh` (`--ignored`: they need
//! the services up).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Nodes of one cluster, started together.
struct Cluster {
    nodes: Vec<TestServer>,
}

impl Cluster {
    /// Starts `n` nodes of a new cluster (in parallel: each waits for its
    /// consumers' queues).
    fn start(n: u16) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Starts `n` nodes with `extra` settings.
    fn start_with(n: u16, extra: &[(&str, &str)]) -> Cluster {
        let name = new_cluster_name();
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let handles: Vec<_> = (1..=n)
            .map(|node| {
                let mut env = cluster_env(&name, node);
                env.extend(extra.iter().cloned());
                std::thread::spawn(move || TestServer::start_with(env))
            })
            .collect();
        let nodes = handles
            .into_iter()
            .map(|h| h.join().expect("a node starts"))
            .collect();
        Cluster { nodes }
    }

    fn api(&self, node: usize) -> Api {
        self.nodes[node].api()
    }

    fn guards(&self) -> Vec<LogGuard> {
        self.nodes.iter().map(TestServer::log_guard).collect()
    }
}

/// Runs `scripts/services.sh` with `args`; panics if it fails.
fn services(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("run scripts/services.sh");
    assert!(
        out.status.success(),
        "services.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pid `scripts/services.sh` recorded for a service.
fn service_pid(name: &str) -> String {
    let dir =
        std::env::var("HERALD_SERVICES_DIR").unwrap_or_else(|_| "/tmp/herald-services".into());
    std::fs::read_to_string(format!("{dir}/run/{name}.pid"))
        .expect("a pid file")
        .trim()
        .to_string()
}

async fn connected(server: &TestServer, user: &TestUser) -> Stomp {
    let mut c = server.stomp(&user.token).await;
    c.subscribe("/user/queue/message", "m", "auto").await;
    c.subscribe("/user/queue/ack", "a", "auto").await;
    c.subscribe("/user/queue/errors", "e", "auto").await;
    c
}

/// The `MessageVo`s pushed on subscription `m` within `dur`.
async fn pushes(c: &mut Stomp, want: usize, dur: Duration) -> Vec<Value> {
    let deadline = Instant::now() + dur;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.try_recv_message_on("m", left).await {
            Ok(f) => out.push(body_json(&f)),
            Err(_) => break,
        }
    }
    out
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (cluster services)"]
async fn users_on_different_nodes_chat_as_on_one() {
    let cluster = Cluster::start(3);
    let _logs = cluster.guards();
    let (a, b) = (cluster.api(0), cluster.api(1));
    let alice = a.new_user().await;
    let bob = b.new_user().await;
    let mut bob_on_b = connected(&cluster.nodes[1], &bob).await;
    let mut alice_on_a = connected(&cluster.nodes[0], &alice).await;
    let mut alice_on_c = connected(&cluster.nodes[2], &alice).await;

    let ack = alice_on_a
        .send_message(&send_req_user(&bob.user_id, "hi bob", "c-1"), "a")
        .await;
    let message_id = assert_send_ack(&ack, "c-1");
    // Read your writes on any node, at once.
    let page = b
        .get(
            &format!(
                "{API}/messages/pull?sessionId={}&markRead=false",
                ack["sessionId"].as_str().unwrap()
            ),
            Some(&bob.token),
        )
        .await;
    let listed = page.expect(200, "pull on another node")["messages"].clone();
    assert_eq!(listed[0]["messageId"], json!(message_id));
    // The recipient on node B, and the sender's other device on node C.
    let to_bob = pushes(&mut bob_on_b, 1, WAIT).await;
    assert_eq!(to_bob.len(), 1, "bob's push");
    assert_message_vo(&to_bob[0]);
    assert_eq!(to_bob[0]["messageId"], json!(message_id));
    assert_eq!(to_bob[0]["seq"], json!(1));
    let to_alice = pushes(&mut alice_on_c, 1, WAIT).await;
    assert_eq!(to_alice[0]["messageId"], json!(message_id));
    alice_on_a
        .expect_no_message_on("m", Duration::from_millis(300))
        .await;

    // An answer the other way, through node C.
    let c = cluster.api(2);
    let reply = c.send_to_user(&bob, &alice.user_id, "hi alice").await;
    assert_eq!(
        reply["sessionId"], ack["sessionId"],
        "one session per pair, on every node"
    );
    let back = pushes(&mut alice_on_a, 1, WAIT).await;
    assert_eq!(back[0]["seq"], json!(2));
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (cluster services)"]
async fn a_new_pair_gets_one_session_whichever_nodes_its_first_sends_reach() {
    let cluster = Cluster::start(2);
    let _logs = cluster.guards();
    let (a, b) = (cluster.api(0), cluster.api(1));
    for _ in 0..5 {
        let x = a.new_user().await;
        let y = a.new_user().await;
        let (one, two) = tokio::join!(
            a.send_to_user(&x, &y.user_id, "from x"),
            b.send_to_user(&y, &x.user_id, "from y"),
        );
        assert_eq!(one["sessionId"], two["sessionId"]);
    }
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (cluster services)"]
async fn group_messages_reach_members_on_every_node_in_one_gap_free_order() {
    let cluster = Cluster::start(3);
    let _logs = cluster.guards();
    let api = cluster.api(0);
    let users = api.new_users(4).await;
    let group = api
        .create_group(&users[0], "everywhere", &[&users[1], &users[2], &users[3]])
        .await;
    let group_id = group["groupId"].as_str().unwrap().to_string();
    // A listener per node.
    let mut listeners = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        listeners.push(connected(node, &users[i + 1]).await);
    }
    // Three senders on three nodes, at once.
    const EACH: usize = 15;
    let sends = (0..3).map(|i| {
        let api = cluster.api(i);
        let sender = users[i].clone();
        let group_id = group_id.clone();
        async move {
            let mut ids = Vec::new();
            for n in 0..EACH {
                let ack = api
                    .send_to_group(&sender, &group_id, &format!("{i}-{n}"))
                    .await;
                ids.push(ack["messageId"].as_str().unwrap().to_string());
            }
            ids
        }
    });
    let sent: Vec<String> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(sent.len(), 3 * EACH);
    for (i, listener) in listeners.iter_mut().enumerate() {
        let got = pushes(listener, 3 * EACH, Duration::from_secs(20)).await;
        let seqs: Vec<i64> = got.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        // Group creation is not a message here: seqs are 1..=45, pushed in order.
        let want: Vec<i64> = (1..=(3 * EACH) as i64).collect();
        assert_eq!(seqs, want, "listener {i}: every message once, in seq order");
        let ids: BTreeSet<String> = got
            .iter()
            .map(|m| m["messageId"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, sent.iter().cloned().collect::<BTreeSet<_>>());
    }
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (cluster services)"]
async fn broadcasts_and_presence_cross_nodes() {
    let cluster = Cluster::start(2);
    let _logs = cluster.guards();
    let (a, b) = (cluster.api(0), cluster.api(1));
    let alice = a.new_user().await;
    let bob = b.new_user().await;
    let mut on_b = cluster.nodes[1].stomp(&bob.token).await;
    on_b.subscribe("/topic/public.lobby", "t", "auto").await;
    let mut on_a = cluster.nodes[0].stomp(&alice.token).await;
    on_a.subscribe("/topic/public.lobby", "t", "auto").await;
    let receipt = on_a.new_receipt_id();
    on_a.send(
        "/topic/public.lobby",
        &[("receipt", receipt.as_str()), ("x-kind", "wave")],
        "hello lobby",
    )
    .await;
    on_a.recv_receipt(&receipt, WAIT).await;
    let got = on_b.recv_message_on("t", WAIT).await;
    assert_eq!(&got.body[..], b"hello lobby");
    assert_eq!(got.header("x-kind"), Some("wave"));
    let own = on_a.recv_message_on("t", WAIT).await;
    assert_eq!(
        &own.body[..],
        b"hello lobby",
        "the sender's own subscription too"
    );

    // Presence, asked on the other node.
    let path = format!("{API}/presence?userIds={}", alice.user_id);
    let online = b.get(&path, Some(&bob.token)).await;
    assert_eq!(online.expect(200, "presence")[0]["online"], json!(true));
    on_a.close().await;
    b.poll_until(&path, Some(&bob.token), Duration::from_secs(5), |r| {
        r.body[0]["online"] == json!(false) && r.body[0]["lastSeenAt"].is_i64()
    })
    .await;
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (cluster services)"]
async fn the_device_cap_holds_over_every_node() {
    let name = new_cluster_name();
    let start = |node| {
        let mut env = cluster_env(&name, node);
        env.push(("HERALD_MAX_CONNECTIONS_PER_USER".into(), "2".into()));
        std::thread::spawn(move || TestServer::start_with(env))
    };
    let (one, two) = (start(1), start(2));
    let nodes = [one.join().unwrap(), two.join().unwrap()];
    let user = nodes[0].api().new_user().await;
    let _first = nodes[0].stomp(&user.token).await;
    let _second = nodes[1].stomp(&user.token).await;
    let mut third = Stomp::open(nodes[0].port()).await;
    let refused = third
        .send_connect(&[("passcode", user.token.as_str())])
        .await;
    assert_eq!(
        refused.command.as_str(),
        "ERROR",
        "a third device over two nodes"
    );
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (cluster services)"]
async fn a_repeat_sent_to_another_node_is_the_same_message() {
    let cluster = Cluster::start(2);
    let _logs = cluster.guards();
    let (a, b) = (cluster.api(0), cluster.api(1));
    let alice = a.new_user().await;
    let bob = a.new_user().await;
    let req = send_req_user(&bob.user_id, "once", "same-cmid");
    let (one, two) = tokio::join!(a.send(&alice, &req), b.send(&alice, &req));
    let one = one.expect(202, "first").clone();
    let two = two.expect(202, "repeat").clone();
    assert_eq!(one["messageId"], two["messageId"]);
    let later = b.send(&alice, &req).await;
    assert_eq!(
        later.expect(202, "later repeat")["messageId"],
        one["messageId"]
    );
    let inbox = b.sync_all(&bob).await;
    assert_eq!(inbox.len(), 1, "one message: {inbox:?}");
}

/// A send rate no stream of these tests reaches.
const UNLIMITED_SENDS: &[(&str, &str)] = &[
    ("HERALD_SEND_RATE_PER_SEC", "100000"),
    ("HERALD_SEND_BURST", "100000"),
];

/// Sends `n` messages to `to` through `api`, each with its own
/// `clientMessageId`; returns the acked message ids by cmid (sends that
/// failed, as the node died, are left out).
async fn send_stream(
    api: &Api,
    from: &TestUser,
    to: &str,
    prefix: &str,
    n: usize,
) -> HashMap<String, String> {
    let mut acked = HashMap::new();
    for i in 0..n {
        let cmid = format!("{prefix}-{i}");
        if let Some((202, ack)) = api.try_send(from, &send_req_user(to, &cmid, &cmid)).await {
            acked.insert(cmid, ack["messageId"].as_str().unwrap().to_string());
        }
    }
    acked
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (cluster services)"]
async fn nothing_acked_is_lost_when_a_node_is_killed_mid_stream() {
    let mut cluster = Cluster::start_with(3, UNLIMITED_SENDS);
    let _logs = cluster.guards();
    let alice = cluster.api(0).new_user().await;
    let bob = cluster.api(1).new_user().await;
    let mut bob_on_b = connected(&cluster.nodes[1], &bob).await;
    // Node A accepts a stream of sends and dies in the middle of it.
    let api_a = cluster.api(0);
    let stream = {
        let alice = alice.clone();
        let bob_id = bob.user_id.clone();
        tokio::spawn(async move { send_stream(&api_a, &alice, &bob_id, "k", 400).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.nodes[0].kill_9();
    let acked = stream.await.unwrap();
    assert!(!acked.is_empty(), "some sends were acked before the kill");
    // The sender goes on through node C, resending what was not acked:
    // a repeat of an acked one is the same message.
    let api_c = cluster.api(2);
    let resent = send_stream(&api_c, &alice, &bob.user_id, "k", 400).await;
    assert_eq!(resent.len(), 400, "node C takes every send");
    for (cmid, id) in &acked {
        assert_eq!(resent.get(cmid), Some(id), "{cmid} kept its message");
    }
    // The recipient has each message exactly once, seq gap-free.
    let inbox = cluster.api(1).sync_all(&bob).await;
    let ids: Vec<&str> = inbox
        .iter()
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 400, "one entry per send");
    assert_eq!(unique.len(), 400);
    let mut seqs: Vec<i64> = inbox.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=400).collect::<Vec<i64>>());
    // Pushes reached bob on node B meanwhile (some may have gone down
    // with node A: sync covers those).
    assert!(!pushes(&mut bob_on_b, 1, WAIT).await.is_empty());
}

/// Sends a stream while `disturb` runs, then checks nothing acked is lost.
async fn survives(disturb: impl std::future::Future<Output = ()>) {
    let cluster = Cluster::start_with(2, UNLIMITED_SENDS);
    let _logs = cluster.guards();
    let alice = cluster.api(0).new_user().await;
    let bob = cluster.api(1).new_user().await;
    let api = cluster.api(0);
    let stream = {
        let alice = alice.clone();
        let bob_id = bob.user_id.clone();
        tokio::spawn(async move {
            let mut acked = HashMap::new();
            let deadline = Instant::now() + Duration::from_secs(40);
            // Retries each send until acked, as a client would.
            for i in 0..200 {
                let cmid = format!("s-{i}");
                loop {
                    let r = api
                        .send(&alice, &send_req_user(&bob_id, &cmid, &cmid))
                        .await;
                    if r.status == 202 {
                        acked.insert(cmid, r.body["messageId"].as_str().unwrap().to_string());
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "sends never recovered: {}",
                        r.text
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    disturb.await;
    let acked = stream.await.unwrap();
    assert_eq!(acked.len(), 200);
    let inbox = cluster.api(1).sync_all(&bob).await;
    let mut got: Vec<String> = inbox
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = acked.values().cloned().collect();
    want.sort();
    assert_eq!(got, want, "every acked send, once");
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (cluster services)"]
async fn a_redis_restart_during_traffic_loses_nothing() {
    survives(async {
        services(&["restart", "redis"]);
    })
    .await;
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (cluster services)"]
async fn a_broker_killed_during_traffic_loses_nothing() {
    survives(async {
        let pid = service_pid("broker");
        let killed = Command::new("kill").args(["-9", &pid]).status().unwrap();
        assert!(killed.success());
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        services(&["up"]);
    })
    .await;
}

/// The ERROR frame a revoked token's connection gets, then the close.
async fn expect_token_revoked(c: &mut Stomp) {
    let f = c.recv_error(WAIT).await;
    assert_eq!(f.header("message"), Some("token revoked"), "{f:?}");
    assert!(c.wait_closed(WAIT).await, "closed after the ERROR");
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (cluster services)"]
async fn a_logout_on_one_node_holds_on_every_node_at_once() {
    let cluster = Cluster::start(2);
    let _logs = cluster.guards();
    let (a, b) = (cluster.api(0), cluster.api(1));
    let alice = a.new_user().await;
    let on_b = b.login(&alice.username, &alice.password).await;
    let second = on_b.expect(200, "login on b")["token"]
        .as_str()
        .unwrap()
        .to_string();
    // Node b checked the token (and cached alice's revocations).
    let me = format!("{API}/users/me");
    b.get(&me, Some(&alice.token)).await.expect(200, "on b");
    let mut conn_b = Stomp::connect(cluster.nodes[1].port(), &alice.token).await;
    let mut second_b = Stomp::connect(cluster.nodes[1].port(), &second).await;

    a.post_empty(&format!("{API}/auth/logout"), Some(&alice.token))
        .await
        .expect(204, "logout on a");
    // The very next request on node b refuses it: b's cache was told.
    b.get(&me, Some(&alice.token)).await.expect_error(
        401,
        "unauthenticated",
        "the revoked token on b",
    );
    expect_token_revoked(&mut conn_b).await;
    let mut again = Stomp::open(cluster.nodes[1].port()).await;
    let auth = format!("Bearer {}", alice.token);
    let f = again
        .send_connect(&[("Authorization", auth.as_str())])
        .await;
    assert_eq!(f.command, herald::stomp::Command::Error, "{f:?}");
    // The other token lives on, until a logout-all on node a.
    b.get(&me, Some(&second))
        .await
        .expect(200, "the other token");
    a.post_empty(&format!("{API}/auth/logout-all"), Some(&second))
        .await
        .expect(204, "logout-all on a");
    b.get(&me, Some(&second))
        .await
        .expect_error(401, "unauthenticated", "after logout-all, on b");
    expect_token_revoked(&mut second_b).await;
    let fresh = b.login(&alice.username, &alice.password).await;
    let fresh = fresh.expect(200, "a login after logout-all")["token"]
        .as_str()
        .unwrap()
        .to_string();
    a.get(&me, Some(&fresh))
        .await
        .expect(200, "the new token on a");
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (cluster services)"]
async fn login_failures_count_over_every_node() {
    let cluster = Cluster::start_with(2, &[("HERALD_LOGIN_MAX_FAILURES", "4")]);
    let _logs = cluster.guards();
    let alice = cluster.api(0).new_user().await;
    for i in 0..4 {
        cluster
            .api(i % 2)
            .login(&alice.username, "wrong-password")
            .await
            .expect_error(401, "unauthenticated", "a wrong password");
    }
    for node in 0..2 {
        let r = cluster
            .api(node)
            .login(&alice.username, &alice.password)
            .await;
        r.expect_error(429, "rate_limited", "throttled on every node");
        r.retry_after();
    }
}
