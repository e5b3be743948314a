//! The Redis backend of the cluster against a real Redis (the one
//! `scripts/services.sh up` starts; `HERALD_REDIS_URL` names it): the node
//! id lease, device counts and presence over nodes, notices between
//! nodes, a dead node's devices swept away, the shared send quota and the
//! idempotency keys. Run by `scripts/test.sh` (`--ignored`).

use std::sync::Arc;
use std::time::Duration;

use herald::cluster::redis::{connect, Claim, RedisPresence, RedisQuotas, SendKeys};
use herald::service::backend::{Locations, NodeMail, Presence, Quotas};
use herald::service::notices::Notice;
use parking_lot::Mutex;

fn url() -> String {
    std::env::var("HERALD_REDIS_URL").expect("HERALD_REDIS_URL (run scripts/services.sh env)")
}

/// A cluster name no other test run uses.
fn cluster() -> String {
    format!("t{:08x}", rand::random::<u32>())
}

#[derive(Default)]
struct Inbox(Mutex<Vec<Notice>>);

impl NodeMail for Inbox {
    fn receive(&self, notice: Notice) {
        self.0.lock().push(notice);
    }
}

impl Inbox {
    async fn wait_for(&self, n: usize) -> Vec<Notice> {
        for _ in 0..200 {
            if self.0.lock().len() >= n {
                return self.0.lock().clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} notices, got {:?}", self.0.lock());
    }
}

#[tokio::test]
#[ignore = "needs Redis: scripts/services.sh up, then HERALD_REDIS_URL"]
async fn a_node_id_is_held_by_one_process_at_a_time() {
    let c = cluster();
    let first = RedisPresence::open(&url(), &c, 1).await.unwrap();
    let err = RedisPresence::open(&url(), &c, 1)
        .await
        .err()
        .expect("held");
    assert!(err.to_string().contains("HERALD_NODE_ID"), "{err}");
    let other = RedisPresence::open(&url(), &c, 2).await.unwrap();
    first.close().await.unwrap();
    let again = RedisPresence::open(&url(), &c, 1).await.unwrap();
    again.close().await.unwrap();
    other.close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis: scripts/services.sh up, then HERALD_REDIS_URL"]
async fn devices_count_over_every_node_and_presence_follows() {
    let c = cluster();
    let a = RedisPresence::open(&url(), &c, 1).await.unwrap();
    let b = RedisPresence::open(&url(), &c, 2).await.unwrap();
    // Each node sees the other once it beat.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(a.device_connected(7, 2).await.unwrap());
    assert!(b.device_connected(7, 2).await.unwrap());
    assert!(!a.device_connected(7, 2).await.unwrap(), "two already");
    assert!(b.device_connected(8, 2).await.unwrap());
    let seen = a.presence(&[7, 8, 9]).await.unwrap();
    assert!(seen[0].online && seen[1].online && !seen[2].online);
    assert_eq!(seen[2].last_seen_at, None);
    let Locations::Nodes(mut nodes) = b.locate(&[7, 8, 9]).await.unwrap() else {
        panic!("a cluster names nodes");
    };
    nodes.sort();
    assert_eq!(nodes, vec![(1, vec![7]), (2, vec![7, 8])]);
    a.device_disconnected(7).await.unwrap();
    let seen = b.presence(&[7]).await.unwrap();
    assert!(seen[0].online, "one device left, on node 2");
    assert_eq!(seen[0].last_seen_at, None);
    b.device_disconnected(7).await.unwrap();
    let seen = a.presence(&[7]).await.unwrap();
    assert!(!seen[0].online);
    assert!(seen[0].last_seen_at.is_some());
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis: scripts/services.sh up, then HERALD_REDIS_URL"]
async fn notices_reach_the_node_named_and_broadcasts_every_other() {
    let (c, url) = (cluster(), url());
    let mut nodes = Vec::new();
    for n in 1..=3 {
        nodes.push(RedisPresence::open(&url, &c, n).await.unwrap());
    }
    let inboxes: Vec<Arc<Inbox>> = nodes
        .iter()
        .map(|n| {
            let inbox = Arc::new(Inbox::default());
            n.attach(inbox.clone());
            inbox
        })
        .collect();
    // Subscriptions are made in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes[0].tell(2, Notice::SessionChanged(5)).await.unwrap();
    nodes[0].tell_all(Notice::SessionChanged(6)).await.unwrap();
    let at_two = inboxes[1].wait_for(2).await;
    assert!(matches!(
        at_two[..],
        [Notice::SessionChanged(5), Notice::SessionChanged(6)]
    ));
    let at_three = inboxes[2].wait_for(1).await;
    assert!(matches!(at_three[..], [Notice::SessionChanged(6)]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        inboxes[0].0.lock().is_empty(),
        "a node does not hear itself"
    );
    assert_eq!(inboxes[2].0.lock().len(), 1, "nor what was for another");
    let gone = nodes[0].tell(9, Notice::SessionChanged(7)).await;
    assert!(gone.is_err(), "nobody listens for node 9");
    for n in &nodes {
        n.close().await.unwrap();
    }
}

#[tokio::test]
#[ignore = "needs Redis: scripts/services.sh up, then HERALD_REDIS_URL"]
async fn a_dead_nodes_devices_stop_counting_and_are_swept() {
    let c = cluster();
    let alive = RedisPresence::open(&url(), &c, 1).await.unwrap();
    {
        let doomed = RedisPresence::open(&url(), &c, 2).await.unwrap();
        assert!(doomed.device_connected(42, 1).await.unwrap());
        // Dropped without closing: its heartbeat stops, as in a crash.
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = alive.presence(&[42]).await.unwrap();
        if !seen[0].online && seen[0].last_seen_at.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never swept: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Its device no longer counts against the cap.
    assert!(alive.device_connected(42, 1).await.unwrap());
    alive.close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis: scripts/services.sh up, then HERALD_REDIS_URL"]
async fn the_send_quota_is_shared_by_every_node() {
    let c = cluster();
    let (_, conn_a) = connect(&url()).await.unwrap();
    let (_, conn_b) = connect(&url()).await.unwrap();
    let a = RedisQuotas::new(conn_a, &c, 1, 3);
    let b = RedisQuotas::new(conn_b, &c, 1, 3);
    assert!(a.take_send(5).await.unwrap());
    assert!(b.take_send(5).await.unwrap());
    assert!(a.take_send(5).await.unwrap());
    assert!(!b.take_send(5).await.unwrap(), "the burst of 3 is used");
    assert!(a.take_send(6).await.unwrap(), "another user's own bucket");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(b.take_send(5).await.unwrap(), "one more a second later");
    assert!(!a.take_send(5).await.unwrap());
}

#[tokio::test]
#[ignore = "needs Redis: scripts/services.sh up, then HERALD_REDIS_URL"]
async fn a_send_key_answers_repeats_and_frees_itself_on_failure() {
    let c = cluster();
    let (_, conn) = connect(&url()).await.unwrap();
    let keys = SendKeys::new(conn, &c);
    assert_eq!(keys.claim("1:a", b"r1").await.unwrap(), Claim::Mine);
    keys.done("1:a", b"r1").await.unwrap();
    assert_eq!(
        keys.claim("1:a", b"other").await.unwrap(),
        Claim::Done(b"r1".to_vec())
    );
    // Not published: the retry gets the key.
    assert_eq!(keys.claim("1:b", b"r2").await.unwrap(), Claim::Mine);
    keys.release("1:b", b"r2").await.unwrap();
    assert_eq!(keys.claim("1:b", b"r3").await.unwrap(), Claim::Mine);
    // A repeat waits while the original is pending...
    let waiting = {
        let (_, conn) = connect(&url()).await.unwrap();
        let keys = SendKeys::new(conn, &c);
        tokio::spawn(async move { keys.claim("1:b", b"r4").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    keys.done("1:b", b"r3").await.unwrap();
    // ...and gets the original's receipt once it is done.
    assert_eq!(waiting.await.unwrap().unwrap(), Claim::Done(b"r3".to_vec()));
    // A key left pending by a publisher that died is taken over.
    assert_eq!(keys.claim("1:c", b"r5").await.unwrap(), Claim::Mine);
    let started = std::time::Instant::now();
    assert_eq!(keys.claim("1:c", b"r6").await.unwrap(), Claim::Mine);
    assert!(started.elapsed() >= Duration::from_secs(4));
}
