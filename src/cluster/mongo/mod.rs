//! `Store` on MongoDB: users, groups, sessions, messages and inboxes as
//! documents in six collections (see `documents` for their fields):
//!
//! - `users` {_id: userId, username, usernameLower, ..., inboxSeq}: unique
//!   `usernameLower`; `inboxSeq` is the user's inbox counter;
//! - `groups` {_id: groupId, sessionId, name, ownerId, createdAt};
//! - `members` {_id: "g:u", groupId, userId, joinedAt}: unique (groupId,
//!   userId), and (userId, groupId) for a user's groups;
//! - `sessions` {_id, type, userLo, userHi | groupId, lastSeq,
//!   lastMessageId, updatedAt}: a pair has one single session (unique
//!   partial index on (userLo, userHi)), which also serves "single sessions
//!   of userLo"; "of userHi" has its own partial index;
//! - `messages` {_id: messageId, sessionId, seq, ..., sendKey}: unique
//!   (sessionId, seq) and unique `sendKey` ("sender:clientMessageId");
//! - `inbox` {_id: "userId:inboxSeq", userId, inboxSeq, messageId,
//!   sessionId, seq, status, unread}: unique (userId, inboxSeq) for sync,
//!   (userId, sessionId, seq) for pull and history, (userId, messageId) for
//!   acks by message id, and (userId, inboxSeq) over unread entries only.
//!
//! Every query is shaped so that one index serves it on MongoDB and on
//! SecantusDB (the MongoDB-wire server the tests use), whose planner is
//! simpler: it uses an index for `{_id: {$in}}`, for equalities on an
//! index's leading fields, optionally followed by one range or `$in` on
//! the next field, and for one field's `$in` or range; anything else
//! (`$or`, `$in` on a compound index's first field plus another field)
//! scans the collection. It also fetches every match before it sorts, and
//! matches a `$in` list against each candidate linearly: lists are sent in
//! chunks of `IN_CHUNK`, and ranges are bounded windows of seqs.

mod acks;
mod documents;
mod reads;
mod settings;
mod storing;
mod tokens;
mod users_groups;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::action::Action;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{
    Error as MError, ErrorKind, WriteFailure, TRANSIENT_TRANSACTION_ERROR,
    UNKNOWN_TRANSACTION_COMMIT_RESULT,
};
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;

use crate::error::{BackendError, BackendResult};
use crate::model::{
    AcceptedSend, AckOutcome, AckRecord, Group, InboxMessage, MessageDoc, SendRecord, SessionInfo,
    SessionSummary, StoredBatch, User,
};
use crate::service::backend::{
    AuthState, Checkpoint, RecallOutcome, RecallStep, RevokedToken, Store,
};

use documents::*;

/// The backend name in errors.
const BACKEND: &str = "mongodb";

/// Longest `$in` list sent in one query. SecantusDB checks every candidate
/// against the list one element at a time: a find of 1,000 users by a
/// 1,000-id `$in` took 1.1 s there, ten of 100 ids 0.2 s.
pub(super) const IN_CHUNK: usize = 100;

/// How long an operation waits for a server it can use before failing:
/// during an outage requests fail fast as `unavailable`.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a transaction that keeps meeting conflicts is tried, and at
/// most how often, before the error is returned (the caller, a topic
/// consumer, retries later). A conflicting writer fails at once while the
/// winner may hold its documents for a few seconds on SecantusDB (a
/// 500-message batch), so the time decides, not the count; during an
/// outage each attempt waits `SERVER_SELECTION_TIMEOUT`.
pub(super) const TXN_ATTEMPTS: u32 = 64;
pub(super) const TXN_RETRY_FOR: Duration = Duration::from_secs(10);

/// Whether a transaction that failed with `e` on attempt `attempt`, first
/// tried at `started`, is tried again.
pub(super) fn try_again(e: &DbError, attempt: u32, started: std::time::Instant) -> bool {
    (e.is_transient() || e.is_duplicate_key())
        && attempt < TXN_ATTEMPTS
        && started.elapsed() < TXN_RETRY_FOR
}

/// Waits before attempt `attempt + 1` of a transaction: 5 ms doubling up
/// to 200 ms, jittered so that two conflicting writers part.
pub(super) async fn backoff(attempt: u32) {
    let base = (5u64 << attempt.min(6)).min(200) as f64;
    let jitter = 0.5 + rand::random::<f64>();
    tokio::time::sleep(Duration::from_secs_f64(base * jitter / 1000.0)).await;
}

/// Sessions whose last seq is kept in memory before the map starts over.
const SEQ_CACHE_MAX: usize = 1 << 18;

impl From<MError> for BackendError {
    fn from(e: MError) -> Self {
        BackendError::adapter(BACKEND, e)
    }
}

/// A failure of a database operation: the driver's, or a write error a
/// command's reply reported (the raw `update` command answers `ok: 1` with
/// `writeErrors`).
#[derive(Debug)]
pub(super) enum DbError {
    Driver(MError),
    Write { code: i32, message: String },
}

/// Server error codes this adapter acts on.
const DUPLICATE_KEY: i32 = 11000;
const WRITE_CONFLICT: i32 = 112;

impl DbError {
    fn codes(&self) -> Vec<i32> {
        match self {
            DbError::Write { code, .. } => vec![*code],
            DbError::Driver(e) => match &*e.kind {
                ErrorKind::Command(c) => vec![c.code],
                ErrorKind::Write(WriteFailure::WriteError(w)) => vec![w.code],
                ErrorKind::InsertMany(im) => {
                    im.write_errors.iter().flatten().map(|w| w.code).collect()
                }
                _ => Vec::new(),
            },
        }
    }

    /// A unique index refused a write.
    pub fn is_duplicate_key(&self) -> bool {
        self.codes().contains(&DUPLICATE_KEY)
    }

    /// The transaction may succeed if run again from the start.
    pub fn is_transient(&self) -> bool {
        let labelled =
            matches!(self, DbError::Driver(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR));
        labelled || self.codes().contains(&WRITE_CONFLICT)
    }

    /// A commit whose outcome is unknown: commit again.
    pub fn is_unknown_commit(&self) -> bool {
        matches!(self, DbError::Driver(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT))
    }
}

impl From<MError> for DbError {
    fn from(e: MError) -> Self {
        DbError::Driver(e)
    }
}

impl From<DbError> for BackendError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Driver(e) => e.into(),
            DbError::Write { code, message } => {
                BackendError::adapter(BACKEND, format!("write error {code}: {message}"))
            }
        }
    }
}

pub(super) fn is_duplicate_key(e: &MError) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(im) => im
            .write_errors
            .iter()
            .flatten()
            .any(|w| w.code == DUPLICATE_KEY),
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// The database a URI names (its path), or `fallback` if it names none.
pub fn database_name(uri: &str, fallback: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let path = rest
        .split_once('/')
        .map(|(_, path)| path.split('?').next().unwrap_or(""))
        .unwrap_or("");
    if path.is_empty() {
        fallback.to_string()
    } else {
        path.to_string()
    }
}

/// The store. Cheap to clone (the driver's client is shared).
#[derive(Clone)]
pub struct MongoStore {
    client: Client,
    db: Database,
    /// The last seq of each session as this node stored it; see
    /// `storing` for when it is trusted.
    seqs: Arc<Mutex<HashMap<u64, i64>>>,
    closed: Arc<AtomicBool>,
}

impl MongoStore {
    /// Connects to `uri` and makes sure `database` has the collections'
    /// indexes. Writes are acknowledged by a majority, journaled.
    pub async fn open(uri: &str, database: &str) -> BackendResult<MongoStore> {
        let mut options = ClientOptions::parse(uri).await?;
        options
            .server_selection_timeout
            .get_or_insert(SERVER_SELECTION_TIMEOUT);
        options
            .connect_timeout
            .get_or_insert(SERVER_SELECTION_TIMEOUT);
        options.app_name.get_or_insert_with(|| "herald".to_string());
        options.write_concern.get_or_insert_with(|| {
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .build()
        });
        let client = Client::with_options(options)?;
        let store = MongoStore {
            db: client.database(database),
            client,
            seqs: Arc::default(),
            closed: Arc::default(),
        };
        store.db.run_command(doc! {"ping": 1}).await?;
        store.create_indexes().await?;
        Ok(store)
    }

    /// Creates the indexes (a no-op for those that exist with the same
    /// definition; an error for one whose name has another definition).
    async fn create_indexes(&self) -> BackendResult<()> {
        fn index(
            keys: Document,
            name: &str,
            unique: bool,
            partial: Option<Document>,
        ) -> IndexModel {
            let options = IndexOptions::builder()
                .name(name.to_string())
                .unique(unique.then_some(true))
                .partial_filter_expression(partial)
                .build();
            IndexModel::builder().keys(keys).options(options).build()
        }
        let single = || Some(doc! {"type": SINGLE});
        let plan: [(&str, Vec<IndexModel>); 5] = [
            (
                USERS,
                vec![index(
                    doc! {"usernameLower": 1},
                    "users_username",
                    true,
                    None,
                )],
            ),
            (
                MEMBERS,
                vec![
                    index(
                        doc! {"groupId": 1, "userId": 1},
                        "members_group_user",
                        true,
                        None,
                    ),
                    index(
                        doc! {"userId": 1, "groupId": 1},
                        "members_user_group",
                        false,
                        None,
                    ),
                ],
            ),
            (
                SESSIONS,
                vec![
                    index(
                        doc! {"userLo": 1, "userHi": 1},
                        "sessions_pair",
                        true,
                        single(),
                    ),
                    index(doc! {"userHi": 1}, "sessions_by_hi", false, single()),
                ],
            ),
            (
                MESSAGES,
                vec![
                    index(doc! {"sendKey": 1}, "messages_send_key", true, None),
                    index(
                        doc! {"sessionId": 1, "seq": 1},
                        "messages_session_seq",
                        true,
                        None,
                    ),
                ],
            ),
            (
                INBOX,
                vec![
                    index(
                        doc! {"userId": 1, "inboxSeq": 1},
                        "inbox_user_seq",
                        true,
                        None,
                    ),
                    index(
                        doc! {"userId": 1, "sessionId": 1, "seq": 1},
                        "inbox_session_seq",
                        false,
                        None,
                    ),
                    index(
                        doc! {"userId": 1, "messageId": 1},
                        "inbox_user_message",
                        false,
                        None,
                    ),
                    index(
                        doc! {"userId": 1, "inboxSeq": 1},
                        "inbox_unread",
                        false,
                        Some(doc! {"unread": true}),
                    ),
                ],
            ),
        ];
        for (collection, indexes) in plan {
            self.db
                .collection::<Document>(collection)
                .create_indexes(indexes)
                .await?;
        }
        // `groups` has no index but its `_id`; create it now rather than
        // inside a first transaction.
        let existing = self.db.list_collection_names().await?;
        if !existing.iter().any(|c| c == GROUPS) {
            match self.db.create_collection(GROUPS).await {
                Ok(()) => {}
                // Another node created it meanwhile (NamespaceExists).
                Err(e) if matches!(&*e.kind, ErrorKind::Command(c) if c.code == 48) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn check_open(&self) -> BackendResult<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(BackendError::Closed)
        } else {
            Ok(())
        }
    }

    fn users(&self) -> Collection<UserDoc> {
        self.db.collection(USERS)
    }
    fn groups(&self) -> Collection<GroupDoc> {
        self.db.collection(GROUPS)
    }
    fn members(&self) -> Collection<MemberDoc> {
        self.db.collection(MEMBERS)
    }
    fn sessions_coll(&self) -> Collection<SessionDoc> {
        self.db.collection(SESSIONS)
    }
    fn messages(&self) -> Collection<MessageRow> {
        self.db.collection(MESSAGES)
    }
    fn inbox(&self) -> Collection<InboxDoc> {
        self.db.collection(INBOX)
    }
}

/// Every document matching `filter`.
pub(super) async fn find_all<T>(
    coll: &Collection<T>,
    filter: Document,
    projection: Option<Document>,
) -> Result<Vec<T>, MError>
where
    T: DeserializeOwned + Send + Sync,
{
    coll.find(filter)
        .optional(projection, |f, p| f.projection(p))
        .await?
        .try_collect()
        .await
}

/// Every document of `base` whose `field` is one of `values`, the `$in`
/// lists sent in chunks at the same time.
pub(super) async fn find_in<T>(
    coll: &Collection<T>,
    base: Document,
    field: &str,
    values: Vec<Bson>,
    projection: Option<Document>,
) -> Result<Vec<T>, MError>
where
    T: DeserializeOwned + Send + Sync,
{
    let queries = values.chunks(IN_CHUNK).map(|chunk| {
        let mut filter = base.clone();
        filter.insert(field, doc! {"$in": chunk.to_vec()});
        find_all(coll, filter, projection.clone())
    });
    let found = futures_util::future::try_join_all(queries).await?;
    Ok(found.into_iter().flatten().collect())
}

/// `find_in` inside a transaction: the chunks one after the other (a
/// session runs one operation at a time).
pub(super) async fn find_in_session<T>(
    coll: &Collection<T>,
    field: &str,
    values: Vec<Bson>,
    projection: Option<Document>,
    s: &mut ClientSession,
) -> Result<Vec<T>, MError>
where
    T: DeserializeOwned + Send + Sync,
{
    let mut out = Vec::new();
    for chunk in values.chunks(IN_CHUNK) {
        let mut cursor = coll
            .find(doc! {field: {"$in": chunk.to_vec()}})
            .optional(projection.clone(), |f, p| f.projection(p))
            .session(&mut *s)
            .await?;
        let found: Vec<T> = cursor.stream(&mut *s).try_collect().await?;
        out.extend(found);
    }
    Ok(out)
}

/// Runs one `update` command with a statement per document (`q`, `u`):
/// one round trip however many documents, each with its own change. (An
/// `update_many` applies one change to all; a pipeline that picks each
/// document's change with `$switch` costs as many comparisons per document
/// as there are branches: 2.6 s for 500 sessions on SecantusDB, against
/// 0.3-0.5 s for these statements.) Returns how many documents matched.
pub(super) async fn update_each(
    db: &Database,
    collection: &str,
    updates: Vec<Document>,
    session: Option<&mut ClientSession>,
) -> Result<i64, DbError> {
    if updates.is_empty() {
        return Ok(0);
    }
    let command = doc! {"update": collection, "updates": updates, "ordered": true};
    let reply = match session {
        Some(s) => db.run_command(command).session(s).await?,
        None => db.run_command(command).await?,
    };
    if let Ok(errors) = reply.get_array("writeErrors") {
        if let Some(Bson::Document(first)) = errors.first() {
            return Err(DbError::Write {
                code: first.get_i32("code").unwrap_or_default(),
                message: first.get_str("errmsg").unwrap_or_default().to_string(),
            });
        }
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        return Err(DbError::Write {
            code: wce.get_i32("code").unwrap_or_default(),
            message: wce.get_str("errmsg").unwrap_or_default().to_string(),
        });
    }
    Ok(match reply.get("n") {
        Some(Bson::Int32(n)) => *n as i64,
        Some(Bson::Int64(n)) => *n,
        _ => 0,
    })
}

/// One statement of `update_each`.
pub(super) fn statement(q: Document, u: Document) -> Document {
    doc! {"q": q, "u": u, "multi": false, "upsert": false}
}

#[async_trait]
impl Store for MongoStore {
    async fn create_user(&self, user: User) -> BackendResult<bool> {
        self.check_open()?;
        self.create_user_doc(user).await
    }

    async fn user_by_username(&self, username: &str) -> BackendResult<Option<User>> {
        self.check_open()?;
        let found = self
            .users()
            .find_one(doc! {"usernameLower": username_key(username)})
            .await?;
        Ok(found.map(UserDoc::into_user))
    }

    async fn user_by_id(&self, user_id: u64) -> BackendResult<Option<User>> {
        self.check_open()?;
        let found = self.users().find_one(doc! {"_id": id(user_id)}).await?;
        Ok(found.map(UserDoc::into_user))
    }

    async fn existing_users(&self, user_ids: &[u64]) -> BackendResult<Vec<u64>> {
        self.check_open()?;
        self.existing(user_ids).await
    }

    async fn create_group(&self, group: Group) -> BackendResult<()> {
        self.check_open()?;
        self.create_group_docs(group).await
    }

    async fn group(&self, group_id: u64) -> BackendResult<Option<Group>> {
        self.check_open()?;
        self.load_group(group_id).await
    }

    async fn add_group_members(&self, group_id: u64, user_ids: &[u64]) -> BackendResult<()> {
        self.check_open()?;
        self.add_members(group_id, user_ids).await
    }

    async fn remove_group_member(&self, group_id: u64, user_id: u64) -> BackendResult<bool> {
        self.check_open()?;
        let deleted = self
            .members()
            .delete_one(doc! {"_id": member_key(group_id, user_id)})
            .await?;
        Ok(deleted.deleted_count > 0)
    }

    async fn single_session(&self, a: u64, b: u64, candidate: u64) -> BackendResult<u64> {
        self.check_open()?;
        self.pair_session(a, b, candidate).await
    }

    async fn session_info(&self, session_id: u64) -> BackendResult<Option<SessionInfo>> {
        self.check_open()?;
        self.load_session_info(session_id).await
    }

    /// `at` is not saved: the topic (RocketMQ) keeps its consumers'
    /// positions, and storing is idempotent.
    async fn store_messages(
        &self,
        records: Vec<SendRecord>,
        _at: Checkpoint,
    ) -> BackendResult<StoredBatch> {
        self.check_open()?;
        self.store_batch(records).await
    }

    async fn apply_acks(
        &self,
        acks: Vec<AckRecord>,
        _at: Checkpoint,
    ) -> BackendResult<Vec<AckOutcome>> {
        self.check_open()?;
        self.apply_ack_batch(acks).await
    }

    async fn recall(
        &self,
        message_id: u64,
        sender_id: u64,
        not_before_ms: i64,
    ) -> BackendResult<RecallOutcome> {
        self.check_open()?;
        self.recall_message(message_id, sender_id, not_before_ms)
            .await
    }

    async fn message(&self, message_id: u64) -> BackendResult<Option<MessageDoc>> {
        self.check_open()?;
        let found = self
            .messages()
            .find_one(doc! {"_id": id(message_id)})
            .await?;
        Ok(found.map(MessageRow::into_doc))
    }

    async fn sent_message(
        &self,
        sender_id: u64,
        client_message_id: &str,
    ) -> BackendResult<Option<AcceptedSend>> {
        self.check_open()?;
        let found = self
            .db
            .collection::<SendRow>(MESSAGES)
            .find_one(doc! {"sendKey": AcceptedSend::key(sender_id, client_message_id)})
            .projection(SendRow::projection())
            .await?;
        Ok(found.map(|row| row.accepted()))
    }

    async fn pull(
        &self,
        user_id: u64,
        session_id: u64,
        after_seq: i64,
        limit: usize,
    ) -> BackendResult<Vec<InboxMessage>> {
        self.check_open()?;
        self.pull_entries(user_id, session_id, after_seq, limit)
            .await
    }

    async fn history(
        &self,
        user_id: u64,
        session_id: u64,
        before_seq: Option<i64>,
        limit: usize,
    ) -> BackendResult<Vec<InboxMessage>> {
        self.check_open()?;
        self.history_entries(user_id, session_id, before_seq, limit)
            .await
    }

    async fn unread(&self, user_id: u64, limit: usize) -> BackendResult<(Vec<InboxMessage>, i64)> {
        self.check_open()?;
        self.unread_entries(user_id, limit).await
    }

    async fn sync(
        &self,
        user_id: u64,
        after_inbox_seq: i64,
        limit: usize,
    ) -> BackendResult<Vec<InboxMessage>> {
        self.check_open()?;
        self.sync_entries(user_id, after_inbox_seq, limit).await
    }

    async fn inbox_messages(
        &self,
        user_id: u64,
        message_ids: &[u64],
    ) -> BackendResult<Vec<InboxMessage>> {
        self.check_open()?;
        self.entries_of_messages(user_id, message_ids).await
    }

    async fn sessions(&self, user_id: u64) -> BackendResult<Vec<SessionSummary>> {
        self.check_open()?;
        self.session_list(user_id).await
    }

    async fn auth_state(&self, user_id: u64) -> BackendResult<Option<AuthState>> {
        self.check_open()?;
        self.load_auth_state(user_id).await
    }

    async fn next_token_number(&self, user_id: u64) -> BackendResult<Option<u64>> {
        self.check_open()?;
        self.take_token_number(user_id).await
    }

    async fn revoke_token(
        &self,
        user_id: u64,
        token: RevokedToken,
        now_ms: i64,
    ) -> BackendResult<()> {
        self.check_open()?;
        self.add_revoked_token(user_id, token, now_ms).await
    }

    async fn revoke_tokens_before(&self, user_id: u64, number: u64) -> BackendResult<()> {
        self.check_open()?;
        self.set_revoked_before(user_id, number).await
    }

    async fn ping(&self) -> BackendResult<()> {
        self.check_open()?;
        self.db.run_command(doc! {"ping": 1}).await?;
        Ok(())
    }

    /// Every write was acknowledged durable, so there is nothing to flush:
    /// later calls fail with `Closed`, and the connections are closed.
    async fn close(&self) -> BackendResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.client.clone().shutdown().immediate(true).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_the_uri_path_or_the_fallback() {
        assert_eq!(database_name("mongodb://h:1/herald", "c"), "herald");
        assert_eq!(
            database_name("mongodb://h:1/herald?replicaSet=rs", "c"),
            "herald"
        );
        assert_eq!(database_name("mongodb://u:p@h1,h2/db2?w=1", "c"), "db2");
        assert_eq!(database_name("mongodb://h:1/", "c"), "c");
        assert_eq!(database_name("mongodb://h:1", "c"), "c");
        assert_eq!(database_name("mongodb://h:1/?replicaSet=rs", "c"), "c");
        assert_eq!(database_name("mongodb+srv://cluster.example/x", "c"), "x");
    }
}
