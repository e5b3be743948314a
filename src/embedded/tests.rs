//! The embedded backends' own guarantees: topic consumers see every
//! committed record in order (from memory or from the log), resume where
//! the documents say, and an older single-file data directory keeps its
//! unconsumed records across the upgrade.

use std::time::Duration;

use rusqlite::Connection;

use super::*;
use crate::model::{SendRecord, SessionType};
use crate::service::backend::{AppliedPosition, DurableTopic, Store, TopicConsumer};

fn open(dir: &Path) -> Embedded {
    Embedded::open(dir, true, 256).unwrap()
}

async fn publish_all(topic: &SqliteTopic, n: u64) -> Vec<u64> {
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(topic.publish(i.to_le_bytes().to_vec()).await.unwrap());
    }
    let mut offsets = Vec::new();
    for p in pending {
        offsets.push(p.await.unwrap());
    }
    offsets
}

async fn drain(consumer: &mut dyn TopicConsumer, n: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let polled = tokio::time::timeout(Duration::from_secs(5), consumer.poll(7))
            .await
            .expect("records arrive")
            .unwrap();
        seen.extend(polled.into_iter().map(|r| {
            let v = u64::from_le_bytes(r.payload[..].try_into().unwrap());
            assert_eq!(r.offset, v + 1, "payload matches its offset");
            r.offset
        }));
    }
    seen
}

#[tokio::test]
async fn consumers_get_every_record_in_order_and_resume_where_told() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let topic = SqliteTopic::open(&db.topics, "t").await.unwrap();
    // A consumer that was there from the start reads from memory...
    let mut live = topic.consumer("live", None).await.unwrap();
    let offsets = publish_all(&topic, 50).await;
    assert_eq!(offsets, (1..=50).collect::<Vec<_>>());
    assert_eq!(drain(&mut *live, 50).await, offsets);
    // ...one that starts later reads the log back, from where it is told.
    let mut late = topic.consumer("late", Some(20)).await.unwrap();
    assert_eq!(drain(&mut *late, 30).await, (21..=50).collect::<Vec<_>>());
    // Without a position it resumes after its committed offset.
    late.commit(40).await.unwrap();
    db.topics.writer.flush().await.unwrap();
    let mut again = topic.consumer("late", None).await.unwrap();
    assert_eq!(drain(&mut *again, 10).await, (41..=50).collect::<Vec<_>>());
    assert_eq!(again.lag(), 0);
}

fn record(message_id: u64) -> SendRecord {
    SendRecord {
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
    let applied = |offset| AppliedPosition {
        consumer: "w",
        offset,
    };
    let stored = store
        .store_messages(vec![record(100), record(101)], applied(2))
        .await
        .unwrap();
    let seqs: Vec<i64> = stored.iter().map(|s| s.doc.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    // Re-applying after a crash skips what is stored; seqs stay gap-free.
    let again = store
        .store_messages(vec![record(101), record(102)], applied(3))
        .await
        .unwrap();
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

#[tokio::test]
async fn an_older_single_file_layout_keeps_its_unconsumed_records() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("herald.db");
    {
        let c = Connection::open(&legacy).unwrap();
        c.execute_batch(
            "CREATE TABLE consumer_offsets(topic TEXT NOT NULL, consumer TEXT NOT NULL,
                 committed INTEGER NOT NULL, PRIMARY KEY(topic, consumer)) WITHOUT ROWID;
             CREATE TABLE idempotency(key TEXT PRIMARY KEY, receipt BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE topic_session(offset INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL);
             INSERT INTO topic_session(offset, payload) VALUES (9, x'0800000000000000'),
                 (10, x'0900000000000000');
             DELETE FROM topic_session WHERE offset = 9;
             INSERT INTO consumer_offsets VALUES ('session', 'g', 9);
             INSERT INTO idempotency VALUES ('1:a', x'01');",
        )
        .unwrap();
    }
    let db = open(dir.path());
    let topic = SqliteTopic::open(&db.topics, "session").await.unwrap();
    let mut consumer = topic.consumer("g", None).await.unwrap();
    assert_eq!(drain(&mut *consumer, 1).await, vec![10]);
    // Offsets go on from the old counter, never reused.
    assert_eq!(publish_all(&topic, 1).await, vec![11]);
    let dup = topic
        .publish_once("1:a".into(), b"x".to_vec(), b"r".to_vec())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        dup,
        crate::service::backend::PublishOnce::Duplicate(vec![1])
    );
    let c = Connection::open(&legacy).unwrap();
    let left: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('topic_session', 'consumer_offsets', 'idempotency')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "the old tables are gone from herald.db");
}

#[tokio::test]
async fn a_new_pair_gets_one_session_with_its_first_stored_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let store = SqliteStore::new(&db.documents);
    assert_eq!(store.find_single_session(2, 1).await.unwrap(), None);
    let applied = AppliedPosition {
        consumer: "w",
        offset: 1,
    };
    store
        .store_messages(vec![record(100)], applied)
        .await
        .unwrap();
    assert_eq!(store.find_single_session(2, 1).await.unwrap(), Some(7));
    // A second id handed out for the pair (across a crash) joins the first
    // session, with gap-free seqs.
    let mut stray = record(101);
    stray.session_id = 8;
    let stored = store.store_messages(vec![stray], applied).await.unwrap();
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
    let applied = |offset| AppliedPosition {
        consumer: "a",
        offset,
    };
    let stored = store
        .store_messages(vec![record(100)], applied(1))
        .await
        .unwrap();
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
            applied(2),
        )
        .await
        .unwrap();
    let updated: Vec<u64> = outcomes.iter().map(|o| o.updated).collect();
    assert_eq!(updated, vec![0, 0, 1, 0]);
    assert_eq!(outcomes[2].no_longer_pending, vec![100]);
    let inbox = store.inbox_messages(2, &[100]).await.unwrap();
    assert_eq!(inbox[0].status, InboxStatus::Delivered);
}
