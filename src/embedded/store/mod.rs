//! `Store` on the embedded database. Writes run in the group-committing
//! writer; reads run on the read pool.

mod rows;
mod status;
mod storing;
mod tokens;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::seqs::{self, PairLookup, Planned, SeqCache};
use super::{Database, DurablePositions, ReadPool, Writer};
use crate::error::{BackendError, BackendResult};
use crate::model::{
    AcceptedSend, AckCommand, AckOutcome, AckRecord, Group, InboxMessage, InboxRef, InboxStatus,
    KnownSend, MessageDoc, SendRecord, SessionInfo, SessionSummary, SessionType, StoredBatch,
    StoredMessage, User,
};
use crate::service::backend::{
    AuthState, Checkpoint, RecallOutcome, RecallStep, RevokedToken, Store,
};

use rows::{
    group_members, inbox_query, load_group, message_from_row, opt_id, sessions_of, user_from_row,
    MESSAGE_COLUMNS,
};
use status::{apply_ack, recall_in};
use storing::{find_single_session, insert_planned, store_batch};

#[derive(Clone)]
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<ReadPool>,
    durable: Arc<DurablePositions>,
    seqs: Arc<Mutex<SeqCache>>,
    /// Pairs given a session id whose first message is not stored yet:
    /// the only record of that id until then. A first message costs no
    /// write and no wait for a commit; this process alone numbers the
    /// pair's messages, so nobody else needs to know the id sooner.
    fresh_pairs: Arc<Mutex<HashMap<(u64, u64), u64>>>,
}

impl SqliteStore {
    pub fn new(db: &Database) -> SqliteStore {
        SqliteStore {
            writer: db.writer.clone(),
            readers: db.readers.clone(),
            durable: db.durable.clone(),
            seqs: Arc::default(),
            fresh_pairs: Arc::default(),
        }
    }

    /// The position last saved for `consumer`, if any: where it resumes.
    pub async fn applied_position(&self, consumer: &str) -> BackendResult<Option<u64>> {
        let consumer = consumer.to_string();
        self.readers
            .read(move |c| {
                Ok(
                    c.prepare_cached("SELECT position FROM applied_positions WHERE consumer = ?")?
                        .query_row([consumer], |r| r.get::<_, i64>(0))
                        .optional()?
                        .map(|v| v as u64),
                )
            })
            .await
    }

    /// The highest position saved for `consumer` that survives a power
    /// loss; its topic may forget the records up to it.
    pub fn durable_position(&self, consumer: &str) -> u64 {
        self.durable.get(consumer)
    }

    /// The session stored for the pair, if any. Not through the writer,
    /// whose commits a new pair's first send would wait behind: every pair
    /// stored and not committed yet is in the seq cache (and if the cache
    /// started over, the writer commits first).
    async fn find_single_session(&self, pair: (u64, u64)) -> BackendResult<Option<u64>> {
        let lookup = valid_seqs(&self.seqs, &self.writer).pair_session(pair);
        match lookup {
            PairLookup::Found(id) => return Ok(Some(id)),
            PairLookup::Committed => {}
            PairLookup::Settle(epoch) => {
                self.writer.settle().await?;
                self.seqs.lock().settled(epoch);
            }
        }
        let (lo, hi) = (pair.0 as i64, pair.1 as i64);
        self.readers.read_here(|c| find_single_session(c, lo, hi))
    }

    #[cfg(test)]
    pub(crate) fn fresh_pair_count(&self) -> usize {
        self.fresh_pairs.lock().len()
    }

    /// The pairs whose first message is stored now leave `fresh_pairs`
    /// (the seq cache, then the database, know them).
    fn pairs_stored(&self, pairs: impl IntoIterator<Item = (u64, u64)>) {
        let mut fresh = self.fresh_pairs.lock();
        for pair in pairs {
            fresh.remove(&pair);
        }
    }

    /// Runs the consumer's writes `f` and saves its position `applied` in
    /// the same job, so they commit (or fail) together. Answers before the
    /// commit (`Writer::apply`): the topic already holds them durably.
    async fn write_applied<R, F>(&self, applied: Checkpoint, f: F) -> BackendResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> BackendResult<R> + Send + 'static,
    {
        self.writer
            .apply(move |c| {
                let written = f(c)?;
                save_applied(c, applied)?;
                Ok(written)
            })
            .await
    }

    /// Queues the inserts of messages numbered in memory and answers at
    /// once: the caller pushes them while the writer catches up.
    async fn write_planned(
        &self,
        planned: Vec<(Planned, StoredMessage)>,
        applied: Checkpoint,
    ) -> BackendResult<StoredBatch> {
        let (writes, stored): (Vec<Planned>, Vec<StoredMessage>) = planned.into_iter().unzip();
        let new_pairs: Vec<(u64, u64)> = writes.iter().filter_map(|p| p.new_session).collect();
        let queued = self
            .writer
            .apply_detached(move |c| {
                insert_planned(c, &writes)?;
                save_applied(c, applied)
            })
            .await;
        if let Err(e) = queued {
            // The numbers were taken but will not be written.
            self.seqs.lock().forget();
            return Err(e);
        }
        self.pairs_stored(new_pairs);
        Ok(StoredBatch {
            stored,
            known: Vec::new(),
        })
    }
}

/// The seq cache, emptied first if the writer rolled back since its last
/// use (it may hold numbers that never committed).
fn valid_seqs<'a>(seqs: &'a Mutex<SeqCache>, writer: &Writer) -> MutexGuard<'a, SeqCache> {
    let mut guard = seqs.lock();
    guard.validate(writer.rollbacks());
    guard
}

/// Saves a consumer's position in the transaction of what it applied.
/// (The embedded log has one partition.)
fn save_applied(c: &Connection, applied: Checkpoint) -> BackendResult<()> {
    c.prepare_cached(
        "INSERT INTO applied_positions(consumer, position) VALUES (?1, ?2)
         ON CONFLICT(consumer) DO UPDATE SET position = max(position, ?2)",
    )?
    .execute(params![applied.consumer, applied.last as i64])?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: User) -> BackendResult<bool> {
        self.writer
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "INSERT OR IGNORE INTO users(user_id, username, nickname, password_hash, created_at)
                         VALUES (?, ?, ?, ?, ?)",
                    )?
                    .execute(params![user.user_id as i64, user.username, user.nickname, user.password_hash, user.created_at])?;
                Ok(n == 1)
            })
            .await
    }

    async fn user_by_username(&self, username: &str) -> BackendResult<Option<User>> {
        let name = username.to_string();
        self.readers
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT user_id, username, nickname, password_hash, created_at FROM users WHERE username = ?",
                )?
                .query_row([name], user_from_row)
                .optional()?)
            })
            .await
    }

    async fn user_by_id(&self, user_id: u64) -> BackendResult<Option<User>> {
        self.readers
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT user_id, username, nickname, password_hash, created_at FROM users WHERE user_id = ?",
                )?
                .query_row([user_id as i64], user_from_row)
                .optional()?)
            })
            .await
    }

    async fn existing_users(&self, ids: &[u64]) -> BackendResult<Vec<u64>> {
        let ids = ids.to_vec();
        self.readers
            .read(move |c| {
                let mut stmt = c.prepare_cached("SELECT 1 FROM users WHERE user_id = ?")?;
                let mut found = Vec::with_capacity(ids.len());
                for id in ids {
                    if stmt
                        .query_row([id as i64], |_| Ok(()))
                        .optional()?
                        .is_some()
                    {
                        found.push(id);
                    }
                }
                Ok(found)
            })
            .await
    }

    async fn create_group(&self, group: Group) -> BackendResult<()> {
        self.writer
            .write(move |c| {
                c.prepare_cached("INSERT INTO groups_(group_id, session_id, name, owner_id, created_at) VALUES (?, ?, ?, ?, ?)")?
                    .execute(params![group.group_id as i64, group.session_id as i64, group.name, group.owner_id as i64, group.created_at])?;
                c.prepare_cached("INSERT INTO sessions(session_id, session_type, group_id, last_seq, updated_at) VALUES (?, 2, ?, 0, ?)")?
                    .execute(params![group.session_id as i64, group.group_id as i64, group.created_at])?;
                let mut ins = c.prepare_cached(
                    "INSERT OR IGNORE INTO group_members(group_id, user_id, joined_at) VALUES (?, ?, ?)",
                )?;
                for (i, m) in group.member_ids.iter().enumerate() {
                    ins.execute(params![group.group_id as i64, *m as i64, group.created_at + i as i64])?;
                }
                Ok(())
            })
            .await
    }

    async fn group(&self, group_id: u64) -> BackendResult<Option<Group>> {
        self.readers.read(move |c| load_group(c, group_id)).await
    }

    async fn add_group_members(&self, group_id: u64, user_ids: &[u64]) -> BackendResult<()> {
        let ids = user_ids.to_vec();
        let now = crate::model::ids::now_ms();
        self.writer
            .write(move |c| {
                // After every member there (a group's first members are
                // stamped created_at + i, maybe later than now): members
                // list in the order they joined.
                let latest: i64 = c
                    .prepare_cached("SELECT coalesce(max(joined_at), 0) FROM group_members WHERE group_id = ?")?
                    .query_row([group_id as i64], |r| r.get(0))?;
                let from = now.max(latest + 1);
                let mut ins = c.prepare_cached(
                    "INSERT OR IGNORE INTO group_members(group_id, user_id, joined_at) VALUES (?, ?, ?)",
                )?;
                for (i, id) in ids.into_iter().enumerate() {
                    ins.execute(params![group_id as i64, id as i64, from + i as i64])?;
                }
                Ok(())
            })
            .await
    }

    async fn remove_group_member(&self, group_id: u64, user_id: u64) -> BackendResult<bool> {
        self.writer
            .write(move |c| {
                let n = c
                    .prepare_cached("DELETE FROM group_members WHERE group_id = ? AND user_id = ?")?
                    .execute([group_id as i64, user_id as i64])?;
                Ok(n > 0)
            })
            .await
    }

    async fn single_session(&self, a: u64, b: u64, candidate: u64) -> BackendResult<u64> {
        let pair = seqs::pair(a, b);
        if let Some(&id) = self.fresh_pairs.lock().get(&pair) {
            return Ok(id);
        }
        if let Some(id) = self.find_single_session(pair).await? {
            return Ok(id);
        }
        // Under the lock: concurrent first sends of a pair agree on one
        // id, and a first message stored meanwhile is in the seq cache.
        let mut fresh = self.fresh_pairs.lock();
        if let Some(&id) = fresh.get(&pair) {
            return Ok(id);
        }
        let mut seqs = valid_seqs(&self.seqs, &self.writer);
        if let PairLookup::Found(id) = seqs.pair_session(pair) {
            return Ok(id);
        }
        fresh.insert(pair, candidate);
        seqs.allocated(candidate, a, b);
        Ok(candidate)
    }

    async fn session_info(&self, session_id: u64) -> BackendResult<Option<SessionInfo>> {
        self.readers
            .read(move |c| {
                let row = c
                    .prepare_cached("SELECT session_type, user_lo, user_hi, group_id FROM sessions WHERE session_id = ?")?
                    .query_row([session_id as i64], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?, r.get::<_, Option<i64>>(2)?, r.get::<_, Option<i64>>(3)?))
                    })
                    .optional()?;
                let Some((kind, lo, hi, group)) = row else { return Ok(None) };
                let session_type = SessionType::from_code(kind);
                let members = match (session_type, group) {
                    (SessionType::Group, Some(g)) => group_members(c, g as u64)?,
                    _ => [lo, hi].into_iter().flatten().map(|v| v as u64).collect(),
                };
                Ok(Some(SessionInfo { session_id, session_type, members, group_id: opt_id(group) }))
            })
            .await
    }

    async fn store_messages(
        &self,
        records: Vec<SendRecord>,
        applied: Checkpoint,
    ) -> BackendResult<StoredBatch> {
        let planned = valid_seqs(&self.seqs, &self.writer).plan(records, applied);
        let records = match planned {
            Ok(planned) => {
                metrics::counter!("herald_messages_numbered_total", "by" => "memory")
                    .increment(planned.len() as u64);
                return self.write_planned(planned, applied).await;
            }
            Err(records) => records,
        };
        metrics::counter!("herald_messages_numbered_total", "by" => "writer")
            .increment(records.len() as u64);
        let (seqs, writer) = (self.seqs.clone(), self.writer.clone());
        let written = self
            .write_applied(applied, move |c| {
                let mut seqs = valid_seqs(&seqs, &writer);
                let written = store_batch(c, &mut seqs, records)?;
                seqs.stored_through(applied);
                Ok(written)
            })
            .await?;
        self.pairs_stored(written.resolved_pairs);
        Ok(written.batch)
    }

    async fn apply_acks(
        &self,
        acks: Vec<AckRecord>,
        applied: Checkpoint,
    ) -> BackendResult<Vec<AckOutcome>> {
        self.write_applied(applied, move |c| {
            acks.iter().map(|a| apply_ack(c, a)).collect()
        })
        .await
    }

    async fn recall(
        &self,
        message_id: u64,
        sender_id: u64,
        not_before_ms: i64,
    ) -> BackendResult<RecallOutcome> {
        self.writer
            .write(move |c| recall_in(c, message_id, sender_id, not_before_ms))
            .await
    }

    async fn message(&self, message_id: u64) -> BackendResult<Option<MessageDoc>> {
        self.readers
            .read(move |c| {
                Ok(c.prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.message_id = ?"
                ))?
                .query_row([message_id as i64], |r| message_from_row(r, 0))
                .optional()?)
            })
            .await
    }

    /// A point lookup on an index, answered on the calling thread: the
    /// idempotency check of every send whose key left the topic asks it.
    async fn sent_message(
        &self,
        sender_id: u64,
        client_message_id: &str,
    ) -> BackendResult<Option<AcceptedSend>> {
        self.readers.read_here(|c| {
            Ok(c.prepare_cached(
                "SELECT message_id, session_id, server_ts FROM messages \
                 WHERE sender_id = ? AND client_message_id = ? ORDER BY message_id LIMIT 1",
            )?
            .query_row(params![sender_id as i64, client_message_id], |r| {
                Ok(AcceptedSend {
                    client_message_id: client_message_id.to_string(),
                    message_id: r.get::<_, i64>(0)? as u64,
                    session_id: r.get::<_, i64>(1)? as u64,
                    server_ts: r.get(2)?,
                })
            })
            .optional()?)
        })
    }

    async fn pull(
        &self,
        user_id: u64,
        session_id: u64,
        after_seq: i64,
        limit: usize,
    ) -> BackendResult<Vec<InboxMessage>> {
        self.readers
            .read(move |c| {
                inbox_query(
                    c,
                    "WHERE i.user_id = ?1 AND i.session_id = ?2 AND i.seq > ?3 ORDER BY i.seq LIMIT ?4",
                    &[&(user_id as i64), &(session_id as i64), &after_seq, &(limit as i64)],
                )
            })
            .await
    }

    async fn history(
        &self,
        user_id: u64,
        session_id: u64,
        before_seq: Option<i64>,
        limit: usize,
    ) -> BackendResult<Vec<InboxMessage>> {
        let before = before_seq.unwrap_or(i64::MAX);
        self.readers
            .read(move |c| {
                let mut page = inbox_query(
                    c,
                    "WHERE i.user_id = ?1 AND i.session_id = ?2 AND i.seq < ?3 ORDER BY i.seq DESC LIMIT ?4",
                    &[&(user_id as i64), &(session_id as i64), &before, &(limit as i64)],
                )?;
                page.reverse();
                Ok(page)
            })
            .await
    }

    async fn unread(&self, user_id: u64, limit: usize) -> BackendResult<(Vec<InboxMessage>, i64)> {
        self.readers
            .read(move |c| {
                let uid = user_id as i64;
                let page = inbox_query(
                    c,
                    "WHERE i.user_id = ?1 AND i.unread = 1 ORDER BY i.inbox_seq LIMIT ?2",
                    &[&uid, &(limit as i64)],
                )?;
                let total: i64 = c
                    .prepare_cached("SELECT count(*) FROM inbox WHERE user_id = ? AND unread = 1")?
                    .query_row([uid], |r| r.get(0))?;
                Ok((page, total))
            })
            .await
    }

    async fn sync(
        &self,
        user_id: u64,
        after_inbox_seq: i64,
        limit: usize,
    ) -> BackendResult<Vec<InboxMessage>> {
        self.readers
            .read(move |c| {
                inbox_query(
                    c,
                    "WHERE i.user_id = ?1 AND i.inbox_seq > ?2 ORDER BY i.inbox_seq LIMIT ?3",
                    &[&(user_id as i64), &after_inbox_seq, &(limit as i64)],
                )
            })
            .await
    }

    async fn inbox_messages(
        &self,
        user_id: u64,
        message_ids: &[u64],
    ) -> BackendResult<Vec<InboxMessage>> {
        let ids = message_ids.to_vec();
        self.readers
            .read(move |c| {
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    out.extend(inbox_query(
                        c,
                        "WHERE m.message_id = ?2 AND i.user_id = ?1 AND i.session_id = m.session_id AND i.seq = m.seq",
                        &[&(user_id as i64), &(id as i64)],
                    )?);
                }
                Ok(out)
            })
            .await
    }

    async fn sessions(&self, user_id: u64) -> BackendResult<Vec<SessionSummary>> {
        self.readers.read(move |c| sessions_of(c, user_id)).await
    }

    async fn auth_state(&self, user_id: u64) -> BackendResult<Option<AuthState>> {
        self.load_auth_state(user_id).await
    }

    async fn next_token_number(&self, user_id: u64) -> BackendResult<Option<u64>> {
        self.take_token_number(user_id).await
    }

    async fn revoke_token(
        &self,
        user_id: u64,
        token: RevokedToken,
        now_ms: i64,
    ) -> BackendResult<()> {
        self.add_revoked_token(user_id, token, now_ms).await
    }

    async fn revoke_tokens_before(&self, user_id: u64, number: u64) -> BackendResult<()> {
        self.set_revoked_before(user_id, number).await
    }

    async fn ping(&self) -> BackendResult<()> {
        self.readers
            .read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await?;
        self.writer.flush().await
    }

    async fn close(&self) -> BackendResult<()> {
        self.writer.close().await
    }
}
