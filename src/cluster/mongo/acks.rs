//! Status changes: acks raise inbox entries (never back), recalls mark a
//! message recalled.
//!
//! A batch of acks costs a few round trips, however many records it has:
//! one find of every entry named by key (STOMP acks), one per user acking
//! by message id or reading a session, then one `update` command raising
//! every entry that rises. No transaction: each raise is guarded by
//! `status < new` in its filter, so a concurrent ack never lowers one.

use std::collections::HashMap;

use super::storing::distinct;
use super::*;
use crate::model::{AckCommand, InboxStatus};

/// An entry the batch looked at: its stored status and where the batch's
/// acks have raised it so far.
struct Entry {
    doc: InboxDoc,
    status: InboxStatus,
}

impl MongoStore {
    pub(super) async fn apply_ack_batch(
        &self,
        acks: Vec<AckRecord>,
    ) -> BackendResult<Vec<AckOutcome>> {
        let mut keys = Vec::new();
        let mut by_message: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut readers = Vec::new();
        for ack in &acks {
            match &ack.command {
                AckCommand::Entries { entries, .. } => keys.extend(
                    entries
                        .iter()
                        .map(|(_, inbox_seq)| entry_key(ack.user_id, *inbox_seq)),
                ),
                AckCommand::Messages { message_ids, .. } => by_message
                    .entry(ack.user_id)
                    .or_default()
                    .extend(message_ids),
                AckCommand::SessionRead { .. } => readers.push(ack.user_id),
            }
        }
        let inbox = self.inbox();
        let keys = distinct(keys).into_iter().map(Bson::String).collect();
        let named = find_in(&inbox, Document::new(), "_id", keys, None);
        let of_messages = futures_util::future::try_join_all(by_message.iter().map(|(u, mids)| {
            let mids = distinct(mids.iter().copied());
            find_in(
                &inbox,
                doc! {"userId": id(*u)},
                "messageId",
                ids(mids),
                None,
            )
        }));
        // A session read raises the reader's unread entries: found through
        // the index of unread entries, not the session's whole history.
        let unread = futures_util::future::try_join_all(
            distinct(readers)
                .into_iter()
                .map(|u| find_all(&inbox, doc! {"userId": id(u), "unread": true}, None)),
        );
        let (named, of_messages, unread) =
            futures_util::future::try_join3(named, of_messages, unread).await?;

        let mut entries: HashMap<String, Entry> = HashMap::new();
        for doc in named
            .into_iter()
            .chain(of_messages.into_iter().flatten())
            .chain(unread.into_iter().flatten())
        {
            let status = doc.status();
            entries
                .entry(doc.id.clone())
                .or_insert(Entry { doc, status });
        }
        let by_message: HashMap<(u64, u64), String> = entries
            .values()
            .map(|e| ((e.doc.user_id, e.doc.message_id), e.doc.id.clone()))
            .collect();
        let mut by_session: HashMap<(u64, u64), Vec<(i64, String)>> = HashMap::new();
        for e in entries.values() {
            by_session
                .entry((e.doc.user_id, e.doc.session_id))
                .or_default()
                .push((e.doc.seq, e.doc.id.clone()));
        }
        for list in by_session.values_mut() {
            list.sort();
        }

        let mut outcomes = Vec::with_capacity(acks.len());
        for ack in &acks {
            let mut out = AckOutcome::default();
            let user = ack.user_id;
            match &ack.command {
                AckCommand::Entries {
                    entries: named,
                    status,
                } => {
                    for &(mid, inbox_seq) in named {
                        // Only as it was pushed: the message must match.
                        if let Some(e) = entries.get_mut(&entry_key(user, inbox_seq)) {
                            if e.doc.message_id == mid {
                                raise(&mut out, e, *status);
                            }
                        }
                    }
                }
                AckCommand::Messages {
                    message_ids,
                    status,
                } => {
                    for mid in message_ids {
                        let e = by_message
                            .get(&(user, *mid))
                            .and_then(|key| entries.get_mut(key));
                        if let Some(e) = e {
                            raise(&mut out, e, *status);
                        }
                    }
                }
                AckCommand::SessionRead {
                    session_id,
                    up_to_seq,
                } => {
                    let up_to = up_to_seq.unwrap_or(i64::MAX);
                    let list = by_session.get(&(user, *session_id));
                    for (seq, key) in list.into_iter().flatten() {
                        if *seq > up_to {
                            break;
                        }
                        if let Some(e) = entries.get_mut(key) {
                            raise(&mut out, e, InboxStatus::Read);
                        }
                    }
                }
            }
            outcomes.push(out);
        }

        let raises: Vec<Document> = entries
            .values()
            .filter(|e| e.status > e.doc.status())
            .map(|e| {
                let status = e.status.code() as i32;
                statement(
                    doc! {"_id": e.doc.id.as_str(), "status": {"$lt": status}},
                    doc! {"$set": {"status": status, "unread": e.status.is_unread()}},
                )
            })
            .collect();
        update_each(&self.db, INBOX, raises, None).await?;
        Ok(outcomes)
    }

    pub(super) async fn recall_message(
        &self,
        message_id: u64,
        sender_id: u64,
        not_before: i64,
    ) -> BackendResult<RecallOutcome> {
        let row = self
            .messages()
            .find_one(doc! {"_id": id(message_id)})
            .await?;
        let doc = match RecallOutcome::judge(row.map(MessageRow::into_doc), sender_id, not_before) {
            RecallStep::Write(recalled) => recalled,
            RecallStep::Answer(outcome) => return Ok(outcome),
        };
        self.messages()
            .update_one(
                doc! {"_id": id(message_id)},
                doc! {"$set": {"recalled": true, "content": ""}},
            )
            .await?;
        Ok(RecallOutcome::Recalled(doc))
    }
}

/// Raises the entry to `new` if that is a rise, counting it.
fn raise(out: &mut AckOutcome, e: &mut Entry, new: InboxStatus) {
    if out.raise(e.doc.message_id, e.status, new) {
        e.status = new;
    }
}
