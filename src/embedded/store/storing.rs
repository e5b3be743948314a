//! Storing a batch of sent messages: numbering (seq per session, inboxSeq
//! per user), the single-chat session of a new pair, the message and one
//! inbox entry per recipient.

use super::rows::group_members;
use super::*;

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
pub(super) fn insert_planned(c: &Connection, planned: &[Planned]) -> BackendResult<()> {
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

/// What `store_batch` did: the batch, and the pairs whose session it
/// created (or found) for their first message.
pub(super) struct Written {
    pub batch: StoredBatch,
    pub resolved_pairs: Vec<(u64, u64)>,
}

pub(super) fn store_batch(
    c: &Connection,
    seqs: &mut SeqCache,
    records: Vec<SendRecord>,
) -> BackendResult<Written> {
    let mut counters = Counters {
        seqs,
        session_last: SessionLast::default(),
        members: HashMap::new(),
    };
    let mut out = Written {
        batch: StoredBatch {
            stored: Vec::with_capacity(records.len()),
            known: Vec::new(),
        },
        resolved_pairs: Vec::new(),
    };
    for r in records {
        let exists = c
            .prepare_cached("SELECT 1 FROM messages WHERE message_id = ?")?
            .query_row([r.message_id as i64], |_| Ok(()))
            .optional()?
            .is_some();
        if exists {
            // Reprocessed after a crash: stored already, nothing to push
            // (devices reconnect and sync).
            out.batch.known.push(KnownSend {
                message_id: r.message_id,
                accepted: AcceptedSend {
                    client_message_id: r.client_message_id,
                    message_id: r.message_id,
                    session_id: r.session_id,
                    server_ts: r.server_ts,
                },
            });
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
            out.resolved_pairs.push(pair);
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
            refs.push(InboxRef::new_entry(user_id, doc.sender_id, inbox_seq));
        }
        insert_inbox_entries(c, &doc, &refs)?;
        out.batch.stored.push(StoredMessage {
            doc: Arc::new(doc),
            recipients: refs,
            accepted_at_ms,
        });
    }
    counters.session_last.write_back(c)?;
    Ok(out)
}

pub(super) fn find_single_session(c: &Connection, lo: i64, hi: i64) -> BackendResult<Option<u64>> {
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
