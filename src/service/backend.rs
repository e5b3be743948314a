//! The backend traits. The embedded adapters live in `crate::embedded`; the
//! cluster adapters (MongoDB, RocketMQ, Redis) implement the same traits.

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::error::BackendResult;
use crate::model::{
    AcceptedSend, AckOutcome, AckRecord, Group, InboxMessage, MessageDoc, SendRecord, SessionInfo,
    SessionSummary, StoredMessage, User,
};

/// Documents: users, groups, sessions, `MessageDoc`s and `UserInbox` entries.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates the user; `false` if the username is taken.
    async fn create_user(&self, user: User) -> BackendResult<bool>;
    async fn user_by_username(&self, username: &str) -> BackendResult<Option<User>>;
    async fn user_by_id(&self, user_id: u64) -> BackendResult<Option<User>>;
    /// The subset of `ids` that are registered users.
    async fn existing_users(&self, ids: &[u64]) -> BackendResult<Vec<u64>>;

    async fn create_group(&self, group: Group) -> BackendResult<()>;
    async fn group(&self, group_id: u64) -> BackendResult<Option<Group>>;
    async fn add_group_members(&self, group_id: u64, user_ids: &[u64]) -> BackendResult<()>;
    /// `false` if the user was not a member.
    async fn remove_group_member(&self, group_id: u64, user_id: u64) -> BackendResult<bool>;

    /// The single session of two users, if it was stored. A new one is
    /// created by `store_messages`, with the first message stored in it.
    async fn find_single_session(&self, a: u64, b: u64) -> BackendResult<Option<u64>>;
    /// The directory gave the new pair `a`, `b` the id `session_id`
    /// (nothing is stored under it yet): a store may number its first
    /// messages without looking the pair up.
    fn single_session_allocated(&self, _session_id: u64, _a: u64, _b: u64) {}
    async fn session_info(&self, session_id: u64) -> BackendResult<Option<SessionInfo>>;

    /// Writes one `MessageDoc` and one inbox entry per recipient for each
    /// record, assigning `seq` and `inboxSeq`, and saves `applied` with
    /// them. Idempotent on `message_id`: a record stored before is skipped
    /// (records after the last batch the store took, by `applied.first`,
    /// were not: a store may number them without looking).
    async fn store_messages(
        &self,
        records: Vec<SendRecord>,
        applied: AppliedPosition,
    ) -> BackendResult<Vec<StoredMessage>>;
    /// Applies inbox status changes (monotonic), one outcome per record,
    /// and saves `applied` with them.
    async fn apply_acks(
        &self,
        acks: Vec<AckRecord>,
        applied: AppliedPosition,
    ) -> BackendResult<Vec<AckOutcome>>;
    /// The position last saved for `consumer`, if any: where it resumes.
    async fn applied_position(&self, consumer: &str) -> BackendResult<Option<u64>>;
    /// The highest position saved for `consumer` that survives a power
    /// loss; its topic may forget the records up to it.
    fn durable_position(&self, consumer: &str) -> u64;
    /// Marks the message recalled if `sender_id` sent it at or after
    /// `not_before_ms`.
    async fn recall(
        &self,
        message_id: u64,
        sender_id: u64,
        not_before_ms: i64,
    ) -> BackendResult<RecallOutcome>;

    async fn message(&self, message_id: u64) -> BackendResult<Option<MessageDoc>>;
    /// The stored message `sender_id` sent as `client_message_id`, if any,
    /// from what is committed. A point lookup answered on the calling
    /// thread: the idempotency check of every send asks it.
    fn sent_message_now(
        &self,
        sender_id: u64,
        client_message_id: &str,
    ) -> BackendResult<Option<AcceptedSend>>;
    /// The caller's entries of `session_id` with `seq > after_seq`, ascending.
    async fn pull(
        &self,
        user_id: u64,
        session_id: u64,
        after_seq: i64,
        limit: usize,
    ) -> BackendResult<Vec<InboxMessage>>;
    /// The caller's entries of `session_id` with `seq < before_seq`, the
    /// newest `limit` of them, ascending.
    async fn history(
        &self,
        user_id: u64,
        session_id: u64,
        before_seq: Option<i64>,
        limit: usize,
    ) -> BackendResult<Vec<InboxMessage>>;
    /// The oldest `limit` unread entries and the count of all unread ones.
    async fn unread(&self, user_id: u64, limit: usize) -> BackendResult<(Vec<InboxMessage>, i64)>;
    /// Entries with `inbox_seq > after`, ascending.
    async fn sync(
        &self,
        user_id: u64,
        after_inbox_seq: i64,
        limit: usize,
    ) -> BackendResult<Vec<InboxMessage>>;
    /// The user's inbox entries for these messages (missing ones omitted).
    async fn inbox_messages(
        &self,
        user_id: u64,
        message_ids: &[u64],
    ) -> BackendResult<Vec<InboxMessage>>;
    async fn sessions(&self, user_id: u64) -> BackendResult<Vec<SessionSummary>>;

    /// Answers when the backend can serve.
    async fn ping(&self) -> BackendResult<()>;
    /// Makes everything written durable and releases the backend; called
    /// once the node is stopping and its consumers drained. Later calls
    /// fail with `Closed` (closing again is a no-op).
    async fn close(&self) -> BackendResult<()>;
}

/// How far a topic consumer has applied its topic, saved atomically with
/// what it applied, so the documents and the consumer's position never
/// disagree (whatever the store's own durability).
#[derive(Debug, Clone, Copy)]
pub struct AppliedPosition {
    pub consumer: &'static str,
    /// The offset of the batch's first record.
    pub first: u64,
    /// The offset of its last: the position saved.
    pub offset: u64,
}

#[derive(Debug, Clone)]
pub enum RecallOutcome {
    Recalled(MessageDoc),
    NotFound,
    NotSender,
    TooLate,
}

/// The outcome of a deduplicated publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOnce {
    /// Appended at this offset.
    Published(u64),
    /// The key was published before; here is the receipt stored with it.
    Duplicate(Vec<u8>),
}

/// A publish that is queued and resolves once durable.
pub type Durable<T> = BoxFuture<'static, BackendResult<T>>;

/// Where a topic looks up an idempotency key it no longer holds itself:
/// its record was applied for good, so what it was applied to knows the
/// key. Answered on the calling thread (a point lookup on an index).
pub trait KeyHistory: Send + Sync + 'static {
    /// The receipt the key's first publish stored, if it was published.
    fn receipt(&self, key: &str) -> BackendResult<Option<Vec<u8>>>;
}

/// A durable, ordered append log with committed consumer offsets.
#[async_trait]
pub trait DurableTopic: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Queues `payload`; the outer await is backpressure (and fixes the order
    /// against later publishes of the same caller), the returned future
    /// resolves once the record would survive a crash.
    async fn publish(&self, payload: Vec<u8>) -> BackendResult<Durable<u64>>;
    /// Like `publish`, but at most once per `key`: a repeat gets the
    /// `receipt` stored by the first publish instead.
    async fn publish_once(
        &self,
        key: String,
        payload: Vec<u8>,
        receipt: Vec<u8>,
    ) -> BackendResult<Durable<PublishOnce>>;
    /// A consumer of `group`, resuming after `resume_after` or, if `None`,
    /// after its committed offset.
    async fn consumer(
        &self,
        group: &str,
        resume_after: Option<u64>,
    ) -> BackendResult<Box<dyn TopicConsumer>>;
    /// Makes everything published durable and releases the topic, as
    /// `Store::close` does.
    async fn close(&self) -> BackendResult<()>;
}

/// One record of a topic. The payload is shared, not copied, between the
/// publisher, an in-memory tail and every consumer.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub offset: u64,
    pub payload: bytes::Bytes,
}

#[async_trait]
pub trait TopicConsumer: Send {
    /// The next records (at most `max`), waiting until there is one.
    async fn poll(&mut self, max: usize) -> BackendResult<Vec<TopicRecord>>;
    /// Marks everything up to `offset` processed for good: records up to it
    /// may be pruned. Processing is idempotent, so a commit lost in a crash
    /// only causes harmless reprocessing.
    async fn commit(&mut self, offset: u64) -> BackendResult<()>;
    /// Records published but not yet polled.
    fn lag(&self) -> u64;
    /// The offset of the last record polled (or resumed after).
    fn position(&self) -> u64;
}
