//! Durability: a message whose SendAck (or RECEIPT) went out survives a
//! SIGKILL of the server, and a documents commit that fails after its
//! writes were pushed, exactly once, with gap-free seqs; idempotency on
//! clientMessageId survives the crash too.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use herald::embedded::FAIL_WRITES_ENV;
use herald::stomp::Command;
use parking_lot::Mutex;
use serde_json::Value;

const SENDERS: usize = 3;
const PER_SENDER: usize = 100;
/// Kill once this many sends have been confirmed (of 300).
const KILL_AFTER: usize = 150;

#[derive(Default)]
struct Confirmed {
    /// (sender index, clientMessageId) -> messageId, from SendAcks.
    acks: HashMap<(usize, String), String>,
    /// (sender index, clientMessageId) confirmed by a RECEIPT.
    receipts: HashSet<(usize, String)>,
}

impl Confirmed {
    fn keys(&self) -> HashSet<(usize, String)> {
        self.acks
            .keys()
            .cloned()
            .chain(self.receipts.iter().cloned())
            .collect()
    }
}

fn record(f: &herald::stomp::Frame, s: usize, confirmed: &Mutex<Confirmed>, count: &AtomicUsize) {
    match f.command {
        Command::Receipt => {
            let id = f.header("receipt-id").expect("receipt-id").to_string();
            let mut c = confirmed.lock();
            let before = c.keys().len();
            c.receipts.insert((s, id));
            if c.keys().len() > before {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
        Command::Message if f.header("subscription") == Some("ack") => {
            let ack = body_json(f);
            let cmid = ack["clientMessageId"].as_str().expect("cmid").to_string();
            let mid = assert_send_ack(&ack, &cmid);
            let mut c = confirmed.lock();
            let before = c.keys().len();
            if let Some(prev) = c.acks.insert((s, cmid.clone()), mid.clone()) {
                assert_eq!(prev, mid, "two SendAcks for {cmid} disagree");
            }
            if c.keys().len() > before {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
        Command::Message => {
            panic!("rejected send during the crash test: {:?}", f.body_str());
        }
        Command::Error => panic!("ERROR frame during the crash test: {f:?}"),
        _ => {}
    }
}

/// Default durability (`full`), no send rate limit.
fn server() -> TestServer {
    TestServer::start_with(vec![
        ("HERALD_SEND_RATE_PER_SEC".into(), "100000".into()),
        ("HERALD_SEND_BURST".into(), "100000".into()),
    ])
}

/// The users of a run: senders write to a group they share with the
/// recipient and to the recipient alone.
struct Cast {
    senders: Vec<TestUser>,
    recipient: TestUser,
    gid: String,
}

async fn cast(srv: &TestServer) -> Cast {
    let api = srv.api();
    let senders = api.new_users(SENDERS).await;
    let recipient = api.new_user().await;
    let mut members: Vec<&TestUser> = senders.iter().skip(1).collect();
    members.push(&recipient);
    let g = api
        .create_group(&senders[0], &unique("crash"), &members)
        .await;
    let gid = g["groupId"].as_str().unwrap().to_string();
    Cast {
        senders,
        recipient,
        gid,
    }
}

/// Sender tasks writing SENDs with receipts until their connection dies.
struct Stream {
    tasks: Vec<tokio::task::JoinHandle<usize>>,
    confirmed: Arc<Mutex<Confirmed>>,
    count: Arc<AtomicUsize>,
    run: String,
}

/// What the senders wrote and had confirmed before the server went down.
struct Outcome {
    confirmed: Confirmed,
    sent_per_sender: Vec<usize>,
    run: String,
}

impl Stream {
    fn confirmed_count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    async fn finish(self) -> Outcome {
        let mut sent_per_sender = Vec::new();
        for t in self.tasks {
            sent_per_sender.push(t.await.expect("sender task panicked"));
        }
        let confirmed = Arc::try_unwrap(self.confirmed)
            .ok()
            .expect("tasks are done")
            .into_inner();
        Outcome {
            confirmed,
            sent_per_sender,
            run: self.run,
        }
    }
}

/// Starts `SENDERS` tasks sending `per_sender` messages each, alternately to
/// the group and to the recipient.
async fn start_stream(srv: &TestServer, cast: &Cast, per_sender: usize) -> Stream {
    let confirmed = Arc::new(Mutex::new(Confirmed::default()));
    let count = Arc::new(AtomicUsize::new(0));
    let run = unique("x");
    let mut tasks = Vec::new();
    for (s, u) in cast.senders.iter().enumerate() {
        let mut c = srv.stomp(&u.token).await;
        c.subscribe("/user/queue/ack", "ack", "auto").await;
        c.subscribe("/user/queue/errors", "err", "auto").await;
        let (confirmed, count) = (confirmed.clone(), count.clone());
        let (gid, run, to) = (
            cast.gid.clone(),
            run.clone(),
            cast.recipient.user_id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut sent = 0usize;
            'sending: for i in 0..per_sender {
                let cmid = format!("{run}-{s}-{i}");
                let req = if i % 2 == 0 {
                    send_req_group(&gid, &format!("g {s} {i}"), &cmid)
                } else {
                    send_req_user(&to, &format!("u {s} {i}"), &cmid)
                };
                let f = frame(
                    Command::Send,
                    &[
                        ("destination", "/app/send"),
                        ("content-type", "application/json"),
                        ("receipt", cmid.as_str()),
                    ],
                    serde_json::to_vec(&req).unwrap(),
                );
                if c.try_send_frame(&f).await.is_err() {
                    break;
                }
                sent += 1;
                // Take whatever has arrived, pacing the stream a little.
                let pace = Instant::now() + Duration::from_millis(2);
                loop {
                    let left = pace.saturating_duration_since(Instant::now());
                    match c.try_recv_frame(left.max(Duration::from_millis(1))).await {
                        Ok(f) => record(&f, s, &confirmed, &count),
                        Err(RecvError::Timeout) => break,
                        Err(RecvError::Closed(_)) => break 'sending,
                    }
                }
            }
            // Collect the rest until the connection dies or all are in.
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                match c.try_recv_frame(Duration::from_millis(200)).await {
                    Ok(f) => record(&f, s, &confirmed, &count),
                    Err(RecvError::Closed(_)) => break,
                    Err(RecvError::Timeout) => {}
                }
            }
            sent
        }));
    }
    Stream {
        tasks,
        confirmed,
        count,
        run,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipted_messages_survive_sigkill_exactly_once() {
    let mut srv = server();
    let _log = srv.log_guard();
    let cast = cast(&srv).await;
    let stream = start_stream(&srv, &cast, PER_SENDER).await;

    // Kill mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stream.confirmed_count() < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "only {} sends confirmed in 30 s",
            stream.confirmed_count()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    srv.kill_9();
    let at_kill = stream.confirmed_count();
    let outcome = stream.finish().await;
    let sent_total: usize = outcome.sent_per_sender.iter().sum();
    let confirmed = outcome.confirmed.keys().len();
    eprintln!(
        "crash test: {sent_total} SENDs written, {at_kill} confirmed at the kill, {confirmed} confirmed in total"
    );
    assert!(confirmed >= KILL_AFTER);
    assert!(
        confirmed < SENDERS * PER_SENDER,
        "the kill must interrupt the stream (all {confirmed} were confirmed first); \
         raise the load or lower KILL_AFTER"
    );

    srv.restart();
    assert_nothing_confirmed_was_lost(&srv, &cast, outcome).await;
}

/// A documents commit failing after the consumer pushed its messages
/// (`writer::lost_released_writes`): the process must stop rather than
/// serve on without them, and its restart stores them again from the
/// session topic, under the numbers they were pushed with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_documents_commit_exits_and_the_restart_stores_what_it_held() {
    let mut srv = server();
    let _log = srv.log_guard();
    let cast = cast(&srv).await;
    // From the next start on, the documents WAL takes five commits and
    // then fails every write (~0.1 s of streaming at 20 ms per commit).
    srv.set_env(FAIL_WRITES_ENV, Some("herald.db-wal:5"));
    srv.restart();
    // Long enough a stream that the failure comes first.
    let per_sender = 10 * PER_SENDER;
    let stream = start_stream(&srv, &cast, per_sender).await;
    let status = srv.wait_for_exit(Duration::from_secs(30)).await;
    assert_eq!(
        status.code(),
        Some(74),
        "a failed commit of pushed messages must exit with 74, got {status}\n{}",
        srv.log_tail(20)
    );
    assert!(
        srv.log_tail(200)
            .contains("exiting so that a restart replays them"),
        "the exit must say why\n{}",
        srv.log_tail(20)
    );
    let outcome = stream.finish().await;
    let confirmed = outcome.confirmed.keys().len();
    let sent_total: usize = outcome.sent_per_sender.iter().sum();
    eprintln!("failed-commit test: {sent_total} SENDs written, {confirmed} confirmed");
    assert!(confirmed > 0, "nothing was confirmed before the failure");
    assert!(
        confirmed < SENDERS * per_sender,
        "the failure must interrupt the stream"
    );

    srv.set_env(FAIL_WRITES_ENV, None);
    srv.restart();
    assert_nothing_confirmed_was_lost(&srv, &cast, outcome).await;
}

/// After a restart: every confirmed send is stored exactly once for the
/// recipient and in its sender's inbox, under the id its SendAck gave,
/// with gap-free `seq`s and `inboxSeq`s; resending anything written gives
/// the original back; and new messages continue the numbering.
async fn assert_nothing_confirmed_was_lost(srv: &TestServer, cast: &Cast, outcome: Outcome) {
    let Cast {
        senders,
        recipient,
        gid,
    } = cast;
    let Outcome {
        confirmed,
        sent_per_sender,
        run,
    } = outcome;
    let keys = confirmed.keys();
    let api = srv.api();

    // The recipient sees every message of every session it is in.
    let inbox = api.sync_all(recipient).await;
    let sender_index: HashMap<&str, usize> = senders
        .iter()
        .enumerate()
        .map(|(i, u)| (u.user_id.as_str(), i))
        .collect();
    let mut by_key: HashMap<(usize, String), Vec<&Value>> = HashMap::new();
    let mut by_mid: HashMap<&str, usize> = HashMap::new();
    let mut by_session: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for m in &inbox {
        assert_message_vo(m);
        let s = sender_index[m["senderId"].as_str().unwrap()];
        let cmid = m["clientMessageId"].as_str().unwrap().to_string();
        by_key.entry((s, cmid)).or_default().push(m);
        *by_mid.entry(m["messageId"].as_str().unwrap()).or_default() += 1;
        by_session
            .entry(m["sessionId"].as_str().unwrap())
            .or_default()
            .push(m["seq"].as_i64().unwrap());
    }
    for (mid, n) in &by_mid {
        assert_eq!(
            *n, 1,
            "message {mid} appears {n} times in the recipient's inbox"
        );
    }
    for (key, list) in &by_key {
        assert_eq!(list.len(), 1, "{key:?} stored {} times", list.len());
    }
    for key in &keys {
        let list = by_key
            .get(key)
            .unwrap_or_else(|| panic!("confirmed message {key:?} was lost in the crash"));
        if let Some(mid) = confirmed.acks.get(key) {
            assert_eq!(
                list[0]["messageId"].as_str(),
                Some(mid.as_str()),
                "{key:?}: stored id differs from the SendAck"
            );
        }
    }
    assert_eq!(
        by_session.len(),
        1 + SENDERS,
        "one group + one single per sender"
    );
    for (sid, seqs) in &mut by_session {
        seqs.sort_unstable();
        let want: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(
            seqs, &want,
            "session {sid}: seq must be gap-free without duplicates"
        );
    }
    // Inbox seqs are gap-free too.
    let inbox_seqs: Vec<i64> = inbox
        .iter()
        .map(|m| m["inboxSeq"].as_i64().unwrap())
        .collect();
    let want: Vec<i64> = (1..=inbox.len() as i64).collect();
    assert_eq!(inbox_seqs, want, "recipient inboxSeq gap-free");

    // Each sender has its own copies, exactly once, read.
    for (s, u) in senders.iter().enumerate() {
        let mine = api.sync_all(u).await;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in mine
            .iter()
            .filter(|m| m["senderId"].as_str() == Some(u.user_id.as_str()))
        {
            assert_eq!(m["status"].as_str(), Some("read"), "{m}");
            *seen
                .entry(m["clientMessageId"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        for (cmid, n) in &seen {
            assert_eq!(*n, 1, "sender {s}: {cmid} in its inbox {n} times");
            assert!(
                by_key.contains_key(&(s, cmid.clone())),
                "sender {s}: {cmid} missing for the recipient"
            );
        }
        for (ks, cmid) in keys.iter().filter(|(ks, _)| *ks == s) {
            assert!(
                seen.contains_key(cmid),
                "sender {ks}: confirmed {cmid} missing from the sender's sync"
            );
        }
        let theirs = by_key.keys().filter(|(ks, _)| *ks == s).count();
        assert_eq!(seen.len(), theirs, "sender {s}: own copies vs recipient's");
    }

    // Idempotency survives the crash: resend every SEND that was written
    // (confirmed or not). Confirmed ones return their original id; none
    // may create a second message.
    let req_for = |s: usize, i: usize, cmid: &str| {
        if i.is_multiple_of(2) {
            send_req_group(gid, &format!("g {s} {i}"), cmid)
        } else {
            send_req_user(&recipient.user_id, &format!("u {s} {i}"), cmid)
        }
    };
    let mut resent: HashMap<(usize, String), String> = HashMap::new();
    for (s, &n) in sent_per_sender.iter().enumerate() {
        for i in 0..n {
            let cmid = format!("{run}-{s}-{i}");
            let r = api.send(&senders[s], &req_for(s, i, &cmid)).await;
            let ack = r.expect(202, "resend after crash").clone();
            let mid = assert_send_ack(&ack, &cmid);
            let key = (s, cmid.clone());
            if let Some(orig) = confirmed.acks.get(&key) {
                assert_eq!(
                    &mid, orig,
                    "resending confirmed {cmid} after the crash must return the original id"
                );
            }
            if let Some(stored) = by_key.get(&key) {
                assert_eq!(
                    stored[0]["messageId"].as_str(),
                    Some(mid.as_str()),
                    "resending stored {cmid} must return the stored id"
                );
            }
            resent.insert(key, mid);
        }
    }
    assert!(
        !confirmed.acks.is_empty(),
        "no SendAck was recorded before the crash"
    );
    // Over STOMP too.
    let (s, cmid) = keys.iter().max().unwrap().clone();
    let mut c = srv.stomp(&senders[s].token).await;
    c.subscribe("/user/queue/ack", "ack", "auto").await;
    let i: usize = cmid.rsplit('-').next().unwrap().parse().unwrap();
    let ack = c.send_message(&req_for(s, i, &cmid), "ack").await;
    assert_eq!(
        ack["messageId"].as_str(),
        Some(resent[&(s, cmid.clone())].as_str())
    );

    // Everything written is now stored exactly once, seqs still gap-free,
    // and a brand-new message continues the group's seq.
    let fresh = api.send_to_group(&senders[0], gid, "after the crash").await;
    let after = api
        .wait_visible(recipient, fresh["messageId"].as_str().unwrap())
        .await;
    for mid in resent.values() {
        assert!(
            after
                .iter()
                .any(|m| m["messageId"].as_str() == Some(mid.as_str())),
            "resent message {mid} never reached the recipient"
        );
    }
    assert_eq!(
        after.len(),
        resent.len() + 1,
        "written SENDs + 1 new message, each exactly once"
    );
    let mut by_session: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut keys_after: HashSet<(String, String)> = HashSet::new();
    for m in &after {
        by_session
            .entry(m["sessionId"].as_str().unwrap())
            .or_default()
            .push(m["seq"].as_i64().unwrap());
        assert!(
            keys_after.insert((
                m["senderId"].as_str().unwrap().to_string(),
                m["clientMessageId"].as_str().unwrap().to_string()
            )),
            "duplicate after resends: {m}"
        );
    }
    for (sid, seqs) in &mut by_session {
        seqs.sort_unstable();
        let want: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, &want, "session {sid} after resends");
    }
    let group_sid = fresh["sessionId"].as_str().unwrap();
    let last = after
        .iter()
        .find(|m| m["messageId"] == fresh["messageId"])
        .unwrap();
    assert_eq!(
        last["seq"].as_i64(),
        Some(by_session[group_sid].len() as i64),
        "the new message takes the next seq of the group"
    );
    let inbox_seqs: Vec<i64> = after
        .iter()
        .map(|m| m["inboxSeq"].as_i64().unwrap())
        .collect();
    let want: Vec<i64> = (1..=after.len() as i64).collect();
    assert_eq!(
        inbox_seqs, want,
        "recipient inboxSeq gap-free after restart"
    );
    c.disconnect().await;
}

/// A topics disk that fails: every send is refused with a clear
/// `unavailable` (503 over REST, an error on `/user/queue/errors` over
/// STOMP, the connection kept), nothing hangs, the server keeps serving
/// reads, and every send confirmed before the failure is delivered and,
/// after a restart, stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_topics_disk_refuses_sends_and_keeps_what_it_confirmed() {
    let mut srv = server();
    let _log = srv.log_guard();
    let cast = cast(&srv).await;
    srv.set_env(FAIL_WRITES_ENV, Some("topics/session:10"));
    srv.restart();
    let api = srv.api();
    let (sender, recipient) = (&cast.senders[0], &cast.recipient);
    let run = unique("t");
    let mut confirmed = Vec::new();
    let refused = loop {
        assert!(confirmed.len() < 200, "the topics never failed");
        let cmid = format!("{run}-{}", confirmed.len());
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            api.send(sender, &send_req_user(&recipient.user_id, "t", &cmid)),
        )
        .await
        .expect("a send must be answered, not hang");
        if r.status != 202 {
            break r;
        }
        confirmed.push(assert_send_ack(&r.body, &cmid));
    };
    eprintln!(
        "failing-topics test: {} sends confirmed before the failure",
        confirmed.len()
    );
    refused.expect_error(503, "unavailable", "send while the topics fail");
    assert!(
        !confirmed.is_empty(),
        "no send was confirmed before the failure"
    );

    // Over STOMP: an error to the sender, and the connection stays open.
    let mut c = srv.stomp(&sender.token).await;
    c.subscribe("/user/queue/errors", "err", "auto").await;
    let cmid = format!("{run}-stomp");
    c.send_json(
        "/app/send",
        &send_req_user(&recipient.user_id, "t", &cmid),
        None,
    )
    .await;
    let err = c.recv_json_on("err", Duration::from_secs(10)).await;
    assert_eq!(err["code"].as_str(), Some("unavailable"), "{err}");
    assert_eq!(
        err["clientMessageId"].as_str(),
        Some(cmid.as_str()),
        "{err}"
    );
    // Still open and answering: the UNSUBSCRIBE gets its RECEIPT.
    c.unsubscribe("err").await;

    // Reads still work, and what was confirmed is delivered.
    let last = confirmed.last().unwrap();
    let inbox = api.wait_visible(recipient, last).await;
    for mid in &confirmed {
        assert!(
            inbox.iter().any(|m| m["messageId"].as_str() == Some(mid)),
            "confirmed {mid} not delivered while the topics fail"
        );
    }
    assert!(
        srv.is_running(),
        "a failing topics disk must not stop the server"
    );

    srv.set_env(FAIL_WRITES_ENV, None);
    srv.restart();
    let api = srv.api();
    let inbox = api.sync_all(recipient).await;
    let ids: Vec<&str> = inbox
        .iter()
        .filter_map(|m| m["messageId"].as_str())
        .collect();
    assert_eq!(
        ids, confirmed,
        "exactly the confirmed sends, once, in order"
    );
    // The refused ones were not stored: sending them again creates them,
    // after everything confirmed.
    let again = api
        .send(sender, &send_req_user(&recipient.user_id, "t", &cmid))
        .await;
    let mid = assert_send_ack(again.expect(202, "resend after the failure"), &cmid);
    assert!(!confirmed.contains(&mid));
    let inbox = api.wait_visible(recipient, &mid).await;
    let ids: Vec<&str> = inbox
        .iter()
        .filter_map(|m| m["messageId"].as_str())
        .collect();
    let mut want: Vec<&str> = confirmed.iter().map(String::as_str).collect();
    want.push(&mid);
    assert_eq!(ids, want, "the resend is one new message, last");
}
