//! Reading inboxes: a session's entries after or before a seq, the unread
//! entries, an inbox after an `inboxSeq`, and the session list.
//!
//! Entries are read by bounded windows of numbers rather than by "sort,
//! then limit" over an open range (SecantusDB fetches every match before
//! it sorts). A user's `inboxSeq`s have no gaps, so a sync is one window; a
//! session's seqs have none either, but a user may lack some of them (a
//! member who joined later), so pull and history widen their window, and
//! after `SPARSE_WINDOWS` short ones ask the index for the rest. The
//! messages of the entries are then fetched by id, in one `$in`.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::Arc;

use super::storing::{distinct, int};
use super::*;
use crate::model::SessionType;

/// The widest window of seqs one query of pull or history covers: at most
/// that many entries are fetched at once.
const MAX_WINDOW: i64 = 4096;

/// Windows of pull or history that may come back short before the rest is
/// asked of the index with a sort and a limit: a member who joined a long
/// conversation late has entries for few of its seqs. (SecantusDB then
/// fetches all of the caller's entries in that range to sort them, but no
/// more than the caller has.)
const SPARSE_WINDOWS: usize = 3;

impl MongoStore {
    /// The entries with their messages (entries whose message is missing
    /// are left out, as the embedded store's join does).
    async fn with_messages(&self, entries: Vec<InboxDoc>) -> Result<Vec<InboxMessage>, MError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let message_ids = ids(distinct(entries.iter().map(|e| e.message_id)));
        let rows = find_in(&self.messages(), Document::new(), "_id", message_ids, None).await?;
        let docs: HashMap<u64, Arc<MessageDoc>> = rows
            .into_iter()
            .map(|r| (r.id, Arc::new(r.into_doc())))
            .collect();
        Ok(entries
            .iter()
            .filter_map(|e| docs.get(&e.message_id).map(|d| e.view(d.clone())))
            .collect())
    }

    /// The caller's entries of a session with a seq in `lo..=hi`, and at
    /// most `limit` of them: the lowest (`ascending`) or the highest.
    async fn session_range(
        &self,
        user_id: u64,
        session_id: u64,
        (lo, hi): (i64, i64),
        ascending: bool,
        limit: Option<usize>,
    ) -> Result<Vec<InboxDoc>, MError> {
        let filter = doc! {"userId": id(user_id), "sessionId": id(session_id), "seq": {"$gte": lo, "$lte": hi}};
        let found = match limit {
            None => find_all(&self.inbox(), filter, None).await?,
            Some(limit) => {
                self.inbox()
                    .find(filter)
                    .sort(doc! {"seq": if ascending { 1 } else { -1 }})
                    .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                    .await?
                    .try_collect()
                    .await?
            }
        };
        Ok(found)
    }

    /// The session's last seq (0 if it has no document).
    async fn last_seq(&self, session_id: u64) -> Result<i64, MError> {
        let found = self
            .db
            .collection::<Document>(SESSIONS)
            .find_one(doc! {"_id": id(session_id)})
            .projection(doc! {"lastSeq": 1})
            .await?;
        Ok(found.and_then(|d| int(d.get("lastSeq"))).unwrap_or(0))
    }

    pub(super) async fn pull_entries(
        &self,
        user_id: u64,
        session_id: u64,
        after_seq: i64,
        limit: usize,
    ) -> BackendResult<Vec<InboxMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut width = i64::try_from(limit).unwrap_or(i64::MAX).min(MAX_WINDOW);
        let mut lo = after_seq.saturating_add(1).max(1);
        let mut hi = lo.saturating_add(width - 1);
        // The session's end, read with the first window: a pull at the
        // tail (the usual one) finds fewer entries than it may take.
        let (mut found, end) = futures_util::future::try_join(
            self.session_range(user_id, session_id, (lo, hi), true, None),
            self.last_seq(session_id),
        )
        .await?;
        let mut windows = 1;
        while found.len() < limit && hi < end {
            lo = hi + 1;
            if windows == SPARSE_WINDOWS {
                // Few of the session's messages are the caller's: let the
                // index find the next ones.
                let rest = limit - found.len();
                found.extend(
                    self.session_range(user_id, session_id, (lo, end), true, Some(rest))
                        .await?,
                );
                break;
            }
            width = (width * 2).min(MAX_WINDOW);
            hi = lo.saturating_add(width - 1);
            found.extend(
                self.session_range(user_id, session_id, (lo, hi), true, None)
                    .await?,
            );
            windows += 1;
        }
        found.sort_by_key(|e| e.seq);
        found.truncate(limit);
        Ok(self.with_messages(found).await?)
    }

    pub(super) async fn history_entries(
        &self,
        user_id: u64,
        session_id: u64,
        before_seq: Option<i64>,
        limit: usize,
    ) -> BackendResult<Vec<InboxMessage>> {
        let found = self
            .newest_before(user_id, session_id, before_seq, limit)
            .await?;
        Ok(self.with_messages(found).await?)
    }

    /// The caller's newest `limit` entries of a session with a seq below
    /// `before` (all if `None`), ascending.
    async fn newest_before(
        &self,
        user_id: u64,
        session_id: u64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<InboxDoc>, MError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let end = self.last_seq(session_id).await?;
        let mut hi = before.map_or(end, |b| b.saturating_sub(1).min(end));
        let mut width = i64::try_from(limit).unwrap_or(i64::MAX).min(MAX_WINDOW);
        let mut found = Vec::new();
        let mut windows = 0;
        while found.len() < limit && hi >= 1 {
            if windows == SPARSE_WINDOWS {
                let rest = limit - found.len();
                found.extend(
                    self.session_range(user_id, session_id, (1, hi), false, Some(rest))
                        .await?,
                );
                break;
            }
            let lo = hi.saturating_sub(width - 1).max(1);
            found.extend(
                self.session_range(user_id, session_id, (lo, hi), false, None)
                    .await?,
            );
            hi = lo - 1;
            width = (width * 2).min(MAX_WINDOW);
            windows += 1;
        }
        found.sort_by_key(|e| e.seq);
        let extra = found.len().saturating_sub(limit);
        found.drain(..extra);
        Ok(found)
    }

    pub(super) async fn unread_entries(
        &self,
        user_id: u64,
        limit: usize,
    ) -> BackendResult<(Vec<InboxMessage>, i64)> {
        let inbox = self.inbox();
        let unread = doc! {"userId": id(user_id), "unread": true};
        // Both served by the index of unread entries.
        let count = inbox.count_documents(unread.clone()).into_future();
        let page = async {
            if limit == 0 {
                return Ok(Vec::new());
            }
            inbox
                .find(unread.clone())
                .sort(doc! {"inboxSeq": 1})
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .await?
                .try_collect::<Vec<InboxDoc>>()
                .await
        };
        let (count, page) = futures_util::future::try_join(count, page).await?;
        let mut page = self.with_messages(page).await?;
        page.sort_by_key(|m| m.inbox_seq);
        Ok((page, i64::try_from(count).unwrap_or(i64::MAX)))
    }

    pub(super) async fn sync_entries(
        &self,
        user_id: u64,
        after_inbox_seq: i64,
        limit: usize,
    ) -> BackendResult<Vec<InboxMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // A user's inboxSeqs have no gaps: the next `limit` entries are
        // the next `limit` numbers.
        let lo = after_inbox_seq.saturating_add(1).max(1);
        let hi = lo.saturating_add(i64::try_from(limit).unwrap_or(i64::MAX) - 1);
        let mut found = find_all(
            &self.inbox(),
            doc! {"userId": id(user_id), "inboxSeq": {"$gte": lo, "$lte": hi}},
            None,
        )
        .await?;
        found.sort_by_key(|e| e.inbox_seq);
        Ok(self.with_messages(found).await?)
    }

    /// The caller's entries of these messages, in the order asked.
    pub(super) async fn entries_of_messages(
        &self,
        user_id: u64,
        message_ids: &[u64],
    ) -> BackendResult<Vec<InboxMessage>> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        let found = find_in(
            &self.inbox(),
            doc! {"userId": id(user_id)},
            "messageId",
            ids(distinct(message_ids.iter().copied())),
            None,
        )
        .await?;
        let found: HashMap<u64, InboxMessage> = self
            .with_messages(found)
            .await?
            .into_iter()
            .map(|m| (m.doc.message_id, m))
            .collect();
        Ok(message_ids
            .iter()
            .filter_map(|mid| found.get(mid).cloned())
            .collect())
    }

    /// The user's sessions, most recently updated first: the single ones
    /// with a message, and those of the user's groups.
    pub(super) async fn session_list(&self, user_id: u64) -> BackendResult<Vec<SessionSummary>> {
        let uid = id(user_id);
        let sessions = self.sessions_coll();
        let unread = async {
            let pipeline = [
                doc! {"$match": {"userId": uid.clone(), "unread": true}},
                doc! {"$group": {"_id": "$sessionId", "n": {"$sum": 1}}},
            ];
            let counts: Vec<Document> = self
                .inbox()
                .aggregate(pipeline)
                .await?
                .try_collect()
                .await?;
            Ok::<_, MError>(
                counts
                    .iter()
                    .filter_map(|c| Some((int(c.get("_id"))? as u64, int(c.get("n"))?)))
                    .collect::<HashMap<u64, i64>>(),
            )
        };
        let (as_lo, as_hi, memberships, unread) = futures_util::future::try_join4(
            find_all(
                &sessions,
                doc! {"userLo": uid.clone(), "type": SINGLE},
                None,
            ),
            find_all(
                &sessions,
                doc! {"userHi": uid.clone(), "type": SINGLE},
                None,
            ),
            find_all(&self.members(), doc! {"userId": uid.clone()}, None),
            unread,
        )
        .await?;

        let singles: Vec<SessionDoc> = as_lo
            .into_iter()
            .chain(as_hi)
            .filter(|s| s.last_message_id.is_some())
            .collect();
        let peers = distinct(singles.iter().filter_map(|s| peer(s, user_id)));
        let group_ids = distinct(memberships.iter().map(|m| m.group_id));
        let (groups, peers) = futures_util::future::try_join(
            find_in(&self.groups(), Document::new(), "_id", ids(group_ids), None),
            find_in(
                &self.db.collection::<Document>(USERS),
                Document::new(),
                "_id",
                ids(peers),
                Some(doc! {"nickname": 1}),
            ),
        )
        .await?;
        let group_sessions = find_in(
            &sessions,
            Document::new(),
            "_id",
            ids(groups.iter().map(|g| g.session_id)),
            None,
        )
        .await?;
        let nicknames: HashMap<u64, String> = peers
            .iter()
            .filter_map(|u| {
                let user = int(u.get("_id"))? as u64;
                Some((user, u.get_str("nickname").ok()?.to_string()))
            })
            .collect();
        let group_names: HashMap<u64, String> =
            groups.into_iter().map(|g| (g.id, g.name)).collect();

        let mut all: HashMap<u64, SessionDoc> = HashMap::new();
        for s in singles.into_iter().chain(
            group_sessions
                .into_iter()
                .filter(|s| s.group_id.is_some_and(|g| group_names.contains_key(&g))),
        ) {
            all.entry(s.id).or_insert(s);
        }
        let last_messages = self.last_messages(user_id, all.values()).await?;
        let mut list: Vec<SessionSummary> = all
            .into_values()
            .map(|s| {
                let peer_id = peer(&s, user_id);
                let name = match s.session_type() {
                    SessionType::Group => s.group_id.and_then(|g| group_names.get(&g).cloned()),
                    SessionType::Single => peer_id.and_then(|p| nicknames.get(&p).cloned()),
                };
                SessionSummary {
                    session_id: s.id,
                    session_type: s.session_type(),
                    peer_id,
                    group_id: s.group_id,
                    name,
                    last_message: last_messages.get(&s.id).cloned(),
                    unread_count: unread.get(&s.id).copied().unwrap_or(0),
                    updated_at: s.updated_at,
                }
            })
            .collect();
        list.sort_by_key(|s| std::cmp::Reverse((s.updated_at, s.session_id)));
        Ok(list)
    }

    /// The caller's newest entry of each session: the one of the session's
    /// last message (two queries for all sessions), or, if the caller has
    /// none for it (a member who joined later), the newest one before.
    async fn last_messages<'a>(
        &self,
        user_id: u64,
        sessions: impl Iterator<Item = &'a SessionDoc>,
    ) -> Result<HashMap<u64, InboxMessage>, MError> {
        let sessions: Vec<&SessionDoc> = sessions.filter(|s| s.last_seq > 0).collect();
        let last_ids = ids(sessions.iter().filter_map(|s| s.last_message_id));
        let entries = find_in(
            &self.inbox(),
            doc! {"userId": id(user_id)},
            "messageId",
            last_ids,
            None,
        )
        .await?;
        let newest: HashMap<u64, Option<u64>> =
            sessions.iter().map(|s| (s.id, s.last_message_id)).collect();
        let mut by_session: HashMap<u64, InboxDoc> = HashMap::new();
        for e in entries {
            if newest.get(&e.session_id) == Some(&Some(e.message_id)) {
                by_session.insert(e.session_id, e);
            }
        }
        for s in &sessions {
            if by_session.contains_key(&s.id) {
                continue;
            }
            if let Some(e) = self
                .newest_before(user_id, s.id, Some(s.last_seq), 1)
                .await?
                .pop()
            {
                by_session.insert(s.id, e);
            }
        }
        Ok(self
            .with_messages(by_session.into_values().collect())
            .await?
            .into_iter()
            .map(|m| (m.doc.session_id, m))
            .collect())
    }
}

/// The other user of a single session.
fn peer(s: &SessionDoc, user_id: u64) -> Option<u64> {
    match (s.user_lo, s.user_hi) {
        (Some(lo), Some(hi)) => Some(if lo == user_id { hi } else { lo }),
        _ => None,
    }
}
