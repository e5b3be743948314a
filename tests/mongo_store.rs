//! The MongoDB store against a real MongoDB-wire server (the SecantusDB
//! that `scripts/services.sh up` starts; `HERALD_MONGODB_URI` names it),
//! each test in a database of its own: users and groups, the single
//! session of a pair agreed under concurrency, gap-free numbering (also by
//! two stores, as two nodes, writing one session at once), idempotent
//! storing, acks, recall, and the reads compared field by field with what
//! the embedded store answers for the same operations. Run by
//! `scripts/test.sh` (`--ignored`).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use herald::cluster::mongo::MongoStore;
use herald::embedded::{Embedded, SqliteStore};
use herald::error::BackendError;
use herald::model::{
    AckCommand, AckOutcome, AckRecord, Group, InboxMessage, InboxStatus, SendRecord,
    SessionSummary, SessionType, StoredBatch, User,
};
use herald::service::backend::{Checkpoint, RecallOutcome, Store};

fn uri() -> String {
    std::env::var("HERALD_MONGODB_URI").expect("HERALD_MONGODB_URI (run scripts/services.sh env)")
}

/// A database no other test (run) uses.
fn database() -> String {
    format!("herald_t{:08x}", rand::random::<u32>())
}

/// Drops a test's database (a failed test leaves its own behind).
async fn drop_database(name: &str) {
    let client = mongodb::Client::with_uri_str(uri()).await.unwrap();
    client.database(name).drop().await.unwrap();
}

async fn open() -> (MongoStore, String) {
    let db = database();
    (MongoStore::open(&uri(), &db).await.unwrap(), db)
}

fn at(offset: u64) -> Checkpoint {
    Checkpoint {
        consumer: "session",
        partition: 0,
        first: offset,
        last: offset,
    }
}

fn user(id: u64, name: &str) -> User {
    User {
        user_id: id,
        username: name.to_string(),
        nickname: format!("nick {name}"),
        password_hash: "hash".into(),
        created_at: 1_000 + id as i64,
    }
}

async fn users(store: &dyn Store, ids: impl IntoIterator<Item = u64>) {
    for id in ids {
        assert!(store
            .create_user(user(id, &format!("user{id}")))
            .await
            .unwrap());
    }
}

fn single(message_id: u64, session_id: u64, from: u64, to: u64, ts: i64) -> SendRecord {
    SendRecord {
        origin_node: 0,
        origin_conn: None,
        message_id,
        session_id,
        session_type: SessionType::Single,
        sender_id: from,
        to_user_id: Some(to),
        group_id: None,
        message_type: 1,
        content: format!("message {message_id}"),
        client_message_id: format!("c{message_id}"),
        client_ts: ts - 5,
        server_ts: ts,
        adjusted_ts: ts - 5,
    }
}

fn grouped(message_id: u64, session_id: u64, group_id: u64, from: u64, ts: i64) -> SendRecord {
    SendRecord {
        session_type: SessionType::Group,
        to_user_id: None,
        group_id: Some(group_id),
        ..single(message_id, session_id, from, from, ts)
    }
}

fn group(group_id: u64, session_id: u64, owner: u64, members: &[u64]) -> Group {
    Group {
        group_id,
        session_id,
        name: format!("group {group_id}"),
        owner_id: owner,
        member_ids: members.to_vec(),
        created_at: 5_000,
    }
}

fn ack(user_id: u64, command: AckCommand) -> AckRecord {
    AckRecord {
        user_id,
        command,
        reply_token: None,
        reply_node: 0,
    }
}

/// Every field of a message as a user sees it.
fn view(m: &InboxMessage) -> (serde_json::Value, i64, InboxStatus) {
    (
        serde_json::to_value(&*m.doc).unwrap(),
        m.inbox_seq,
        m.status,
    )
}

fn views(ms: &[InboxMessage]) -> Vec<(serde_json::Value, i64, InboxStatus)> {
    ms.iter().map(view).collect()
}

type SummaryView = (
    u64,
    SessionType,
    Option<u64>,
    Option<u64>,
    Option<String>,
    Option<(serde_json::Value, i64, InboxStatus)>,
    i64,
    i64,
);

fn summaries(list: &[SessionSummary]) -> Vec<SummaryView> {
    list.iter()
        .map(|s| {
            (
                s.session_id,
                s.session_type,
                s.peer_id,
                s.group_id,
                s.name.clone(),
                s.last_message.as_ref().map(view),
                s.unread_count,
                s.updated_at,
            )
        })
        .collect()
}

fn outcome(o: &AckOutcome) -> (u64, Vec<u64>) {
    (o.updated, o.no_longer_pending.clone())
}

/// All of a user's entries, by sync, with their inboxSeqs checked 1..=n.
async fn whole_inbox(store: &dyn Store, user_id: u64) -> Vec<InboxMessage> {
    let all = store.sync(user_id, 0, 100_000).await.unwrap();
    let seqs: Vec<i64> = all.iter().map(|m| m.inbox_seq).collect();
    let expected: Vec<i64> = (1..=all.len() as i64).collect();
    assert_eq!(seqs, expected, "user {user_id}'s inboxSeqs have gaps");
    all
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn usernames_are_unique_in_any_case() {
    let (store, db) = open().await;
    assert!(store.create_user(user(1, "Alice")).await.unwrap());
    assert!(!store.create_user(user(2, "aLICE")).await.unwrap());
    assert!(
        !store.create_user(user(1, "other")).await.unwrap(),
        "id taken"
    );
    assert!(store.create_user(user(3, "bob")).await.unwrap());
    let alice = store.user_by_username("ALICE").await.unwrap().unwrap();
    assert_eq!((alice.user_id, alice.username.as_str()), (1, "Alice"));
    assert_eq!(alice.nickname, "nick Alice");
    assert_eq!(alice.created_at, 1_001);
    assert!(store.user_by_username("carol").await.unwrap().is_none());
    assert_eq!(store.user_by_id(3).await.unwrap().unwrap().username, "bob");
    assert!(store.user_by_id(2).await.unwrap().is_none());
    assert_eq!(
        store.existing_users(&[3, 2, 1, 3, 99]).await.unwrap(),
        vec![3, 1, 3]
    );
    // Another database knows none of them.
    let empty = database();
    let other = MongoStore::open(&uri(), &empty).await.unwrap();
    assert!(other.user_by_id(1).await.unwrap().is_none());
    drop_database(&empty).await;
    drop_database(&db).await;
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn groups_keep_their_members_in_join_order() {
    let (store, db) = open().await;
    users(&store, 1..=5).await;
    store
        .create_group(group(10, 100, 3, &[3, 1, 2, 1]))
        .await
        .unwrap();
    let g = store.group(10).await.unwrap().unwrap();
    assert_eq!((g.group_id, g.session_id, g.owner_id), (10, 100, 3));
    assert_eq!(g.name, "group 10");
    assert_eq!(g.member_ids, vec![3, 1, 2]);
    // Added together, after everyone there (2 is already), in the order
    // given.
    store.add_group_members(10, &[2, 5, 4]).await.unwrap();
    assert_eq!(
        store.group(10).await.unwrap().unwrap().member_ids,
        vec![3, 1, 2, 5, 4]
    );
    assert!(store.remove_group_member(10, 1).await.unwrap());
    assert!(!store.remove_group_member(10, 1).await.unwrap());
    let info = store.session_info(100).await.unwrap().unwrap();
    assert_eq!(info.session_type, SessionType::Group);
    assert_eq!(info.group_id, Some(10));
    assert_eq!(info.members, vec![3, 2, 5, 4]);
    assert!(store.group(11).await.unwrap().is_none());
    assert!(store.session_info(101).await.unwrap().is_none());
    // Another node sees the same.
    let other = MongoStore::open(&uri(), &db).await.unwrap();
    assert_eq!(
        other.group(10).await.unwrap().unwrap().member_ids,
        vec![3, 2, 5, 4]
    );
    drop_database(&db).await;
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn every_node_gets_one_session_for_a_pair() {
    let (a, db) = open().await;
    let b = MongoStore::open(&uri(), &db).await.unwrap();
    users(&a, [7, 8]).await;
    let calls = (0..20u64).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (x, y) = if i % 3 == 0 { (7, 8) } else { (8, 7) };
        tokio::spawn(async move { store.single_session(x, y, 1_000 + i).await.unwrap() })
    });
    let ids: HashSet<u64> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = *ids.iter().next().unwrap();
    assert!((1_000..1_020).contains(&id));
    assert_eq!(a.single_session(8, 7, 5_000).await.unwrap(), id);
    let info = b.session_info(id).await.unwrap().unwrap();
    assert_eq!(info.session_type, SessionType::Single);
    assert_eq!(info.members, vec![7, 8]);
    assert_eq!(info.group_id, None);
    // No message yet: not in either user's list.
    assert!(a.sessions(7).await.unwrap().is_empty());
    a.store_messages(vec![single(1, id, 8, 7, 10)], at(1))
        .await
        .unwrap();
    let listed = a.sessions(7).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].peer_id, Some(8));
    assert_eq!(listed[0].name.as_deref(), Some("nick user8"));
    drop_database(&db).await;
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn numbers_are_gap_free_and_storing_again_stores_nothing() {
    let (store, db) = open().await;
    users(&store, 1..=4).await;
    let s12 = store.single_session(1, 2, 500).await.unwrap();
    let s13 = store.single_session(3, 1, 501).await.unwrap();
    store
        .create_group(group(9, 600, 1, &[1, 2, 3, 4]))
        .await
        .unwrap();
    let batch = vec![
        single(10, s12, 1, 2, 100),
        single(11, s13, 3, 1, 101),
        grouped(12, 600, 9, 2, 102),
        single(13, s12, 2, 1, 103),
        grouped(14, 600, 9, 4, 104),
    ];
    let stored = store.store_messages(batch.clone(), at(1)).await.unwrap();
    assert!(stored.known.is_empty());
    let seqs: Vec<(u64, i64)> = stored
        .stored
        .iter()
        .map(|m| (m.doc.message_id, m.doc.seq))
        .collect();
    assert_eq!(seqs, vec![(10, 1), (11, 1), (12, 1), (13, 2), (14, 2)]);
    assert_eq!(stored.stored[0].accepted_at_ms, 100);
    // Recipients: the sender's own entry is read, the others pending;
    // group members in join order.
    let refs: Vec<(u64, i64, InboxStatus)> = stored.stored[2]
        .recipients
        .iter()
        .map(|r| (r.user_id, r.inbox_seq, r.status))
        .collect();
    use InboxStatus::{Pending, Read};
    assert_eq!(
        refs,
        vec![
            (1, 3, Pending),
            (2, 2, Read),
            (3, 2, Pending),
            (4, 1, Pending)
        ]
    );
    // Per user: 1 has 10, 11, 12, 13, 14; 2 has 10, 12, 13, 14.
    let ones: Vec<u64> = whole_inbox(&store, 1)
        .await
        .iter()
        .map(|m| m.doc.message_id)
        .collect();
    assert_eq!(ones, vec![10, 11, 12, 13, 14]);
    let twos: Vec<u64> = whole_inbox(&store, 2)
        .await
        .iter()
        .map(|m| m.doc.message_id)
        .collect();
    assert_eq!(twos, vec![10, 12, 13, 14]);

    // The same batch again (a topic redelivers): nothing new, all known.
    let again = store.store_messages(batch.clone(), at(1)).await.unwrap();
    assert!(again.stored.is_empty());
    let known: Vec<(u64, u64, u64, i64)> = again
        .known
        .iter()
        .map(|k| {
            (
                k.message_id,
                k.accepted.message_id,
                k.accepted.session_id,
                k.accepted.server_ts,
            )
        })
        .collect();
    assert_eq!(
        known,
        vec![
            (10, 10, s12, 100),
            (11, 11, s13, 101),
            (12, 12, 600, 102),
            (13, 13, s12, 103),
            (14, 14, 600, 104)
        ]
    );
    // So does another node (opening it again finds the indexes there).
    let fresh = MongoStore::open(&uri(), &db).await.unwrap();
    let again = fresh.store_messages(batch.clone(), at(1)).await.unwrap();
    assert_eq!((again.stored.len(), again.known.len()), (0, 5));

    // A repeat of a send under a new message id, a repeat inside the
    // batch, and a new message: only the new one is stored, next in line.
    let mut repeat = single(20, s12, 1, 2, 200);
    repeat.client_message_id = "c10".into();
    let mut twice = single(22, s13, 3, 1, 202);
    twice.client_message_id = "c21".into();
    let next = store
        .store_messages(vec![repeat, single(21, s13, 3, 1, 201), twice], at(2))
        .await
        .unwrap();
    assert_eq!(next.stored.len(), 1);
    assert_eq!(
        (next.stored[0].doc.message_id, next.stored[0].doc.seq),
        (21, 2)
    );
    let inbox_seqs: Vec<(u64, i64)> = next.stored[0]
        .recipients
        .iter()
        .map(|r| (r.user_id, r.inbox_seq))
        .collect();
    // 3 had 11, 12 and 14; 1 had 10 to 14.
    assert_eq!(inbox_seqs, vec![(3, 4), (1, 6)]);
    let known: Vec<(u64, u64, u64, i64, &str)> = next
        .known
        .iter()
        .map(|k| {
            let a = &k.accepted;
            (
                k.message_id,
                a.message_id,
                a.session_id,
                a.server_ts,
                a.client_message_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        known,
        vec![(20, 10, s12, 100, "c10"), (22, 21, s13, 201, "c21")]
    );
    let sent = store.sent_message(1, "c10").await.unwrap().unwrap();
    assert_eq!(
        (sent.message_id, sent.session_id, sent.server_ts),
        (10, s12, 100)
    );
    assert!(store.sent_message(2, "c10").await.unwrap().is_none());
    assert_eq!(
        store.message(21).await.unwrap().unwrap().content,
        "message 21"
    );
    assert!(store.message(20).await.unwrap().is_none());
    drop_database(&db).await;
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn a_record_joins_its_pairs_session_or_creates_it() {
    let (store, db) = open().await;
    users(&store, 1..=3).await;
    let s12 = store.single_session(1, 2, 500).await.unwrap();
    // Records whose session has no document: one under a second id for a
    // pair that has a session, one for a pair that has none.
    let stored = store
        .store_messages(
            vec![single(10, 777, 2, 1, 100), single(11, 888, 1, 3, 101)],
            at(1),
        )
        .await
        .unwrap();
    let placed: Vec<(u64, i64)> = stored
        .stored
        .iter()
        .map(|m| (m.doc.session_id, m.doc.seq))
        .collect();
    assert_eq!(placed, vec![(s12, 1), (888, 1)]);
    assert_eq!(store.single_session(3, 1, 999).await.unwrap(), 888);
    assert_eq!(
        store.session_info(888).await.unwrap().unwrap().members,
        vec![1, 3]
    );
    let again = store
        .store_messages(vec![single(12, 777, 1, 2, 102)], at(2))
        .await
        .unwrap();
    assert_eq!(
        (again.stored[0].doc.session_id, again.stored[0].doc.seq),
        (s12, 2)
    );
    assert!(store.session_info(777).await.unwrap().is_none());
    drop_database(&db).await;
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn two_nodes_storing_one_session_at_once_leave_no_gap() {
    let (a, db) = open().await;
    let b = MongoStore::open(&uri(), &db).await.unwrap();
    users(&a, 1..=5).await;
    a.create_group(group(9, 600, 1, &[1, 2, 3, 4, 5]))
        .await
        .unwrap();
    // Each node warms its seq cache first, so that it is stale once the
    // other node has stored: the first number it gives is taken.
    a.store_messages(vec![grouped(1, 600, 9, 1, 1)], at(1))
        .await
        .unwrap();
    b.store_messages(vec![grouped(2, 600, 9, 2, 2)], at(1))
        .await
        .unwrap();
    let node = |store: MongoStore, base: u64| {
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for batch in 0..8u64 {
                let records: Vec<SendRecord> = (0..5u64)
                    .map(|i| {
                        let id = base + batch * 10 + i;
                        grouped(id, 600, 9, 1 + (id % 5), id as i64)
                    })
                    .collect();
                let stored: StoredBatch =
                    store.store_messages(records, at(batch + 2)).await.unwrap();
                assert_eq!(stored.stored.len(), 5);
                seqs.extend(stored.stored.iter().map(|m| (m.doc.message_id, m.doc.seq)));
            }
            seqs
        })
    };
    let (x, y) = tokio::join!(node(a.clone(), 1_000), node(b.clone(), 2_000));
    let mut seqs: Vec<(u64, i64)> = x.unwrap().into_iter().chain(y.unwrap()).collect();
    assert_eq!(seqs.len(), 80);
    // Unique and gap-free: 3..=82 (1 and 2 went first).
    let mut numbers: Vec<i64> = seqs.iter().map(|(_, s)| *s).collect();
    numbers.sort();
    assert_eq!(numbers, (3..=82).collect::<Vec<i64>>());
    // What each node reported is what is stored.
    seqs.sort();
    for (mid, seq) in &seqs {
        assert_eq!(a.message(*mid).await.unwrap().unwrap().seq, *seq);
    }
    // Every member has all 82 messages, in seq order, inboxSeqs 1..=82.
    for u in 1..=5 {
        let inbox = whole_inbox(&b, u).await;
        assert_eq!(inbox.len(), 82);
        let by_seq: Vec<i64> = inbox.iter().map(|m| m.doc.seq).collect();
        assert_eq!(by_seq, (1..=82).collect::<Vec<i64>>(), "user {u}");
    }
    // Pull pages through the session.
    let page = a.pull(3, 600, 40, 10).await.unwrap();
    let page: Vec<i64> = page.iter().map(|m| m.doc.seq).collect();
    assert_eq!(page, (41..=50).collect::<Vec<i64>>());
    drop_database(&db).await;
}

/// Two nodes storing two groups with the same members: every batch moves
/// the same users' counters, so the transactions conflict all the time;
/// each node gets its turn, and every inbox stays gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn two_nodes_storing_for_the_same_users_take_turns() {
    let (a, db) = open().await;
    let b = MongoStore::open(&uri(), &db).await.unwrap();
    users(&a, 1..=10).await;
    let members: Vec<u64> = (1..=10).collect();
    a.create_group(group(9, 900, 1, &members)).await.unwrap();
    a.create_group(group(10, 1_000, 1, &members)).await.unwrap();
    let node = |store: MongoStore, group_id: u64, session_id: u64| {
        tokio::spawn(async move {
            for batch in 0..4u64 {
                let records: Vec<SendRecord> = (0..20u64)
                    .map(|i| {
                        let id = session_id * 1_000 + batch * 100 + i;
                        grouped(id, session_id, group_id, 1 + i % 10, id as i64)
                    })
                    .collect();
                let stored = store.store_messages(records, at(batch + 1)).await.unwrap();
                assert_eq!(stored.stored.len(), 20);
            }
        })
    };
    let (x, y) = tokio::join!(node(a.clone(), 9, 900), node(b.clone(), 10, 1_000));
    x.unwrap();
    y.unwrap();
    for u in [1, 5, 10] {
        let inbox = whole_inbox(&a, u).await;
        assert_eq!(inbox.len(), 160);
        for session in [900, 1_000] {
            let seqs: Vec<i64> = inbox
                .iter()
                .filter(|m| m.doc.session_id == session)
                .map(|m| m.doc.seq)
                .collect();
            assert_eq!(seqs, (1..=80).collect::<Vec<i64>>());
        }
    }
    drop_database(&db).await;
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn acks_only_raise_the_callers_entries() {
    let (store, db) = open().await;
    users(&store, 1..=3).await;
    let s12 = store.single_session(1, 2, 500).await.unwrap();
    let s32 = store.single_session(3, 2, 501).await.unwrap();
    let stored = store
        .store_messages(
            vec![
                single(10, s12, 1, 2, 100),
                single(11, s12, 1, 2, 101),
                single(12, s12, 1, 2, 102),
                single(13, s32, 3, 2, 103),
                single(14, s12, 1, 2, 104),
            ],
            at(1),
        )
        .await
        .unwrap();
    // User 2's entries: 10 -> 1, 11 -> 2, 12 -> 3, 13 -> 4, 14 -> 5.
    let entry = |mid: u64| {
        let m = stored
            .stored
            .iter()
            .find(|m| m.doc.message_id == mid)
            .unwrap();
        m.recipients
            .iter()
            .find(|r| r.user_id == 2)
            .unwrap()
            .inbox_seq
    };
    use InboxStatus::{Delivered, Pending, Read};
    let outcomes = store
        .apply_acks(
            vec![
                // Delivered by entry; the wrong message id for an entry and
                // user 3 naming user 2's entry change nothing.
                ack(
                    2,
                    AckCommand::Entries {
                        entries: vec![(10, entry(10)), (11, entry(12))],
                        status: Delivered,
                    },
                ),
                ack(
                    3,
                    AckCommand::Entries {
                        entries: vec![(11, entry(11))],
                        status: Read,
                    },
                ),
                // Read by message id; 10 rises again (delivered -> read),
                // 99 is nobody's.
                ack(
                    2,
                    AckCommand::Messages {
                        message_ids: vec![10, 11, 99],
                        status: Read,
                    },
                ),
                // Delivered after read: no change.
                ack(
                    2,
                    AckCommand::Messages {
                        message_ids: vec![11],
                        status: Delivered,
                    },
                ),
                // A session read up to seq 3 reads 12 (11 and 10 are).
                ack(
                    2,
                    AckCommand::SessionRead {
                        session_id: s12,
                        up_to_seq: Some(3),
                    },
                ),
            ],
            at(1),
        )
        .await
        .unwrap();
    let counted: Vec<(u64, Vec<u64>)> = outcomes.iter().map(outcome).collect();
    assert_eq!(
        counted,
        vec![
            (1, vec![10]),
            (0, vec![]),
            (2, vec![11]),
            (0, vec![]),
            (1, vec![12])
        ]
    );
    let status = |inbox: &[InboxMessage], mid: u64| {
        inbox
            .iter()
            .find(|m| m.doc.message_id == mid)
            .unwrap()
            .status
    };
    let inbox = whole_inbox(&store, 2).await;
    assert_eq!(
        [10, 11, 12, 13, 14].map(|m| status(&inbox, m)),
        [Read, Read, Read, Pending, Pending]
    );
    // The senders' own entries were read all along.
    assert!(whole_inbox(&store, 3)
        .await
        .iter()
        .all(|m| m.status == Read));
    let (page, total) = store.unread(2, 10).await.unwrap();
    assert_eq!(total, 2);
    assert_eq!(
        page.iter().map(|m| m.doc.message_id).collect::<Vec<_>>(),
        vec![13, 14]
    );
    // The rest of the session, then everything again: nothing left.
    let rest = store
        .apply_acks(
            vec![
                ack(
                    2,
                    AckCommand::SessionRead {
                        session_id: s12,
                        up_to_seq: None,
                    },
                ),
                ack(
                    2,
                    AckCommand::SessionRead {
                        session_id: s12,
                        up_to_seq: None,
                    },
                ),
                ack(
                    2,
                    AckCommand::Entries {
                        entries: vec![(13, entry(13))],
                        status: Delivered,
                    },
                ),
                ack(
                    2,
                    AckCommand::Entries {
                        entries: vec![(13, entry(13))],
                        status: Delivered,
                    },
                ),
            ],
            at(2),
        )
        .await
        .unwrap();
    let counted: Vec<(u64, Vec<u64>)> = rest.iter().map(outcome).collect();
    assert_eq!(
        counted,
        vec![(1, vec![14]), (0, vec![]), (1, vec![13]), (0, vec![])]
    );
    let (page, total) = store.unread(2, 10).await.unwrap();
    assert_eq!(total, 1);
    assert_eq!((page[0].doc.message_id, page[0].status), (13, Delivered));
    drop_database(&db).await;
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn recall_follows_the_rules() {
    let (store, db) = open().await;
    users(&store, 1..=2).await;
    let s = store.single_session(1, 2, 500).await.unwrap();
    store
        .store_messages(
            vec![single(10, s, 1, 2, 1_000), single(11, s, 1, 2, 2_000)],
            at(1),
        )
        .await
        .unwrap();
    assert!(matches!(
        store.recall(99, 1, 0).await.unwrap(),
        RecallOutcome::NotFound
    ));
    assert!(matches!(
        store.recall(10, 2, 0).await.unwrap(),
        RecallOutcome::NotSender
    ));
    assert!(matches!(
        store.recall(10, 1, 1_001).await.unwrap(),
        RecallOutcome::TooLate
    ));
    let RecallOutcome::Recalled(doc) = store.recall(11, 1, 1_500).await.unwrap() else {
        panic!("recalled");
    };
    assert!(doc.recalled && doc.content.is_empty() && doc.seq == 2);
    let stored = store.message(11).await.unwrap().unwrap();
    assert!(stored.recalled && stored.content.is_empty());
    // Again, even past the window: it is recalled.
    assert!(matches!(
        store.recall(11, 1, 9_999).await.unwrap(),
        RecallOutcome::Recalled(_)
    ));
    assert_eq!(
        store.message(10).await.unwrap().unwrap().content,
        "message 10"
    );
    drop_database(&db).await;
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn a_closed_store_refuses_calls() {
    let (store, db) = open().await;
    store.ping().await.unwrap();
    store.close().await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(store.ping().await, Err(BackendError::Closed)));
    assert!(matches!(
        store.user_by_id(1).await,
        Err(BackendError::Closed)
    ));
    drop_database(&db).await;
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn an_unreachable_server_fails_fast() {
    let started = Instant::now();
    let err = MongoStore::open("mongodb://127.0.0.1:1/?connectTimeoutMS=500", "x")
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(
        started.elapsed().as_secs_f64() < 5.0,
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            BackendError::Adapter {
                backend: "mongodb",
                ..
            }
        ),
        "{err}"
    );
}

/// One scenario on both stores: users, a group with a member who joins
/// late and one who leaves, single chats, batches, acks; then every read.
#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn reads_match_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Embedded::open(dir.path(), true, 256).unwrap();
    let sqlite = SqliteStore::new(&embedded.documents);
    let (mongo, db) = open().await;
    let stores: [&dyn Store; 2] = [&sqlite, &mongo];
    let mut results = Vec::new();
    for store in stores {
        results.push(scenario(store).await);
    }
    let (expected, got) = (&results[0], &results[1]);
    assert_eq!(expected.len(), got.len());
    for (e, g) in expected.iter().zip(got) {
        assert_eq!(e.0, g.0);
        assert_eq!(e.1, g.1, "{} differs", e.0);
    }
    // The scenario reaches the cases it is there for: a member back in
    // the group lists an older message as its last, one who joined after
    // the last message lists none.
    let group_of = |u: u64| {
        let mongo = &mongo;
        async move {
            let list = mongo.sessions(u).await.unwrap();
            list.into_iter().find(|s| s.session_id == 900).unwrap()
        }
    };
    let back = group_of(2).await.last_message.unwrap();
    let last = mongo.pull(1, 900, 0, 1_000).await.unwrap();
    assert!(back.doc.seq < last.last().unwrap().doc.seq);
    assert!(group_of(5).await.last_message.is_none());
    let late = mongo.pull(4, 900, 0, 4).await.unwrap();
    assert!(late.first().unwrap().doc.seq > 12, "4 joined late");
    drop_database(&db).await;
}

/// The scenario's reads, named, as JSON.
async fn scenario(store: &dyn Store) -> Vec<(String, serde_json::Value)> {
    users(store, 1..=6).await;
    store
        .create_group(group(9, 900, 1, &[1, 2, 3]))
        .await
        .unwrap();
    let s12 = store.single_session(1, 2, 500).await.unwrap();
    let s13 = store.single_session(3, 1, 501).await.unwrap();
    let s45 = store.single_session(4, 5, 502).await.unwrap();
    // 1 and 6 have a session with no message.
    let _s16 = store.single_session(1, 6, 503).await.unwrap();
    let mut id = 1_000;
    let mut ts = 10_000;
    let mut next = || {
        id += 1;
        ts += 7;
        (id, ts)
    };
    let mut batch = Vec::new();
    for i in 0..30 {
        let (m, t) = next();
        batch.push(match i % 5 {
            0 => single(m, s12, 1, 2, t),
            1 => single(m, s12, 2, 1, t),
            2 => grouped(m, 900, 9, 1 + (i % 3) as u64, t),
            3 => single(m, s13, 3, 1, t),
            _ => grouped(m, 900, 9, 2, t),
        });
    }
    store.store_messages(batch, at(1)).await.unwrap();
    // 4 joins the group late, 3 leaves; 4 and 5 chat.
    store.add_group_members(9, &[4]).await.unwrap();
    store.remove_group_member(9, 3).await.unwrap();
    let mut batch = Vec::new();
    for i in 0..12 {
        let (m, t) = next();
        batch.push(match i % 3 {
            0 => grouped(m, 900, 9, 4, t),
            1 => single(m, s45, 5, 4, t),
            _ => grouped(m, 900, 9, 3, t),
        });
    }
    store.store_messages(batch, at(2)).await.unwrap();
    // 2 leaves and misses a message, then comes back, with 5 who joins
    // after it: their newest entries are not the session's last message.
    store.remove_group_member(9, 2).await.unwrap();
    let (m, t) = next();
    store
        .store_messages(vec![grouped(m, 900, 9, 1, t)], at(3))
        .await
        .unwrap();
    store.add_group_members(9, &[2, 5]).await.unwrap();
    let acks = vec![
        ack(
            1,
            AckCommand::SessionRead {
                session_id: s12,
                up_to_seq: Some(8),
            },
        ),
        ack(
            1,
            AckCommand::Messages {
                message_ids: vec![1_003, 1_004, 1_008],
                status: InboxStatus::Delivered,
            },
        ),
        ack(
            2,
            AckCommand::Entries {
                entries: vec![(1_001, 1), (1_003, 3), (1_006, 2)],
                status: InboxStatus::Read,
            },
        ),
        ack(
            4,
            AckCommand::SessionRead {
                session_id: 900,
                up_to_seq: None,
            },
        ),
        ack(
            3,
            AckCommand::Messages {
                message_ids: vec![1_004, 1_999],
                status: InboxStatus::Read,
            },
        ),
    ];
    let outcomes = store.apply_acks(acks, at(4)).await.unwrap();

    let mut out: Vec<(String, serde_json::Value)> = Vec::new();
    let mut put = |name: String, v: serde_json::Value| out.push((name, v));
    put(
        "acks".into(),
        serde_json::json!(outcomes.iter().map(outcome).collect::<Vec<_>>()),
    );
    for u in 1..=6 {
        put(
            format!("sessions {u}"),
            serde_json::json!(format!(
                "{:?}",
                summaries(&store.sessions(u).await.unwrap())
            )),
        );
        let (page, total) = store.unread(u, 3).await.unwrap();
        put(
            format!("unread {u}"),
            serde_json::json!([views(&page), total]),
        );
        put(
            format!("sync {u}"),
            serde_json::json!(views(&store.sync(u, 2, 5).await.unwrap())),
        );
        put(
            format!("sync all {u}"),
            serde_json::json!(views(&store.sync(u, 0, 1_000).await.unwrap())),
        );
        for (sid, name) in [(s12, "s12"), (s13, "s13"), (s45, "s45"), (900, "group")] {
            for (after, limit) in [(0, 4), (0, 1), (3, 100), (10, 3), (40, 5)] {
                let page = store.pull(u, sid, after, limit).await.unwrap();
                put(
                    format!("pull {u} {name} {after} {limit}"),
                    serde_json::json!(views(&page)),
                );
            }
            for (before, limit) in [
                (None, 3),
                (Some(9), 4),
                (Some(2), 5),
                (None, 100),
                (Some(1), 1),
            ] {
                let page = store.history(u, sid, before, limit).await.unwrap();
                put(
                    format!("history {u} {name} {before:?} {limit}"),
                    serde_json::json!(views(&page)),
                );
            }
        }
        let wanted = [1_030, 1_001, 1_999, 1_003, 1_001];
        put(
            format!("inbox_messages {u}"),
            serde_json::json!(views(&store.inbox_messages(u, &wanted).await.unwrap())),
        );
    }
    let group = store.group(9).await.unwrap().unwrap();
    put(
        "group".into(),
        serde_json::json!([
            group.member_ids,
            group.name,
            group.owner_id,
            group.created_at
        ]),
    );
    for sid in [s12, 900] {
        let info = store.session_info(sid).await.unwrap().unwrap();
        put(
            format!("info {sid}"),
            serde_json::json!([info.members, info.group_id, info.session_type]),
        );
    }
    out
}

/// The sizes of a busy batch, timed (run with `--nocapture` to see them):
/// 500 single-chat messages between 1,000 users, and 100 messages to a
/// group of 50.
#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn big_batches_are_stored_whole() {
    let (store, db) = open().await;
    let started = Instant::now();
    let all: Vec<User> = (1..=1_050).map(|u| user(u, &format!("user{u}"))).collect();
    for u in all {
        store.create_user(u).await.unwrap();
    }
    eprintln!("1,050 users in {:?}", started.elapsed());
    let mut sessions = HashMap::new();
    for i in 0..500u64 {
        let s = store
            .single_session(2 * i + 1, 2 * i + 2, 10_000 + i)
            .await
            .unwrap();
        sessions.insert(i, s);
    }
    let batch: Vec<SendRecord> = (0..500u64)
        .map(|i| {
            single(
                100_000 + i,
                sessions[&i],
                2 * i + 1,
                2 * i + 2,
                1_000 + i as i64,
            )
        })
        .collect();
    let started = Instant::now();
    let stored = store.store_messages(batch.clone(), at(1)).await.unwrap();
    eprintln!(
        "500 single-chat messages (1,000 users, cold seq cache): {:?}",
        started.elapsed()
    );
    assert_eq!(stored.stored.len(), 500);
    assert!(stored
        .stored
        .iter()
        .all(|m| m.doc.seq == 1 && m.recipients.len() == 2));
    let batch2: Vec<SendRecord> = (0..500u64)
        .map(|i| {
            single(
                200_000 + i,
                sessions[&i],
                2 * i + 2,
                2 * i + 1,
                2_000 + i as i64,
            )
        })
        .collect();
    let started = Instant::now();
    let stored = store.store_messages(batch2, at(2)).await.unwrap();
    eprintln!(
        "500 single-chat messages (1,000 users, warm seq cache): {:?}",
        started.elapsed()
    );
    assert!(stored.stored.iter().all(|m| m.doc.seq == 2));
    assert!(stored
        .stored
        .iter()
        .all(|m| m.recipients.iter().all(|r| r.inbox_seq == 2)));
    let started = Instant::now();
    let again = store.store_messages(batch, at(1)).await.unwrap();
    eprintln!("the first 500 again (all known): {:?}", started.elapsed());
    assert_eq!((again.stored.len(), again.known.len()), (0, 500));

    let members: Vec<u64> = (1_001..=1_050).collect();
    store
        .create_group(group(7, 7_000, 1_001, &members))
        .await
        .unwrap();
    let batch: Vec<SendRecord> = (0..100u64)
        .map(|i| grouped(300_000 + i, 7_000, 7, 1_001 + i % 50, 3_000 + i as i64))
        .collect();
    let started = Instant::now();
    let stored = store.store_messages(batch, at(3)).await.unwrap();
    eprintln!(
        "100 messages to a group of 50 (5,000 entries): {:?}",
        started.elapsed()
    );
    assert_eq!(stored.stored.len(), 100);
    assert_eq!(stored.stored[99].doc.seq, 100);
    assert!(stored.stored.iter().all(|m| m.recipients.len() == 50));
    let inbox = whole_inbox(&store, 1_050).await;
    assert_eq!(inbox.len(), 100);
    let started = Instant::now();
    let list = store.sessions(1_001).await.unwrap();
    eprintln!("a session list: {:?}", started.elapsed());
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].unread_count, 98);
    drop_database(&db).await;
}

#[tokio::test]
#[ignore = "needs scripts/services.sh up (MongoDB)"]
async fn token_numbers_are_taken_in_order_and_revocations_kept() {
    use herald::service::backend::{AuthState, RevokedToken};
    let (store, db) = open().await;
    users(&store, [5]).await;
    assert_eq!(store.auth_state(6).await.unwrap(), None, "no such user");
    assert_eq!(store.next_token_number(6).await.unwrap(), None);
    assert_eq!(
        store.auth_state(5).await.unwrap(),
        Some(AuthState::default())
    );
    // Taken at once, each number once.
    let taken = futures_util::future::join_all((0..8).map(|_| store.next_token_number(5))).await;
    let mut taken: Vec<u64> = taken.into_iter().map(|n| n.unwrap().unwrap()).collect();
    taken.sort_unstable();
    assert_eq!(taken, (1..=8).collect::<Vec<u64>>());
    let old = RevokedToken {
        number: 1,
        expires_at_ms: 100,
    };
    let live = RevokedToken {
        number: 3,
        expires_at_ms: 10_000,
    };
    store.revoke_token(5, old, 50).await.unwrap();
    store.revoke_token(5, live, 200).await.unwrap();
    let state = store.auth_state(5).await.unwrap().unwrap();
    assert_eq!(state.revoked, vec![live], "the expired entry went");
    store.revoke_tokens_before(5, 4).await.unwrap();
    store.revoke_tokens_before(5, 2).await.unwrap();
    let state = store.auth_state(5).await.unwrap().unwrap();
    assert_eq!(state.revoked_before, 4, "never lowered");
    assert!(state.revoked.is_empty(), "covered by revoked_before");
    assert_eq!(store.next_token_number(5).await.unwrap(), Some(9));
    drop_database(&db).await;
}
