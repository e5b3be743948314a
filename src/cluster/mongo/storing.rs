//! Storing a batch of sent messages in one transaction: the records
//! stored before are set aside, the others get their `seq` (per session)
//! and one inbox entry per recipient with its `inboxSeq` (per user).
//!
//! How the numbers stay gap-free and unique, with any number of nodes:
//!
//! - `seq`: a session's messages are numbered from its document's
//!   `lastSeq`, and one transaction inserts them and moves `lastSeq` to the
//!   last one. Nothing is visible before the commit, so a failure leaves no
//!   gap. `lastSeq` is read before the transaction (or taken from this
//!   node's cache of what it stored, set only after a commit, so never
//!   ahead of the database): if another node stored into the session
//!   since, the value is behind, the first number given from it exists
//!   already, the unique `(sessionId, seq)` index refuses it, and the batch
//!   is numbered again from a fresh read (its sessions leave the cache on
//!   any failure). Two writers numbering one session at once both write its
//!   document: one meets a write conflict and tries again.
//! - `inboxSeq`: each user's document holds the last number given out. The
//!   transaction takes a block per user (`$inc` by the number of entries
//!   the user gets in the batch, then a read of the new values) and inserts
//!   the entries with those numbers; concurrent increments of one user
//!   conflict and one transaction tries again, and a rollback (or a crash)
//!   undoes the increment with the entries.
//!
//! Round trips per batch, whatever its size (each `$in` list is sent in
//! chunks of `IN_CHUNK`). Before the transaction, at the same time: two
//! finds of stored sends (by message id, by send key), one of the sessions
//! not cached, one of the members of the batch's groups. In it: one
//! `update` command moving every user's counter, one find of the counters,
//! one insert of the messages, one of the entries, one `update` command
//! for every session's last message, and the commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mongodb::options::ReadConcern;

use super::users_groups::{commit, majority};
use super::*;
use crate::model::{InboxRef, KnownSend, SessionType, StoredMessage};

/// What becomes of a record.
enum Fate {
    /// Stored before, as this send.
    Known(AcceptedSend),
    /// The same send as the stored record at this index of the batch.
    SameAs(usize),
    Store,
}

/// A batch numbered and ready to insert.
struct Numbered {
    batch: StoredBatch,
    messages: Vec<MessageRow>,
    entries: Vec<InboxDoc>,
    /// Per session: the last message's (seq, message id, server ts).
    last: HashMap<u64, (i64, u64, i64)>,
}

/// What a batch needs read before its transaction: which records to
/// store, where each session's seqs go on from, and the groups' members.
/// Read outside the transaction, so that the transaction's first write
/// is its first operation (see `store_batch`); a read that is stale by the
/// time of the write fails it on a unique index, and it is read again.
struct Prepared {
    fates: Vec<Fate>,
    /// Sessions a record names under another id than its pair's.
    remap: HashMap<u64, u64>,
    /// Per session: the last seq before this batch.
    last_seq: HashMap<u64, i64>,
    members: HashMap<u64, Vec<u64>>,
    /// Every session the batch numbers (to forget if it fails).
    touched: Vec<u64>,
}

impl MongoStore {
    /// Stores a batch, trying again while it conflicts with another
    /// node's. A conflicting transactional write fails at once while the
    /// winner holds the document until it commits (seconds, for a big
    /// batch on SecantusDB), and a writer that starts its next batch right
    /// after its commit would win every time against one that waits long:
    /// so the transaction writes the users' counters (the documents
    /// batches of different sessions share) as its very first operation,
    /// with everything it reads prepared before, and a loser tries again
    /// after a few milliseconds, to be first once the winner commits.
    pub(super) async fn store_batch(&self, records: Vec<SendRecord>) -> BackendResult<StoredBatch> {
        if records.is_empty() {
            return Ok(StoredBatch::default());
        }
        let mut s = self.client.start_session().await?;
        let started = std::time::Instant::now();
        let mut attempt = 0;
        let mut prepared: Option<Prepared> = None;
        loop {
            attempt += 1;
            let ready = match prepared.take() {
                Some(p) => p,
                None => self.prepare(&records).await?,
            };
            let failed = match self.store_attempt(&mut s, &records, &ready).await {
                Ok(numbered) => {
                    self.remember_seqs(&numbered.last);
                    return Ok(numbered.batch);
                }
                Err(e) => e,
            };
            // The numbers may be stale: read them again.
            self.forget_seqs(&ready.touched);
            if !try_again(&failed, attempt, started) {
                return Err(failed.into());
            }
            metrics::counter!("herald_mongo_store_retries_total").increment(1);
            if failed.is_duplicate_key() {
                // Another node's seq, or a record another node stored
                // meanwhile (found as known when prepared again).
                tracing::debug!(attempt, error = ?failed, "storing a batch again");
                backoff(0).await;
            } else {
                // A write conflict: what was read still holds (if the
                // session moved on, the next attempt meets its seq).
                prepared = Some(ready);
                let ms = 1.0 + 19.0 * rand::random::<f64>();
                tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
            }
        }
    }

    async fn prepare(&self, records: &[SendRecord]) -> BackendResult<Prepared> {
        let fates = self.sort_out(records).await?;
        let to_store: Vec<&SendRecord> = records
            .iter()
            .zip(&fates)
            .filter(|(_, f)| matches!(f, Fate::Store))
            .map(|(r, _)| r)
            .collect();
        let named = distinct(to_store.iter().map(|r| r.session_id));
        let mut last_seq = self.cached_seqs(&named);
        let mut touched = named;
        let (remap, members) = futures_util::future::try_join(
            self.session_seqs(&to_store, &mut last_seq, &mut touched),
            async { Ok(self.members_of(&to_store).await?) },
        )
        .await?;
        Ok(Prepared {
            fates,
            remap,
            last_seq,
            members,
            touched,
        })
    }

    /// One transaction: number and write the batch, commit.
    async fn store_attempt(
        &self,
        s: &mut ClientSession,
        records: &[SendRecord],
        prepared: &Prepared,
    ) -> Result<Numbered, DbError> {
        s.start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(majority())
            .await?;
        let written = self.write_batch(s, records, prepared).await;
        match written {
            Ok(numbered) => {
                commit(s).await?;
                Ok(numbered)
            }
            Err(e) => {
                // The server may have aborted it already.
                let _ = s.abort_transaction().await;
                Err(e)
            }
        }
    }

    async fn write_batch(
        &self,
        s: &mut ClientSession,
        records: &[SendRecord],
        prepared: &Prepared,
    ) -> Result<Numbered, DbError> {
        let Prepared {
            fates,
            remap,
            last_seq,
            members,
            ..
        } = prepared;
        let mut last_seq = last_seq.clone();
        // Seqs, and who gets an entry, in record order.
        let mut plans: Vec<(MessageDoc, Vec<u64>)> = Vec::new();
        let mut per_user: HashMap<u64, i64> = HashMap::new();
        for (r, fate) in records.iter().zip(fates) {
            if !matches!(fate, Fate::Store) {
                continue;
            }
            let session_id = remap.get(&r.session_id).copied().unwrap_or(r.session_id);
            let last = last_seq.entry(session_id).or_insert(0);
            *last += 1;
            let mut record = r.clone();
            record.session_id = session_id;
            let recipients = recipients(&record, members);
            for u in &recipients {
                *per_user.entry(*u).or_default() += 1;
            }
            plans.push((MessageDoc::from_record(record, *last), recipients));
        }
        // The transaction's first operation.
        let mut next_inbox = self.take_inbox_seqs(s, &per_user).await?;

        let mut numbered = Numbered {
            batch: StoredBatch {
                stored: Vec::with_capacity(plans.len()),
                known: Vec::new(),
            },
            messages: Vec::with_capacity(plans.len()),
            entries: Vec::new(),
            last: HashMap::new(),
        };
        for (doc, recipients) in plans {
            let refs: Vec<InboxRef> = recipients
                .into_iter()
                .filter_map(|u| {
                    let seq = next_inbox.get_mut(&u)?;
                    *seq += 1;
                    Some(InboxRef::new_entry(u, doc.sender_id, *seq))
                })
                .collect();
            numbered
                .entries
                .extend(refs.iter().map(|e| InboxDoc::new(&doc, e)));
            numbered.messages.push(MessageRow::new(&doc));
            let last = (doc.seq, doc.message_id, doc.server_ts);
            numbered
                .last
                .entry(doc.session_id)
                .and_modify(|l| *l = (*l).max(last))
                .or_insert(last);
            numbered.batch.stored.push(StoredMessage {
                accepted_at_ms: doc.server_ts,
                doc: Arc::new(doc),
                recipients: refs,
            });
        }

        if !numbered.messages.is_empty() {
            self.messages()
                .insert_many(&numbered.messages)
                .session(&mut *s)
                .await?;
        }
        if !numbered.entries.is_empty() {
            self.inbox()
                .insert_many(&numbered.entries)
                .session(&mut *s)
                .await?;
        }
        let session_updates = numbered
            .last
            .iter()
            .map(|(sid, (seq, mid, ts))| {
                statement(
                    doc! {"_id": id(*sid)},
                    doc! {"$set": {"lastSeq": seq, "lastMessageId": id(*mid), "updatedAt": ts}},
                )
            })
            .collect();
        update_each(&self.db, SESSIONS, session_updates, Some(&mut *s)).await?;

        // The records not stored, in record order.
        let stored_by_id: HashMap<u64, &StoredMessage> = numbered
            .batch
            .stored
            .iter()
            .map(|m| (m.doc.message_id, m))
            .collect();
        for (r, fate) in records.iter().zip(fates) {
            let accepted = match fate {
                Fate::Store => continue,
                Fate::Known(accepted) => accepted.clone(),
                Fate::SameAs(first) => {
                    let Some(m) = stored_by_id.get(&records[*first].message_id) else {
                        continue;
                    };
                    AcceptedSend {
                        client_message_id: m.doc.client_message_id.clone(),
                        message_id: m.doc.message_id,
                        session_id: m.doc.session_id,
                        server_ts: m.doc.server_ts,
                    }
                }
            };
            numbered.batch.known.push(KnownSend {
                message_id: r.message_id,
                accepted,
            });
        }
        Ok(numbered)
    }

    /// Which records were stored before (by message id, or as another
    /// message with their send key) or repeat an earlier record of the
    /// batch.
    async fn sort_out(&self, records: &[SendRecord]) -> Result<Vec<Fate>, MError> {
        let sends = self.db.collection::<SendRow>(MESSAGES);
        let keys: Vec<String> = records
            .iter()
            .map(|r| AcceptedSend::key(r.sender_id, &r.client_message_id))
            .collect();
        let message_ids = ids(distinct(records.iter().map(|r| r.message_id)));
        let key_values = distinct(keys.iter().cloned())
            .into_iter()
            .map(Bson::String)
            .collect();
        let (by_id, by_key) = futures_util::future::try_join(
            find_in(
                &sends,
                Document::new(),
                "_id",
                message_ids,
                Some(SendRow::projection()),
            ),
            find_in(
                &sends,
                Document::new(),
                "sendKey",
                key_values,
                Some(SendRow::projection()),
            ),
        )
        .await?;
        let by_id: HashMap<u64, AcceptedSend> =
            by_id.iter().map(|row| (row.id, row.accepted())).collect();
        let by_key: HashMap<&str, AcceptedSend> = by_key
            .iter()
            .map(|row| (row.send_key.as_str(), row.accepted()))
            .collect();
        let mut first_id: HashMap<u64, usize> = HashMap::new();
        let mut first_key: HashMap<&str, usize> = HashMap::new();
        let mut fates = Vec::with_capacity(records.len());
        for (i, (r, key)) in records.iter().zip(&keys).enumerate() {
            let fate = if let Some(a) = by_id.get(&r.message_id) {
                Fate::Known(a.clone())
            } else if let Some(a) = by_key.get(key.as_str()) {
                Fate::Known(a.clone())
            } else if let Some(&j) = first_id
                .get(&r.message_id)
                .or_else(|| first_key.get(key.as_str()))
            {
                Fate::SameAs(j)
            } else {
                first_id.insert(r.message_id, i);
                first_key.insert(key, i);
                Fate::Store
            };
            fates.push(fate);
        }
        Ok(fates)
    }

    /// Fills `last_seq` for every session of `records` not in it, and
    /// returns the sessions a record names under another id than its
    /// pair's.
    async fn session_seqs(
        &self,
        records: &[&SendRecord],
        last_seq: &mut HashMap<u64, i64>,
        touched: &mut Vec<u64>,
    ) -> BackendResult<HashMap<u64, u64>> {
        let missing = distinct(
            records
                .iter()
                .map(|r| r.session_id)
                .filter(|sid| !last_seq.contains_key(sid)),
        );
        let mut remap = HashMap::new();
        if missing.is_empty() {
            return Ok(remap);
        }
        let found = find_in(
            &self.sessions_coll(),
            Document::new(),
            "_id",
            ids(missing.iter().copied()),
            Some(doc! {"lastSeq": 1, "type": 1}),
        )
        .await?;
        for session in found {
            last_seq.insert(session.id, session.last_seq);
        }
        // Sessions with no document: not made by `single_session` or
        // `create_group` (a record from before them). Rare; one at a time,
        // made as those make them.
        for sid in missing {
            if last_seq.contains_key(&sid) {
                continue;
            }
            let Some(r) = records.iter().find(|r| r.session_id == sid) else {
                continue;
            };
            let session = match (r.session_type, r.to_user_id) {
                (SessionType::Single, to) => {
                    let to = to.unwrap_or(r.sender_id);
                    let pair = (r.sender_id.min(to), r.sender_id.max(to));
                    let mine = SessionDoc::single(sid, pair, r.server_ts);
                    let filter = doc! {"userLo": id(pair.0), "userHi": id(pair.1), "type": SINGLE};
                    self.create_session(mine, filter).await?
                }
                (SessionType::Group, _) => {
                    let mut mine = SessionDoc::group(sid, 0, r.server_ts);
                    mine.group_id = r.group_id;
                    self.create_session(mine, doc! {"_id": id(sid)}).await?
                }
            };
            if session.id != sid {
                // The pair has its session under another id: its messages
                // join that one, so the pair keeps one conversation (as
                // the embedded store does).
                tracing::warn!(
                    given = sid,
                    stored = session.id,
                    "a second session id for one pair; storing under the first"
                );
                touched.push(session.id);
                remap.insert(sid, session.id);
            }
            last_seq.entry(session.id).or_insert(session.last_seq);
        }
        Ok(remap)
    }

    /// The session `filter` finds, or `mine`, inserted if there is none.
    async fn create_session(
        &self,
        mine: SessionDoc,
        filter: Document,
    ) -> BackendResult<SessionDoc> {
        let sessions = self.sessions_coll();
        if let Some(found) = sessions.find_one(filter.clone()).await? {
            return Ok(found);
        }
        match sessions.insert_one(&mine).await {
            Ok(_) => Ok(mine),
            Err(e) if is_duplicate_key(&e) => sessions.find_one(filter).await?.ok_or_else(|| {
                BackendError::Other(format!(
                    "session id {} is taken by another session",
                    mine.id
                ))
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The members of the groups of `records`, each group's in join order.
    async fn members_of(&self, records: &[&SendRecord]) -> Result<HashMap<u64, Vec<u64>>, MError> {
        let groups = distinct(records.iter().filter_map(|r| match r.session_type {
            SessionType::Group => r.group_id,
            SessionType::Single => None,
        }));
        if groups.is_empty() {
            return Ok(HashMap::new());
        }
        let found = find_in(
            &self.members(),
            Document::new(),
            "groupId",
            ids(groups),
            None,
        )
        .await?;
        let mut by_group: HashMap<u64, Vec<MemberDoc>> = HashMap::new();
        for m in found {
            by_group.entry(m.group_id).or_default().push(m);
        }
        Ok(by_group
            .into_iter()
            .map(|(g, members)| (g, ordered_members(members)))
            .collect())
    }

    /// Takes a block of `inboxSeq`s per user: returns the number before
    /// each user's block (the block is the next `per_user[u]` numbers).
    /// Users without a document are left out (their entries with them).
    async fn take_inbox_seqs(
        &self,
        s: &mut ClientSession,
        per_user: &HashMap<u64, i64>,
    ) -> Result<HashMap<u64, i64>, DbError> {
        if per_user.is_empty() {
            return Ok(HashMap::new());
        }
        let increments = per_user
            .iter()
            .map(|(u, k)| statement(doc! {"_id": id(*u)}, doc! {"$inc": {"inboxSeq": *k}}))
            .collect();
        update_each(&self.db, USERS, increments, Some(&mut *s)).await?;
        let counters: Vec<Document> = find_in_session(
            &self.db.collection::<Document>(USERS),
            "_id",
            ids(per_user.keys().copied()),
            Some(doc! {"inboxSeq": 1}),
            s,
        )
        .await?;
        let mut before = HashMap::with_capacity(per_user.len());
        for c in counters {
            let (Some(user), Some(end)) = (int(c.get("_id")), int(c.get("inboxSeq"))) else {
                continue;
            };
            let user = user as u64;
            if let Some(k) = per_user.get(&user) {
                before.insert(user, end - k);
            }
        }
        if before.len() < per_user.len() {
            let unknown: Vec<u64> = per_user
                .keys()
                .filter(|u| !before.contains_key(u))
                .copied()
                .collect();
            tracing::warn!(
                ?unknown,
                "messages to users that do not exist: no inbox entry for them"
            );
        }
        Ok(before)
    }

    fn cached_seqs(&self, sessions: &[u64]) -> HashMap<u64, i64> {
        let cache = self.seqs.lock();
        sessions
            .iter()
            .filter_map(|sid| cache.get(sid).map(|v| (*sid, *v)))
            .collect()
    }

    /// After a commit: the sessions' last seqs are known.
    fn remember_seqs(&self, last: &HashMap<u64, (i64, u64, i64)>) {
        let mut cache = self.seqs.lock();
        if cache.len() + last.len() > SEQ_CACHE_MAX {
            cache.clear();
        }
        for (sid, (seq, _, _)) in last {
            let v = cache.entry(*sid).or_insert(*seq);
            *v = (*v).max(*seq);
        }
    }

    fn forget_seqs(&self, sessions: &[u64]) {
        let mut cache = self.seqs.lock();
        for sid in sessions {
            cache.remove(sid);
        }
    }
}

/// Who gets an entry: a group's members and the sender (if no longer a
/// member); a single chat's two users (the sender first).
fn recipients(r: &SendRecord, members: &HashMap<u64, Vec<u64>>) -> Vec<u64> {
    match (r.session_type, r.to_user_id, r.group_id) {
        (SessionType::Group, _, Some(g)) => {
            let mut all = members.get(&g).cloned().unwrap_or_default();
            if !all.contains(&r.sender_id) {
                all.push(r.sender_id);
            }
            all
        }
        (_, Some(to), _) => vec![r.sender_id, to],
        _ => vec![r.sender_id],
    }
}

/// The values in first-seen order, each once.
pub(super) fn distinct<T: std::hash::Hash + Eq + Clone>(
    values: impl IntoIterator<Item = T>,
) -> Vec<T> {
    let mut seen = HashSet::new();
    values
        .into_iter()
        .filter(|v| seen.insert(v.clone()))
        .collect()
}

/// A BSON integer of either width.
pub(super) fn int(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(*n as i64),
        _ => None,
    }
}
