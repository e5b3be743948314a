//! The embedded backends' own guarantees: consumers resume where the
//! documents say, the data directories of older versions keep their
//! unconsumed records across the upgrade, and stored sends are found by
//! their idempotency key. (The topic logs' own tests are in `log`.)

use std::time::Duration;

use rusqlite::Connection;

use super::*;
use crate::model::{SendRecord, SessionType};
use crate::service::backend::{Checkpoint, DurableTopic, Store};

fn open(dir: &Path) -> Embedded {
    Embedded::open(dir, true, 256).unwrap()
}

fn record(message_id: u64) -> SendRecord {
    SendRecord {
        origin_node: 0,
        origin_conn: None,
        message_id,
        session_id: 7,
        session_type: SessionType::Single,
        sender_id: 1,
        to_user_id: Some(2),
        group_id: None,
        message_type: 1,
        content: "hi".into(),
        client_message_id: format!("c{message_id}"),
        client_ts: 0,
        server_ts: 0,
        adjusted_ts: 0,
    }
}

#[tokio::test]
async fn applied_positions_are_saved_with_the_documents_and_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let store = SqliteStore::new(&db.documents);
    assert_eq!(store.applied_position("w").await.unwrap(), None);
    let applied = |offset| Checkpoint {
        consumer: "w",
        partition: 0,
        first: offset,
        last: offset,
    };
    let stored = store
        .store_messages(vec![record(100), record(101)], applied(2))
        .await
        .unwrap()
        .stored;
    let seqs: Vec<i64> = stored.iter().map(|s| s.doc.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    // Re-applying after a crash (a store that starts cold) skips what is
    // stored; seqs stay gap-free.
    let store = SqliteStore::new(&db.documents);
    let again = store
        .store_messages(
            vec![record(101), record(102)],
            Checkpoint {
                consumer: "w",
                partition: 0,
                first: 2,
                last: 3,
            },
        )
        .await
        .unwrap()
        .stored;
    let seqs: Vec<i64> = again.iter().map(|s| s.doc.seq).collect();
    assert_eq!(seqs, vec![3]);
    assert_eq!(store.applied_position("w").await.unwrap(), Some(3));
    // The checkpointer publishes it as durable once the WAL is synced.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.durable_position("w") < 3 {
        assert!(std::time::Instant::now() < deadline, "never became durable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The tables older versions kept the topics in: a session record that
/// is a real send (sender 1, `clientMessageId` "a", its receipt `x'01'`),
/// one the consumer has passed, one it has not, and an ack record.
const OLD_TOPIC_TABLES: &str = "
    CREATE TABLE consumer_offsets(topic TEXT NOT NULL, consumer TEXT NOT NULL,
        committed INTEGER NOT NULL, PRIMARY KEY(topic, consumer)) WITHOUT ROWID;
    CREATE TABLE idempotency(key TEXT PRIMARY KEY, receipt BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE topic_session(offset INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL);
    CREATE TABLE topic_ack(offset INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL);
    INSERT INTO topic_session(offset, payload) VALUES (9, x'0800000000000000'),
        (10, x'0900000000000000');
    DELETE FROM topic_session WHERE offset = 9;
    INSERT INTO topic_ack(offset, payload) VALUES (4, x'03');
    INSERT INTO consumer_offsets VALUES ('session', 'g', 9);
    INSERT INTO idempotency VALUES ('1:a', x'01');";

/// Writes the old tables into `file`, with the send record at offset 11.
fn write_old_topics(file: &Path) {
    let c = Connection::open(file).unwrap();
    c.execute_batch(OLD_TOPIC_TABLES).unwrap();
    let mut send = record(500);
    send.client_message_id = "a".into();
    c.execute(
        "INSERT INTO topic_session(offset, payload) VALUES (11, ?)",
        [serde_json::to_vec(&send).unwrap()],
    )
    .unwrap();
}

/// A history that knows no key: only the log answers.
struct NoHistory;

#[async_trait::async_trait]
impl KeyHistory for NoHistory {
    async fn receipt(&self, _key: &str) -> BackendResult<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// After an upgrade from either older layout: the records are in the logs
/// with their offsets, offsets go on from there, the consumer resumes
/// after its committed offset, and the send's key still makes a repeat a
/// duplicate with the old receipt.
async fn check_migrated(db: &Embedded) {
    let session = db
        .open_topic("session", Some(Arc::new(NoHistory)), None)
        .unwrap();
    let mut consumer = session.open_consumer("g", None);
    let offsets: Vec<u64> = consumer
        .poll(10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.position.offset)
        .collect();
    assert_eq!(offsets, [10, 11]);
    let next = session
        .publish(0, b"new".to_vec())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(next.offset, 12, "offsets go on, never reused");
    let dup = session
        .publish_once(0, "1:a".into(), b"again".to_vec(), b"r".to_vec())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        dup,
        crate::service::backend::PublishOnce::Duplicate(vec![1])
    );
    let ack = db.open_topic("ack", None, None).unwrap();
    let mut acks = ack.open_consumer("ack-cycle", Some(0));
    use crate::service::backend::TopicConsumer;
    assert_eq!(acks.poll(10).await.unwrap()[0].position.offset, 4);
}

#[tokio::test]
async fn an_older_single_file_layout_keeps_its_unconsumed_records() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("herald.db");
    write_old_topics(&legacy);
    let db = open(dir.path());
    check_migrated(&db).await;
    let c = Connection::open(&legacy).unwrap();
    let left: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('topic_session', 'topic_ack', 'consumer_offsets', 'idempotency')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "the old tables are gone from herald.db");
}

#[tokio::test]
async fn a_topics_database_moves_into_the_logs_and_goes() {
    let dir = tempfile::tempdir().unwrap();
    write_old_topics(&dir.path().join("topics.db"));
    let db = open(dir.path());
    check_migrated(&db).await;
    assert!(!dir.path().join("topics.db").exists());
    assert!(!dir.path().join("topics.migrating").exists());
}

#[tokio::test]
async fn a_stored_send_is_found_by_its_sender_and_client_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let store = SqliteStore::new(&db.documents);
    let mut send = record(600);
    send.server_ts = 1234;
    store.store_messages(vec![send], batch(1, 1)).await.unwrap();
    db.documents.writer.flush().await.unwrap();
    let found = store
        .sent_message(1, "c600")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(
        (found.message_id, found.session_id, found.server_ts),
        (600, 7, 1234)
    );
    assert_eq!(found.client_message_id, "c600");
    assert!(
        store.sent_message(2, "c600").await.unwrap().is_none(),
        "another sender's"
    );
    assert!(store.sent_message(1, "c601").await.unwrap().is_none());
}

#[tokio::test]
async fn a_new_pair_gets_one_session_with_its_first_stored_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let store = SqliteStore::new(&db.documents);
    // Asked twice before anything is stored, the pair keeps its first id.
    assert_eq!(store.single_session(2, 1, 7).await.unwrap(), 7);
    assert_eq!(store.single_session(1, 2, 99).await.unwrap(), 7);
    let applied = batch(1, 1);
    store
        .store_messages(vec![record(100)], applied)
        .await
        .unwrap();
    assert_eq!(store.fresh_pair_count(), 0, "stored: known as such");
    assert_eq!(store.single_session(2, 1, 99).await.unwrap(), 7);
    // A second id handed out for the pair (across a crash) joins the first
    // session, with gap-free seqs.
    let mut stray = record(101);
    stray.session_id = 8;
    let stored = store
        .store_messages(vec![stray], applied)
        .await
        .unwrap()
        .stored;
    assert_eq!(stored[0].doc.session_id, 7);
    assert_eq!(stored[0].doc.seq, 2);
    let info = store.session_info(7).await.unwrap().unwrap();
    assert_eq!(info.members, vec![1, 2]);
    assert!(store.session_info(8).await.unwrap().is_none());
}

#[tokio::test]
async fn stomp_acks_name_inbox_entries_and_only_raise_the_users_own() {
    use crate::model::{AckCommand, AckRecord, InboxStatus};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let store = SqliteStore::new(&db.documents);
    let stored = store
        .store_messages(vec![record(100)], batch(1, 1))
        .await
        .unwrap()
        .stored;
    let entry = |user| {
        stored[0]
            .recipients
            .iter()
            .find(|r| r.user_id == user)
            .unwrap()
            .inbox_seq
    };
    let ack = |user_id, entries: Vec<(u64, i64)>| AckRecord {
        user_id,
        command: AckCommand::Entries {
            entries,
            status: InboxStatus::Delivered,
        },
        reply_token: None,
        reply_node: 0,
    };
    let outcomes = store
        .apply_acks(
            vec![
                // Wrong message id for the entry, or someone else's entry.
                ack(2, vec![(999, entry(2))]),
                ack(3, vec![(100, entry(2))]),
                // The recipient's own entry, twice.
                ack(2, vec![(100, entry(2))]),
                ack(2, vec![(100, entry(2))]),
            ],
            batch(2, 2),
        )
        .await
        .unwrap();
    let updated: Vec<u64> = outcomes.iter().map(|o| o.updated).collect();
    assert_eq!(updated, vec![0, 0, 1, 0]);
    assert_eq!(outcomes[2].no_longer_pending, vec![100]);
    let inbox = store.inbox_messages(2, &[100]).await.unwrap();
    assert_eq!(inbox[0].status, InboxStatus::Delivered);
}

fn chat(message_id: u64, session_id: u64, from: u64, to: u64) -> SendRecord {
    SendRecord {
        session_id,
        sender_id: from,
        to_user_id: Some(to),
        ..record(message_id)
    }
}

fn batch(first: u64, last: u64) -> Checkpoint {
    Checkpoint {
        consumer: "w",
        partition: 0,
        first,
        last,
    }
}

/// A store on a new data directory that went through the writer with
/// `records` (which warms its counters).
async fn store_after(
    records: Vec<SendRecord>,
    applied: Checkpoint,
) -> (tempfile::TempDir, Embedded, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let store = SqliteStore::new(&db.documents);
    store.store_messages(records, applied).await.unwrap();
    (dir, db, store)
}

/// Holds the writer thread until the returned sender is dropped or fed.
async fn hold_writer(db: &Embedded) -> std::sync::mpsc::Sender<()> {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (running, started) = tokio::sync::oneshot::channel();
    let _done = db
        .documents
        .writer
        .enqueue(
            move |_| {
                let _ = running.send(());
                let _ = held.recv();
                Ok(())
            },
            |_| {},
        )
        .await
        .unwrap();
    started.await.unwrap();
    release
}

/// Answers within a second, or panics: numbering must not wait for the
/// (held) writer.
async fn soon<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(1), f)
        .await
        .expect("answered without the writer")
}

#[tokio::test]
async fn cached_counters_number_messages_while_the_writer_is_busy() {
    // The first batch goes through the writer and warms the counters.
    let (_dir, db, store) = store_after(vec![chat(100, 7, 1, 2)], batch(1, 1)).await;
    let release = hold_writer(&db).await;
    let stored =
        soon(store.store_messages(vec![chat(101, 7, 1, 2), chat(102, 7, 2, 1)], batch(2, 3)))
            .await
            .unwrap()
            .stored;
    let numbers: Vec<(i64, Vec<i64>)> = stored
        .iter()
        .map(|s| {
            (
                s.doc.seq,
                s.recipients.iter().map(|r| r.inbox_seq).collect(),
            )
        })
        .collect();
    assert_eq!(numbers, vec![(2, vec![2, 2]), (3, vec![3, 3])]);
    drop(release);
    // Readers see what was announced, in the same numbers.
    let synced = store.sync(2, 0, 10).await.unwrap();
    let seen: Vec<(u64, i64, i64)> = synced
        .iter()
        .map(|m| (m.doc.message_id, m.doc.seq, m.inbox_seq))
        .collect();
    assert_eq!(seen, vec![(100, 1, 1), (101, 2, 2), (102, 3, 3)]);
    assert_eq!(store.applied_position("w").await.unwrap(), Some(3));
    // A restarted store reads the counters back from what was written.
    let restarted = SqliteStore::new(&db.documents);
    let next = restarted
        .store_messages(vec![chat(103, 7, 1, 2)], batch(4, 4))
        .await
        .unwrap()
        .stored;
    assert_eq!(next[0].doc.seq, 4);
    assert_eq!(next[0].recipients[1].inbox_seq, 4);
}

#[tokio::test]
async fn a_batch_the_store_may_have_seen_goes_through_the_writer() {
    let (_dir, _db, store) =
        store_after(vec![chat(100, 7, 1, 2), chat(101, 7, 1, 2)], batch(1, 2)).await;
    // Offsets at or before the last batch: maybe stored, so checked.
    let again = store
        .store_messages(vec![chat(101, 7, 1, 2), chat(102, 7, 1, 2)], batch(2, 3))
        .await
        .unwrap()
        .stored;
    let seqs: Vec<i64> = again.iter().map(|s| s.doc.seq).collect();
    assert_eq!(seqs, vec![3]);
}

#[tokio::test]
async fn a_new_pair_the_directory_named_is_numbered_from_memory() {
    let (_dir, db, store) =
        store_after(vec![chat(100, 7, 1, 2), chat(101, 9, 3, 2)], batch(1, 2)).await;
    assert_eq!(store.single_session(3, 1, 11).await.unwrap(), 11);
    let release = hold_writer(&db).await;
    let stored =
        soon(store.store_messages(vec![chat(102, 11, 1, 3), chat(103, 11, 3, 1)], batch(3, 4)))
            .await
            .unwrap()
            .stored;
    let seqs: Vec<i64> = stored.iter().map(|s| s.doc.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    // Lookups do not wait for the writer either: the new pair is known in
    // memory, any other pair is read as committed.
    assert_eq!(soon(store.single_session(3, 1, 99)).await.unwrap(), 11);
    assert_eq!(soon(store.single_session(4, 5, 45)).await.unwrap(), 45);
    drop(release);
    assert_eq!(store.single_session(1, 3, 99).await.unwrap(), 11);
    let info = store.session_info(11).await.unwrap().unwrap();
    assert_eq!(info.members, vec![1, 3]);
    // A second id for a stored pair (across a crash) goes to the writer,
    // which files the message under the first.
    let stray = store
        .store_messages(vec![chat(104, 12, 1, 2)], batch(5, 5))
        .await
        .unwrap()
        .stored;
    assert_eq!((stray[0].doc.session_id, stray[0].doc.seq), (7, 2));
    assert!(store.session_info(12).await.unwrap().is_none());
}

/// Entries whose `unread` disagrees with their `status` in `herald.db`.
fn unread_mismatches(dir: &Path) -> i64 {
    Connection::open(dir.join("herald.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM inbox WHERE unread != (status < 2)",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test]
async fn the_unread_column_follows_every_status_change() {
    use crate::model::{AckCommand, AckRecord, InboxStatus};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let store = SqliteStore::new(&db.documents);
    let records = (100..104).map(|m| chat(m, 7, 1, 2)).collect();
    let stored = store
        .store_messages(records, batch(1, 1))
        .await
        .unwrap()
        .stored;
    let seq_of = |m: u64| {
        stored
            .iter()
            .find(|s| s.doc.message_id == m)
            .unwrap()
            .doc
            .seq
    };
    let ack = |command| AckRecord {
        user_id: 2,
        command,
        reply_token: None,
        reply_node: 0,
    };
    let outcomes = store
        .apply_acks(
            vec![
                // pending -> delivered, then delivered -> read.
                ack(AckCommand::Messages {
                    message_ids: vec![100, 101],
                    status: InboxStatus::Delivered,
                }),
                ack(AckCommand::Messages {
                    message_ids: vec![101],
                    status: InboxStatus::Read,
                }),
                // pending -> read by a session read up to 102.
                ack(AckCommand::SessionRead {
                    session_id: 7,
                    up_to_seq: Some(seq_of(102)),
                }),
            ],
            batch(2, 2),
        )
        .await
        .unwrap();
    // Each raise is counted once, with the status it left.
    let counted: Vec<(u64, Vec<u64>)> = outcomes
        .into_iter()
        .map(|o| (o.updated, o.no_longer_pending))
        .collect();
    assert_eq!(
        counted,
        vec![(2, vec![100, 101]), (1, vec![]), (2, vec![102])],
        "100 and 101 delivered; 101 read from delivered; 100 and 102 read by the session"
    );
    // The reader sees what the writer committed (reads force the commit).
    let (unread, total) = store.unread(2, 10).await.unwrap();
    assert_eq!(total, 1, "only 103 is unread");
    assert_eq!(unread.len(), 1);
    assert_eq!(unread[0].doc.message_id, 103);
    // The sender's own copies were stored read.
    assert_eq!(store.unread(1, 10).await.unwrap().1, 0);
    assert_eq!(unread_mismatches(dir.path()), 0);
    // Unread counts still come from the (smaller) unread index.
    let c = Connection::open(dir.path().join("herald.db")).unwrap();
    let plan: Vec<String> = c
        .prepare("EXPLAIN QUERY PLAN SELECT count(*) FROM inbox WHERE user_id = 2 AND unread = 1")
        .unwrap()
        .query_map([], |r| r.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(plan.concat().contains("inbox_unread_entries"), "{plan:?}");
}

#[tokio::test]
async fn an_inbox_without_the_unread_column_gets_it_from_status() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Connection::open(dir.path().join("herald.db")).unwrap();
        c.execute_batch(
            "CREATE TABLE inbox(user_id INTEGER NOT NULL, inbox_seq INTEGER NOT NULL,
                 message_id INTEGER NOT NULL, session_id INTEGER NOT NULL,
                 seq INTEGER NOT NULL, status INTEGER NOT NULL,
                 PRIMARY KEY(user_id, inbox_seq)) WITHOUT ROWID;
             CREATE INDEX inbox_unread ON inbox(user_id, inbox_seq) WHERE status < 2;
             INSERT INTO inbox VALUES (2, 1, 100, 7, 1, 0), (2, 2, 101, 7, 2, 1),
                 (2, 3, 102, 7, 3, 2), (1, 1, 100, 7, 1, 2);",
        )
        .unwrap();
    }
    drop(open(dir.path()));
    assert_eq!(unread_mismatches(dir.path()), 0);
    let c = Connection::open(dir.path().join("herald.db")).unwrap();
    let unread: Vec<(i64, i64)> = c
        .prepare("SELECT user_id, inbox_seq FROM inbox WHERE unread = 1 ORDER BY 1, 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(unread, vec![(2, 1), (2, 2)]);
    let indexes: Vec<String> = c
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'inbox' ORDER BY 1",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        indexes.contains(&"inbox_unread_entries".to_string()),
        "{indexes:?}"
    );
    assert!(
        !indexes.contains(&"inbox_unread".to_string()),
        "{indexes:?}"
    );
}

#[tokio::test]
async fn members_added_right_after_creation_list_after_the_first_ones() {
    use crate::model::Group;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let store = SqliteStore::new(&db.documents);
    // The first members are stamped created_at + i: ahead of the clock.
    let created_at = crate::model::ids::now_ms() + 1_000;
    let group = Group {
        group_id: 9,
        session_id: 90,
        name: "g".into(),
        owner_id: 5,
        member_ids: vec![5, 7, 3],
        created_at,
    };
    store.create_group(group).await.unwrap();
    store.add_group_members(9, &[4, 1]).await.unwrap();
    let members = store.group(9).await.unwrap().unwrap().member_ids;
    assert_eq!(members, vec![5, 7, 3, 4, 1], "in the order they joined");
}

#[tokio::test]
async fn token_numbers_are_taken_in_order_and_revocations_kept() {
    use crate::model::User;
    use crate::service::backend::{AuthState, RevokedToken};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let store = SqliteStore::new(&db.documents);
    let user = User {
        user_id: 5,
        username: "tokens".into(),
        nickname: "T".into(),
        password_hash: "hash".into(),
        created_at: 1,
    };
    assert!(store.create_user(user).await.unwrap());
    assert_eq!(store.auth_state(6).await.unwrap(), None, "no such user");
    assert_eq!(store.next_token_number(6).await.unwrap(), None);
    assert_eq!(
        store.auth_state(5).await.unwrap(),
        Some(AuthState::default())
    );
    for n in 1..=3 {
        assert_eq!(store.next_token_number(5).await.unwrap(), Some(n));
    }
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
    assert_eq!(store.next_token_number(5).await.unwrap(), Some(4));
}
