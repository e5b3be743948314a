//! `Store` on the embedded database. Writes run in the group-committing
//! writer; reads run on the read pool.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::seqs::{self, PairLookup, Planned, SeqCache};
use super::{Database, DurablePositions, ReadPool, Writer};
use crate::error::{BackendError, BackendResult};
use crate::model::{
    AckCommand, AckOutcome, AckRecord, Group, InboxMessage, InboxRef, InboxStatus, MessageDoc,
    SendRecord, SessionInfo, SessionSummary, SessionType, StoredMessage, User,
};
use crate::service::backend::{AppliedPosition, RecallOutcome, Store};

#[derive(Clone)]
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<ReadPool>,
    durable: Arc<DurablePositions>,
    seqs: Arc<Mutex<SeqCache>>,
}

impl SqliteStore {
    pub fn new(db: &Database) -> SqliteStore {
        SqliteStore {
            writer: db.writer.clone(),
            readers: db.readers.clone(),
            durable: db.durable.clone(),
            seqs: Arc::default(),
        }
    }

    /// Runs the consumer's writes `f` and saves its position `applied` in
    /// the same job, so they commit (or fail) together. Answers before the
    /// commit (`Writer::apply`): the topic already holds them durably.
    async fn write_applied<R, F>(&self, applied: AppliedPosition, f: F) -> BackendResult<R>
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
        applied: AppliedPosition,
    ) -> BackendResult<Vec<StoredMessage>> {
        let (writes, stored): (Vec<Planned>, Vec<StoredMessage>) = planned.into_iter().unzip();
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
        Ok(stored)
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
fn save_applied(c: &Connection, applied: AppliedPosition) -> BackendResult<()> {
    c.prepare_cached(
        "INSERT INTO applied_positions(consumer, position) VALUES (?1, ?2)
         ON CONFLICT(consumer) DO UPDATE SET position = max(position, ?2)",
    )?
    .execute(params![applied.consumer, applied.offset as i64])?;
    Ok(())
}

const MESSAGE_COLUMNS: &str = "m.message_id, m.session_id, m.seq, m.session_type, m.sender_id, \
     m.to_user_id, m.group_id, m.message_type, m.content, m.client_message_id, m.client_ts, \
     m.server_ts, m.adjusted_ts, m.recalled";

fn opt_id(v: Option<i64>) -> Option<u64> {
    v.map(|x| x as u64)
}

/// Reads the `MESSAGE_COLUMNS` starting at column `at`.
fn message_from_row(r: &Row, at: usize) -> rusqlite::Result<MessageDoc> {
    Ok(MessageDoc {
        message_id: r.get::<_, i64>(at)? as u64,
        session_id: r.get::<_, i64>(at + 1)? as u64,
        seq: r.get(at + 2)?,
        session_type: SessionType::from_code(r.get(at + 3)?),
        sender_id: r.get::<_, i64>(at + 4)? as u64,
        to_user_id: opt_id(r.get(at + 5)?),
        group_id: opt_id(r.get(at + 6)?),
        message_type: r.get(at + 7)?,
        content: r.get(at + 8)?,
        client_message_id: r.get(at + 9)?,
        client_ts: r.get(at + 10)?,
        server_ts: r.get(at + 11)?,
        adjusted_ts: r.get(at + 12)?,
        recalled: r.get::<_, i64>(at + 13)? != 0,
    })
}

/// Rows of `SELECT i.inbox_seq, i.status, <MESSAGE_COLUMNS> FROM inbox i JOIN messages m ...`.
fn inbox_query(
    c: &Connection,
    where_and_order: &str,
    args: &[&dyn rusqlite::ToSql],
) -> BackendResult<Vec<InboxMessage>> {
    let sql = format!(
        "SELECT i.inbox_seq, i.status, {MESSAGE_COLUMNS} FROM inbox i \
         JOIN messages m ON m.message_id = i.message_id {where_and_order}"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(args, |r| {
        Ok(InboxMessage {
            inbox_seq: r.get(0)?,
            status: InboxStatus::from_code(r.get(1)?),
            doc: Arc::new(message_from_row(r, 2)?),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn user_from_row(r: &Row) -> rusqlite::Result<User> {
    Ok(User {
        user_id: r.get::<_, i64>(0)? as u64,
        username: r.get(1)?,
        nickname: r.get(2)?,
        password_hash: r.get(3)?,
        created_at: r.get(4)?,
    })
}

fn group_members(c: &Connection, group_id: u64) -> BackendResult<Vec<u64>> {
    let mut stmt = c.prepare_cached(
        "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY joined_at, user_id",
    )?;
    let rows = stmt.query_map([group_id as i64], |r| r.get::<_, i64>(0))?;
    Ok(rows
        .map(|r| r.map(|v| v as u64))
        .collect::<Result<Vec<_>, _>>()?)
}

fn load_group(c: &Connection, group_id: u64) -> BackendResult<Option<Group>> {
    let row = c
        .prepare_cached("SELECT group_id, session_id, name, owner_id, created_at FROM groups_ WHERE group_id = ?")?
        .query_row([group_id as i64], |r| {
            Ok(Group {
                group_id: r.get::<_, i64>(0)? as u64,
                session_id: r.get::<_, i64>(1)? as u64,
                name: r.get(2)?,
                owner_id: r.get::<_, i64>(3)? as u64,
                created_at: r.get(4)?,
                member_ids: Vec::new(),
            })
        })
        .optional()?;
    match row {
        Some(mut g) => {
            g.member_ids = group_members(c, group_id)?;
            Ok(Some(g))
        }
        None => Ok(None),
    }
}

/// State of one `store_messages` job: the seq counters (cached across
/// jobs), the sessions to write back at its end (one write per session,
/// not per message) and the group members it looked up.
struct Counters<'a> {
    seqs: &'a mut SeqCache,
    session_last: SessionLast,
    members: HashMap<u64, Vec<u64>>,
}

impl Counters<'_> {
    fn next_seq(&mut self, c: &Connection, session_id: u64) -> BackendResult<i64> {
        if let Some(v) = self.seqs.session_seq.get_mut(&session_id) {
            *v += 1;
            return Ok(*v);
        }
        let last: i64 = c
            .prepare_cached("SELECT last_seq FROM sessions WHERE session_id = ?")?
            .query_row([session_id as i64], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        self.seqs.session_seq.insert(session_id, last + 1);
        Ok(last + 1)
    }

    fn next_inbox_seq(&mut self, c: &Connection, user_id: u64) -> BackendResult<i64> {
        if let Some(v) = self.seqs.inbox_seq.get_mut(&user_id) {
            *v += 1;
            return Ok(*v);
        }
        let last: i64 = c
            .prepare_cached("SELECT coalesce(max(inbox_seq), 0) FROM inbox WHERE user_id = ?")?
            .query_row([user_id as i64], |r| r.get(0))?;
        self.seqs.inbox_seq.insert(user_id, last + 1);
        Ok(last + 1)
    }

    fn recipients(&mut self, c: &Connection, r: &SendRecord) -> BackendResult<Vec<u64>> {
        match (r.session_type, r.to_user_id, r.group_id) {
            (SessionType::Group, _, Some(g)) => {
                let mut all = match self.members.get(&g) {
                    Some(m) => m.clone(),
                    None => {
                        let m = group_members(c, g)?;
                        self.members.insert(g, m.clone());
                        m
                    }
                };
                if !all.contains(&r.sender_id) {
                    all.push(r.sender_id);
                }
                Ok(all)
            }
            (_, Some(to), _) => Ok(vec![r.sender_id, to]),
            _ => Ok(vec![r.sender_id]),
        }
    }
}

/// The last message of each session a batch wrote to: written back once
/// per session at the end of the batch, not per message.
#[derive(Default)]
struct SessionLast(HashMap<u64, (i64, u64, i64)>);

impl SessionLast {
    fn note(&mut self, doc: &MessageDoc) {
        let last = (doc.seq, doc.message_id, doc.server_ts);
        self.0
            .entry(doc.session_id)
            .and_modify(|l| *l = (*l).max(last))
            .or_insert(last);
    }

    fn write_back(&self, c: &Connection) -> BackendResult<()> {
        let mut upd = c.prepare_cached(
            "UPDATE sessions SET last_seq = ?2, last_message_id = ?3, updated_at = ?4 WHERE session_id = ?1",
        )?;
        for (sid, (seq, mid, ts)) in &self.0 {
            upd.execute(params![*sid as i64, seq, *mid as i64, ts])?;
        }
        Ok(())
    }
}

fn insert_message(c: &Connection, doc: &MessageDoc) -> BackendResult<()> {
    c.prepare_cached(
        "INSERT INTO messages(message_id, session_id, seq, session_type, sender_id, to_user_id, group_id,
         message_type, content, client_message_id, client_ts, server_ts, adjusted_ts, recalled)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 0)",
    )?
    .execute(params![
        doc.message_id as i64,
        doc.session_id as i64,
        doc.seq,
        doc.session_type.code(),
        doc.sender_id as i64,
        doc.to_user_id.map(|v| v as i64),
        doc.group_id.map(|v| v as i64),
        doc.message_type,
        doc.content,
        doc.client_message_id,
        doc.client_ts,
        doc.server_ts,
        doc.adjusted_ts,
    ])?;
    Ok(())
}

fn insert_inbox_entries(
    c: &Connection,
    doc: &MessageDoc,
    entries: &[InboxRef],
) -> BackendResult<()> {
    let mut ins = c.prepare_cached(
        "INSERT INTO inbox(user_id, inbox_seq, message_id, session_id, seq, status, unread) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for e in entries {
        ins.execute(params![
            e.user_id as i64,
            e.inbox_seq,
            doc.message_id as i64,
            doc.session_id as i64,
            doc.seq,
            e.status.code(),
            e.status.is_unread()
        ])?;
    }
    Ok(())
}

/// Inserts the row of a single session; `false` if the pair has one.
fn insert_single_session(
    c: &Connection,
    session_id: u64,
    (lo, hi): (u64, u64),
    ts: i64,
) -> BackendResult<bool> {
    let inserted = c
        .prepare_cached(
            "INSERT INTO sessions(session_id, session_type, user_lo, user_hi, last_seq, updated_at)
             VALUES (?, 1, ?, ?, 0, ?) ON CONFLICT DO NOTHING",
        )?
        .execute(params![session_id as i64, lo as i64, hi as i64, ts])?;
    Ok(inserted == 1)
}

/// Inserts messages numbered by `SeqCache::plan`. The numbers were pushed
/// already, so anything unexpected (a pair with another session) fails the
/// job, and the process exits to replay them (`Writer::apply_detached`).
fn insert_planned(c: &Connection, planned: &[Planned]) -> BackendResult<()> {
    let mut last = SessionLast::default();
    for p in planned {
        let doc = &p.doc;
        if let Some(pair) = p.new_session {
            if !insert_single_session(c, doc.session_id, pair, doc.server_ts)? {
                return Err(BackendError::Other(format!(
                    "session {} of a new pair exists already",
                    doc.session_id
                )));
            }
        }
        insert_message(c, doc)?;
        insert_inbox_entries(c, doc, &p.recipients)?;
        last.note(doc);
    }
    last.write_back(c)
}

fn store_batch(
    c: &Connection,
    seqs: &mut SeqCache,
    records: Vec<SendRecord>,
) -> BackendResult<Vec<StoredMessage>> {
    let mut counters = Counters {
        seqs,
        session_last: SessionLast::default(),
        members: HashMap::new(),
    };
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let exists = c
            .prepare_cached("SELECT 1 FROM messages WHERE message_id = ?")?
            .query_row([r.message_id as i64], |_| Ok(()))
            .optional()?
            .is_some();
        if exists {
            // Reprocessed after a crash: stored already, nothing to push
            // (devices reconnect and sync).
            continue;
        }
        let mut r = r;
        // A session this writer has not stored into yet may be a new pair.
        let session_resolved = r.session_type == SessionType::Single
            && !counters.seqs.session_seq.contains_key(&r.session_id);
        if session_resolved {
            let given = r.session_id;
            let pair = seqs::pair(r.sender_id, r.to_user_id.unwrap_or(r.sender_id));
            r.session_id = ensure_single_session(c, &r, pair)?;
            counters.seqs.resolved(given, pair, r.session_id);
        }
        let recipients = counters.recipients(c, &r)?;
        let seq = counters.next_seq(c, r.session_id)?;
        let accepted_at_ms = r.server_ts;
        let doc = MessageDoc::from_record(r, seq);
        insert_message(c, &doc)?;
        counters.session_last.note(&doc);
        let mut refs = Vec::with_capacity(recipients.len());
        for user_id in recipients {
            let inbox_seq = counters.next_inbox_seq(c, user_id)?;
            refs.push(seqs::inbox_entry(user_id, doc.sender_id, inbox_seq));
        }
        insert_inbox_entries(c, &doc, &refs)?;
        out.push(StoredMessage {
            doc: Arc::new(doc),
            recipients: refs,
            accepted_at_ms,
            session_resolved,
        });
    }
    counters.session_last.write_back(c)?;
    Ok(out)
}

fn find_single_session(c: &Connection, lo: i64, hi: i64) -> BackendResult<Option<u64>> {
    Ok(c.prepare_cached(
        "SELECT session_id FROM sessions WHERE session_type = 1 AND user_lo = ? AND user_hi = ?",
    )?
    .query_row([lo, hi], |r| r.get::<_, i64>(0))
    .optional()?
    .map(|v| v as u64))
}

/// Creates the single session a record names if it is new, and returns
/// the pair's session id: the record's, unless the pair already has
/// another (possible only if two ids were handed out for a pair across a
/// crash, before the first was stored; its messages then join the stored
/// session, so the pair keeps one conversation).
fn ensure_single_session(c: &Connection, r: &SendRecord, pair: (u64, u64)) -> BackendResult<u64> {
    insert_single_session(c, r.session_id, pair, r.server_ts)?;
    let id = find_single_session(c, pair.0 as i64, pair.1 as i64)?.unwrap_or(r.session_id);
    if id != r.session_id {
        tracing::warn!(
            given = r.session_id,
            stored = id,
            "a second session id for one pair; storing under the first"
        );
    }
    Ok(id)
}

/// Where a message sits in every inbox: (session id, seq).
fn message_position(c: &Connection, message_id: u64) -> BackendResult<Option<(i64, i64)>> {
    Ok(
        c.prepare_cached("SELECT session_id, seq FROM messages WHERE message_id = ?")?
            .query_row([message_id as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    )
}

/// The UPDATE raising the entry named by `key` (parameters ?2 to ?4) to
/// `status` (?1) if its status is ?5: one indexed write per ack instead of
/// a read and a write. `unread` is only written by a raise to read: an
/// update naming it rewrites the unread index's entry (see
/// `schema::add_inbox_unread`). Static text: it is looked up per ack.
macro_rules! raise_status_sql {
    ($status:expr, $key:literal) => {
        if $status.is_unread() {
            concat!(
                "UPDATE inbox SET status = ?1 WHERE ",
                $key,
                " AND status = ?5"
            )
        } else {
            concat!(
                "UPDATE inbox SET status = ?1, unread = 0 WHERE ",
                $key,
                " AND status = ?5"
            )
        }
    };
}

/// Raises one entry (`key`: its three key parameters) to `status` and
/// counts it in `out`: tried from each lower status in turn, so the first
/// update that matches also tells which status it left.
fn raise_entry(
    upd: &mut rusqlite::CachedStatement<'_>,
    out: &mut AckOutcome,
    message_id: u64,
    status: InboxStatus,
    key: [i64; 3],
) -> BackendResult<()> {
    for old in [InboxStatus::Pending, InboxStatus::Delivered] {
        if old >= status {
            break;
        }
        if upd.execute(params![status.code(), key[0], key[1], key[2], old.code()])? == 1 {
            out.raise(message_id, old, status);
            break;
        }
    }
    Ok(())
}

fn apply_ack(c: &Connection, ack: &AckRecord) -> BackendResult<AckOutcome> {
    let mut out = AckOutcome::default();
    let user = ack.user_id as i64;
    match &ack.command {
        AckCommand::Messages {
            message_ids,
            status,
        } => {
            let mut upd = c.prepare_cached(raise_status_sql!(
                status,
                "user_id = ?2 AND session_id = ?3 AND seq = ?4"
            ))?;
            for &mid in message_ids {
                let Some((session, seq)) = message_position(c, mid)? else {
                    continue;
                };
                raise_entry(&mut upd, &mut out, mid, *status, [user, session, seq])?;
            }
        }
        AckCommand::Entries { entries, status } => {
            // The message id must match too: an entry is only ever acked as
            // it was pushed to this user.
            let mut upd = c.prepare_cached(raise_status_sql!(
                status,
                "user_id = ?2 AND inbox_seq = ?3 AND message_id = ?4"
            ))?;
            for &(mid, inbox_seq) in entries {
                raise_entry(
                    &mut upd,
                    &mut out,
                    mid,
                    *status,
                    [user, inbox_seq, mid as i64],
                )?;
            }
        }
        AckCommand::SessionRead {
            session_id,
            up_to_seq,
        } => {
            let up_to = up_to_seq.unwrap_or(i64::MAX);
            let mut sel = c.prepare_cached(
                "SELECT message_id, status FROM inbox WHERE user_id = ? AND session_id = ? AND seq <= ? AND unread = 1",
            )?;
            let rows = sel.query_map(params![user, *session_id as i64, up_to], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (mid, status) = row?;
                out.updated += 1;
                if status == InboxStatus::Pending.code() {
                    out.no_longer_pending.push(mid);
                }
            }
            c.prepare_cached(
                "UPDATE inbox SET status = 2, unread = 0 \
                 WHERE user_id = ? AND session_id = ? AND seq <= ? AND unread = 1",
            )?
            .execute(params![user, *session_id as i64, up_to])?;
        }
    }
    Ok(out)
}

fn recall_in(
    c: &Connection,
    message_id: u64,
    sender_id: u64,
    not_before: i64,
) -> BackendResult<RecallOutcome> {
    let doc = c
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.message_id = ?"
        ))?
        .query_row([message_id as i64], |r| message_from_row(r, 0))
        .optional()?;
    let Some(mut doc) = doc else {
        return Ok(RecallOutcome::NotFound);
    };
    if doc.sender_id != sender_id {
        return Ok(RecallOutcome::NotSender);
    }
    if doc.recalled {
        return Ok(RecallOutcome::Recalled(doc));
    }
    if doc.server_ts < not_before {
        return Ok(RecallOutcome::TooLate);
    }
    // A recalled message keeps its place (seq) but loses its content.
    c.prepare_cached("UPDATE messages SET recalled = 1, content = '' WHERE message_id = ?")?
        .execute([message_id as i64])?;
    doc.recalled = true;
    doc.content.clear();
    Ok(RecallOutcome::Recalled(doc))
}

fn sessions_of(c: &Connection, user_id: u64) -> BackendResult<Vec<SessionSummary>> {
    let uid = user_id as i64;
    let mut stmt = c.prepare_cached(
        "SELECT s.session_id, s.session_type, s.user_lo, s.user_hi, s.group_id, s.updated_at, g.name, u.nickname
         FROM sessions s
         LEFT JOIN groups_ g ON g.group_id = s.group_id
         LEFT JOIN users u ON s.session_type = 1 AND u.user_id = (CASE WHEN s.user_lo = ?1 THEN s.user_hi ELSE s.user_lo END)
         WHERE (s.session_type = 1 AND (s.user_lo = ?1 OR s.user_hi = ?1) AND s.last_message_id IS NOT NULL)
            OR (s.session_type = 2 AND s.group_id IN (SELECT group_id FROM group_members WHERE user_id = ?1))
         ORDER BY s.updated_at DESC, s.session_id DESC",
    )?;
    let rows = stmt.query_map([uid], |r| {
        let session_type = SessionType::from_code(r.get(1)?);
        let lo: Option<i64> = r.get(2)?;
        let hi: Option<i64> = r.get(3)?;
        let peer = match (lo, hi) {
            (Some(lo), Some(hi)) => Some(if lo == uid { hi } else { lo } as u64),
            _ => None,
        };
        let group_name: Option<String> = r.get(6)?;
        let peer_name: Option<String> = r.get(7)?;
        Ok(SessionSummary {
            session_id: r.get::<_, i64>(0)? as u64,
            session_type,
            peer_id: peer,
            group_id: opt_id(r.get(4)?),
            name: group_name.or(peer_name),
            last_message: None,
            unread_count: 0,
            updated_at: r.get(5)?,
        })
    })?;
    let mut sessions = rows.collect::<Result<Vec<_>, _>>()?;
    let mut unread: HashMap<u64, i64> = HashMap::new();
    {
        let mut st = c.prepare_cached(
            "SELECT session_id, count(*) FROM inbox WHERE user_id = ? AND unread = 1 GROUP BY session_id",
        )?;
        let rows = st.query_map([uid], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (sid, n) = row?;
            unread.insert(sid, n);
        }
    }
    for s in &mut sessions {
        s.unread_count = unread.get(&s.session_id).copied().unwrap_or(0);
        s.last_message = inbox_query(
            c,
            "WHERE i.user_id = ?1 AND i.session_id = ?2 ORDER BY i.seq DESC LIMIT 1",
            &[&uid, &(s.session_id as i64)],
        )?
        .pop();
    }
    Ok(sessions)
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
                let mut ins = c.prepare_cached(
                    "INSERT OR IGNORE INTO group_members(group_id, user_id, joined_at) VALUES (?, ?, ?)",
                )?;
                for id in ids {
                    ins.execute(params![group_id as i64, id as i64, now])?;
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

    /// Not through the writer, whose commits a new pair's first send would
    /// wait behind: every pair stored and not committed yet is in the seq
    /// cache (and if the cache started over, the writer commits first).
    async fn find_single_session(&self, a: u64, b: u64) -> BackendResult<Option<u64>> {
        let pair = seqs::pair(a, b);
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
        applied: AppliedPosition,
    ) -> BackendResult<Vec<StoredMessage>> {
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
        self.write_applied(applied, move |c| {
            let mut seqs = valid_seqs(&seqs, &writer);
            let stored = store_batch(c, &mut seqs, records)?;
            seqs.stored_through(applied);
            Ok(stored)
        })
        .await
    }

    fn single_session_allocated(&self, session_id: u64, a: u64, b: u64) {
        self.seqs.lock().allocated(session_id, a, b);
    }

    async fn apply_acks(
        &self,
        acks: Vec<AckRecord>,
        applied: AppliedPosition,
    ) -> BackendResult<Vec<AckOutcome>> {
        self.write_applied(applied, move |c| {
            acks.iter().map(|a| apply_ack(c, a)).collect()
        })
        .await
    }

    async fn applied_position(&self, consumer: &str) -> BackendResult<Option<u64>> {
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

    fn durable_position(&self, consumer: &str) -> u64 {
        self.durable.get(consumer)
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
