//! A durable topic on the embedded database: an append log table with
//! AUTOINCREMENT offsets (never reused, even after pruning) and committed
//! consumer offsets. Appends go through the group-committing writer; a
//! `watch` channel carries the committed head to consumers, and the newest
//! committed records stay in memory (`Tail`) so a consumer that keeps up
//! never reads the log back from disk.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{params, OptionalExtension};
use tokio::sync::watch;

use super::{schema, Database, ReadPool, Writer};
use crate::error::{BackendError, BackendResult};
use crate::service::backend::{Durable, DurableTopic, PublishOnce, TopicConsumer, TopicRecord};
use crate::service::watermark::Watermark;

pub struct SqliteTopic {
    name: String,
    table: String,
    writer: Writer,
    readers: Arc<ReadPool>,
    committed: Arc<Committed>,
}

/// Committed records kept in memory for consumers, newest last.
const TAIL_RECORDS: usize = 16 * 1024;

/// What has been committed to a topic: its head offset, which consumers
/// wait on, and its newest records (in offset order, none missing between
/// the first and the last), which they read without touching the log.
struct Committed {
    head: Watermark,
    tail: Mutex<VecDeque<TopicRecord>>,
}

impl Committed {
    /// Called in commit order (on the writer thread, after the commit).
    fn append(&self, offset: u64, payload: &Bytes) {
        {
            let mut tail = self.tail.lock();
            if tail.len() >= TAIL_RECORDS {
                tail.pop_front();
            }
            tail.push_back(TopicRecord {
                offset,
                payload: payload.clone(),
            });
        }
        self.head.advance(offset);
    }

    /// Up to `max` records after `position` from memory; `None` if some
    /// may have left the tail (or none are there): the caller reads the log.
    fn after(&self, position: u64, max: usize) -> Option<Vec<TopicRecord>> {
        let tail = self.tail.lock();
        if tail.front()?.offset > position + 1 {
            return None;
        }
        let start = tail.partition_point(|r| r.offset <= position);
        let records: Vec<_> = tail.range(start..).take(max).cloned().collect();
        (!records.is_empty()).then_some(records)
    }
}

impl SqliteTopic {
    /// Opens topic `name` (lowercase letters and `_`), creating its log.
    pub async fn open(db: &Database, name: &str) -> BackendResult<Arc<SqliteTopic>> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(BackendError::Other(format!("invalid topic name {name:?}")));
        }
        let table = format!("topic_{name}");
        let sql = schema::topic_table_sql(&table);
        db.writer.write(move |c| Ok(c.execute_batch(&sql)?)).await?;
        let t = table.clone();
        let head = db
            .readers
            .read(move |c| {
                let sql = format!("SELECT coalesce(max(offset), 0) FROM {t}");
                let max: i64 = c.query_row(&sql, [], |r| r.get(0))?;
                let seq: Option<i64> = c
                    .query_row(
                        "SELECT seq FROM sqlite_sequence WHERE name = ?",
                        [&t],
                        |r| r.get(0),
                    )
                    .optional()?;
                Ok(max.max(seq.unwrap_or(0)) as u64)
            })
            .await?;
        let committed = Arc::new(Committed {
            head: Watermark::new(head),
            tail: Mutex::default(),
        });
        Ok(Arc::new(SqliteTopic {
            name: name.to_string(),
            table,
            writer: db.writer.clone(),
            readers: db.readers.clone(),
            committed,
        }))
    }
}

#[async_trait]
impl DurableTopic for SqliteTopic {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, payload: Vec<u8>) -> BackendResult<Durable<u64>> {
        let sql = format!("INSERT INTO {}(payload) VALUES (?)", self.table);
        let committed = self.committed.clone();
        let payload = Bytes::from(payload);
        let rx = self
            .writer
            .enqueue(
                move |c| {
                    c.prepare_cached(&sql)?.execute([&payload[..]])?;
                    Ok((c.last_insert_rowid() as u64, payload))
                },
                move |(offset, payload)| committed.append(*offset, payload),
            )
            .await?;
        Ok(Box::pin(async move {
            let (offset, _) = rx.await.map_err(|_| BackendError::Closed)??;
            Ok(offset)
        }))
    }

    async fn publish_once(
        &self,
        key: String,
        payload: Vec<u8>,
        receipt: Vec<u8>,
    ) -> BackendResult<Durable<PublishOnce>> {
        let sql = format!("INSERT INTO {}(payload) VALUES (?)", self.table);
        let committed = self.committed.clone();
        let payload = Bytes::from(payload);
        let rx = self
            .writer
            .enqueue(
                move |c| {
                    // Insert-first: the common case (a new key) costs no read.
                    let fresh = c
                        .prepare_cached(
                            "INSERT OR IGNORE INTO idempotency(key, receipt) VALUES (?, ?)",
                        )?
                        .execute(params![key, receipt])?
                        == 1;
                    if !fresh {
                        let earlier: Vec<u8> = c
                            .prepare_cached("SELECT receipt FROM idempotency WHERE key = ?")?
                            .query_row([&key], |r| r.get(0))?;
                        return Ok((PublishOnce::Duplicate(earlier), payload));
                    }
                    c.prepare_cached(&sql)?.execute([&payload[..]])?;
                    let offset = c.last_insert_rowid() as u64;
                    Ok((PublishOnce::Published(offset), payload))
                },
                move |(outcome, payload)| {
                    if let PublishOnce::Published(offset) = outcome {
                        committed.append(*offset, payload);
                    }
                },
            )
            .await?;
        Ok(Box::pin(async move {
            let (outcome, _) = rx.await.map_err(|_| BackendError::Closed)??;
            Ok(outcome)
        }))
    }

    async fn consumer(
        &self,
        group: &str,
        resume_after: Option<u64>,
    ) -> BackendResult<Box<dyn TopicConsumer>> {
        let (topic, consumer) = (self.name.clone(), group.to_string());
        let committed = self
            .readers
            .read(move |c| {
                let v: Option<i64> = c
                    .query_row(
                        "SELECT committed FROM consumer_offsets WHERE topic = ? AND consumer = ?",
                        [&topic, &consumer],
                        |r| r.get(0),
                    )
                    .optional()?;
                Ok(v.unwrap_or(0) as u64)
            })
            .await?;
        Ok(Box::new(SqliteConsumer {
            topic: self.name.clone(),
            table: self.table.clone(),
            group: group.to_string(),
            position: resume_after.unwrap_or(committed),
            last_pruned: committed,
            head: self.committed.head.subscribe(),
            committed: self.committed.clone(),
            writer: self.writer.clone(),
            readers: self.readers.clone(),
        }))
    }

    /// Topics share `topics.db`: the first close closes it for all of
    /// them, later ones find it closed.
    async fn close(&self) -> BackendResult<()> {
        self.writer.close().await
    }
}

/// Prune the log once this many consumed records have piled up.
const PRUNE_EVERY: u64 = 4096;

struct SqliteConsumer {
    topic: String,
    table: String,
    group: String,
    /// Last offset handed out by `poll`.
    position: u64,
    last_pruned: u64,
    head: watch::Receiver<u64>,
    committed: Arc<Committed>,
    writer: Writer,
    readers: Arc<ReadPool>,
}

impl SqliteConsumer {
    /// Up to `max` committed records after `position`, from memory if the
    /// tail still holds them, else from the log.
    async fn read_after(&self, max: usize) -> BackendResult<Vec<TopicRecord>> {
        if let Some(records) = self.committed.after(self.position, max) {
            return Ok(records);
        }
        let sql = format!(
            "SELECT offset, payload FROM {} WHERE offset > ? ORDER BY offset LIMIT ?",
            self.table
        );
        let (after, limit) = (self.position as i64, max.max(1) as i64);
        self.readers
            .read(move |c| {
                let mut stmt = c.prepare_cached(&sql)?;
                let rows = stmt.query_map([after, limit], |r| {
                    Ok(TopicRecord {
                        offset: r.get::<_, i64>(0)? as u64,
                        payload: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }
}

#[async_trait]
impl TopicConsumer for SqliteConsumer {
    async fn poll(&mut self, max: usize) -> BackendResult<Vec<TopicRecord>> {
        loop {
            let head = *self.head.borrow_and_update();
            if head > self.position {
                let records = self.read_after(max).await?;
                if let Some(last) = records.last() {
                    self.position = last.offset;
                    return Ok(records);
                }
                // Offsets up to head were pruned or skipped: move on.
                self.position = head;
            }
            if self.head.changed().await.is_err() {
                return Err(BackendError::Closed);
            }
        }
    }

    async fn commit(&mut self, offset: u64) -> BackendResult<()> {
        let (topic, group, table) = (self.topic.clone(), self.group.clone(), self.table.clone());
        let prune_to = (offset >= self.last_pruned + PRUNE_EVERY).then_some(offset);
        if let Some(p) = prune_to {
            self.last_pruned = p;
        }
        // Not awaited: processing is idempotent, and the offset lands in the
        // next group commit anyway.
        let _pending = self
            .writer
            .enqueue(
                move |c| {
                    c.prepare_cached(
                        "INSERT INTO consumer_offsets(topic, consumer, committed) VALUES (?1, ?2, ?3)
                         ON CONFLICT(topic, consumer) DO UPDATE SET committed = max(committed, ?3)",
                    )?
                    .execute(params![topic, group, offset as i64])?;
                    if prune_to.is_some() {
                        // Keep what any consumer of the topic still needs.
                        let sql = format!(
                            "DELETE FROM {table} WHERE offset <= \
                             (SELECT min(committed) FROM consumer_offsets WHERE topic = ?)"
                        );
                        c.execute(&sql, [&topic])?;
                    }
                    Ok(())
                },
                |_| {},
            )
            .await?;
        Ok(())
    }

    fn lag(&self) -> u64 {
        self.head.borrow().saturating_sub(self.position)
    }

    fn position(&self) -> u64 {
        self.position
    }
}
