//! The log's guarantees: every durable record reaches consumers in order,
//! from memory or from the segments, across restarts, torn writes, segment
//! rolls and pruning; a key is published at most once, whether its record
//! is still in memory or already applied; a failed write is reported to its
//! publishers and leaves nothing behind.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

/// A history that knows the keys it was given.
#[derive(Default)]
struct Applied(Mutex<HashMap<String, Vec<u8>>>);

#[async_trait]
impl KeyHistory for Applied {
    async fn receipt(&self, key: &str) -> BackendResult<Option<Vec<u8>>> {
        Ok(self.0.lock().get(key).cloned())
    }
}

fn options(history: Option<Arc<dyn KeyHistory>>) -> LogOptions {
    LogOptions {
        sync: true,
        history,
        positions: None,
        fail_after_writes: None,
    }
}

fn open(dir: &Path, history: Option<Arc<dyn KeyHistory>>) -> LogTopic {
    LogTopic::open(dir, "t", options(history)).unwrap()
}

async fn publish_all(topic: &LogTopic, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut pending = Vec::new();
    for i in range {
        pending.push(topic.publish(0, i.to_le_bytes().to_vec()).await.unwrap());
    }
    let mut offsets = Vec::new();
    for p in pending {
        offsets.push(p.await.unwrap().offset);
    }
    offsets
}

/// Polls `n` records; each payload is its offset - 1.
async fn drain(consumer: &mut dyn TopicConsumer, n: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let polled = tokio::time::timeout(Duration::from_secs(5), consumer.poll(7))
            .await
            .expect("records arrive")
            .unwrap();
        seen.extend(polled.into_iter().map(|r| {
            let v = u64::from_le_bytes(r.payload[..].try_into().unwrap());
            assert_eq!(r.position.offset, v + 1, "payload matches its offset");
            r.position.offset
        }));
    }
    seen
}

#[tokio::test]
async fn consumers_get_every_record_in_order_and_a_restart_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let topic = open(dir.path(), None);
    let mut live = topic.open_consumer("live", None);
    let offsets = publish_all(&topic, 0..50).await;
    assert_eq!(offsets, (1..=50).collect::<Vec<_>>());
    assert_eq!(drain(&mut live, 50).await, offsets);
    live.commit_offset(40);
    topic.close().await.unwrap();
    assert!(matches!(
        topic.publish(0, vec![1]).await.map(|_| ()),
        Err(BackendError::Closed)
    ));

    let topic = open(dir.path(), None);
    // Without a position a consumer resumes after its committed offset...
    let mut again = topic.open_consumer("live", None);
    assert_eq!(again.lag(), 10);
    assert_eq!(drain(&mut again, 10).await, (41..=50).collect::<Vec<_>>());
    // ...with one, from there; offsets go on where they were.
    let mut late = topic.open_consumer("late", Some(20));
    assert_eq!(publish_all(&topic, 50..52).await, [51, 52]);
    assert_eq!(drain(&mut late, 32).await, (21..=52).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_torn_last_record_is_cut_off_and_its_offset_reused() {
    let dir = tempfile::tempdir().unwrap();
    let topic = open(dir.path(), None);
    publish_all(&topic, 0..3).await;
    topic.close().await.unwrap();
    let file = segment::path(dir.path(), 1);
    let whole = std::fs::metadata(&file).unwrap().len();
    // A crash in the middle of the next write.
    let mut torn = Vec::new();
    segment::encode(&mut torn, 4, "", b"", &3u64.to_le_bytes());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    f.write_all(&torn[..torn.len() - 2]).unwrap();
    drop(f);

    let topic = open(dir.path(), None);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), whole);
    assert_eq!(publish_all(&topic, 3..4).await, [4]);
    let mut c = topic.open_consumer("c", Some(0));
    assert_eq!(drain(&mut c, 4).await, [1, 2, 3, 4]);
}

#[tokio::test]
async fn damage_before_the_last_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    segment::encode(&mut bytes, 1, "", b"", b"a");
    segment::encode(&mut bytes, 2, "", b"", b"b");
    bytes[20] ^= 1;
    std::fs::write(segment::path(dir.path(), 1), &bytes).unwrap();
    std::fs::write(segment::path(dir.path(), 3), b"").unwrap();
    let err = LogTopic::open(dir.path(), "t", options(None))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("unreadable"), "{err}");
}

#[tokio::test]
async fn segments_roll_and_are_deleted_once_every_group_is_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let topic = open(dir.path(), None);
    let mut a = topic.open_consumer("a", None);
    let mut b = topic.open_consumer("b", None);
    // Records of 1 MiB: a segment holds 16 of them.
    let big = |i: u64| {
        let mut p = i.to_le_bytes().to_vec();
        p.resize(1 << 20, 0);
        p
    };
    let mut pending = Vec::new();
    for i in 0..40 {
        pending.push(topic.publish(0, big(i)).await.unwrap());
    }
    for p in pending {
        p.await.unwrap();
    }
    let segments = || segment::list(dir.path()).unwrap();
    assert_eq!(segments().len(), 3, "{:?}", segments());
    // A consumer that is not served from memory reads the segments back.
    let mut fresh = topic.open_consumer("fresh", Some(0));
    let mut seen = Vec::new();
    while seen.len() < 40 {
        seen.extend(
            fresh
                .poll(5)
                .await
                .unwrap()
                .iter()
                .map(|r| r.position.offset),
        );
    }
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
    fresh.commit_offset(40);
    a.commit_offset(40);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(segments().len(), 3, "b is behind: nothing deleted");
    // A segment ends at the end of the write that took it past 16 MiB (up
    // to 8 MiB gather at once): the first holds 1 to between 16 and 23.
    b.commit_offset(25);
    let deadline = Instant::now() + Duration::from_secs(5);
    while segments().len() != 2 {
        assert!(Instant::now() < deadline, "the first segment stays");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = segments()[0];
    assert!(
        first > 16 && first <= 26,
        "the segment holding 26 stays: {first}"
    );
    topic.close().await.unwrap();
    let offsets = read_offsets(dir.path()).unwrap();
    assert_eq!(offsets.get("b"), Some(&25));
    // Reopened: b resumes where it committed.
    let topic = open(dir.path(), None);
    let mut b = topic.open_consumer("b", None);
    assert_eq!(b.position(), 25);
    assert_eq!(b.poll(100).await.unwrap()[0].position.offset, 26);
}

async fn keyed(topic: &LogTopic, key: &str, receipt: &str) -> PublishOnce {
    let (key, receipt) = (key.to_string(), receipt.as_bytes().to_vec());
    let durable = topic
        .publish_once(0, key, b"payload".to_vec(), receipt)
        .await
        .unwrap();
    durable.await.unwrap()
}

#[tokio::test]
async fn a_key_is_published_once_from_memory_and_from_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let history = Arc::new(Applied::default());
    let topic = open(dir.path(), Some(history.clone()));
    let mut c = topic.open_consumer("c", None);
    assert_eq!(
        keyed(&topic, "k1", "first").await,
        PublishOnce::Published(position(1))
    );
    assert_eq!(
        keyed(&topic, "k1", "second").await,
        PublishOnce::Duplicate(b"first".to_vec()),
        "in memory"
    );
    // Applied for good: the history holds it, memory lets it go.
    history.0.lock().insert("k1".into(), b"first".to_vec());
    c.poll(10).await.unwrap();
    c.commit_offset(1);
    assert_eq!(topic.keys_in_memory(), 0);
    assert_eq!(
        keyed(&topic, "k1", "third").await,
        PublishOnce::Duplicate(b"first".to_vec()),
        "from the history"
    );
    assert_eq!(
        keyed(&topic, "k2", "x").await,
        PublishOnce::Published(position(2))
    );
    // Keys of records not applied yet survive a restart in the log.
    topic.close().await.unwrap();
    let topic = open(dir.path(), Some(history.clone()));
    assert_eq!(
        keyed(&topic, "k2", "y").await,
        PublishOnce::Duplicate(b"x".to_vec())
    );
    // A topic without a history keeps no keys.
    let plain = LogTopic::open(&dir.path().join("plain"), "p", options(None)).unwrap();
    assert!(plain
        .publish_once(0, "k".into(), vec![], vec![])
        .await
        .is_err());
}

#[tokio::test]
async fn concurrent_publishes_of_one_key_make_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Arc::new(open(dir.path(), Some(Arc::new(Applied::default()))));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let d = topic
                .publish_once(0, "same".into(), vec![], format!("r{i}").into_bytes())
                .await
                .unwrap();
            d.await.unwrap()
        }));
    }
    let mut published = 0;
    let mut receipts = std::collections::HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            PublishOnce::Published(o) => {
                published += 1;
                assert_eq!(o, position(1));
            }
            PublishOnce::Duplicate(r) => {
                receipts.insert(r);
            }
        }
    }
    assert_eq!(published, 1);
    assert_eq!(receipts.len(), 1, "every repeat got the first's receipt");
}

#[tokio::test]
async fn a_failed_write_fails_its_publishers_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let history: Arc<dyn KeyHistory> = Arc::new(Applied::default());
    let failing = LogOptions {
        fail_after_writes: Some(1),
        ..options(Some(history.clone()))
    };
    let topic = LogTopic::open(dir.path(), "t", failing).unwrap();
    assert_eq!(
        keyed(&topic, "k1", "r1").await,
        PublishOnce::Published(position(1))
    );
    let file = segment::path(dir.path(), 1);
    let len = std::fs::metadata(&file).unwrap().len();
    for _ in 0..2 {
        // Refused each time: the failed record's key was let go, so the
        // retry is a new publish, not a duplicate of a record never written.
        let durable = topic
            .publish_once(0, "k2".into(), b"p".to_vec(), b"r2".to_vec())
            .await
            .unwrap();
        let err = durable.await.expect_err("the write fails");
        assert!(err.to_string().contains("log failed"), "{err}");
    }
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len, "cut back");
    topic.close().await.unwrap();

    let topic = LogTopic::open(dir.path(), "t", options(Some(history))).unwrap();
    let mut c = topic.open_consumer("c", Some(0));
    let records = c.poll(10).await.unwrap();
    assert_eq!(records.len(), 1, "only what was confirmed");
    assert_eq!(
        keyed(&topic, "k2", "r2").await,
        PublishOnce::Published(position(2))
    );
}

#[tokio::test]
async fn a_consumer_far_behind_reads_the_segments_from_deep_inside_one() {
    let dir = tempfile::tempdir().unwrap();
    let topic = open(dir.path(), None);
    // More records than the tail holds and than one read takes.
    assert_eq!(publish_all(&topic, 0..25_000).await.len(), 25_000);
    for from in [0, 5_000] {
        let mut c = topic.open_consumer("c", Some(from));
        let mut seen = Vec::new();
        while seen.len() < (25_000 - from) as usize {
            let polled = c.poll(1_000).await.unwrap();
            assert!(polled.len() <= 1_000);
            seen.extend(polled.iter().map(|r| r.position.offset));
        }
        assert_eq!(seen, (from + 1..=25_000).collect::<Vec<_>>(), "from {from}");
        assert_eq!(c.lag(), 0);
    }
}
