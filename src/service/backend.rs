//! The backend traits, and the bundle of them a node runs on. The
//! embedded adapters live in `crate::embedded`, the cluster ones (MongoDB,
//! RocketMQ, Redis) in `crate::cluster`; `crate::app` opens one bundle
//! from the configuration, and nothing above this module knows which.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use super::notices::Notice;
use crate::error::BackendResult;
use crate::model::dto::PresenceVo;
use crate::model::{
    AcceptedSend, AckOutcome, AckRecord, Group, InboxMessage, MessageDoc, SendRecord, SessionInfo,
    SessionSummary, StoredBatch, User,
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

    /// The single session of users `a` and `b`: the one they have, or
    /// `candidate` if they have none yet. Every caller, on every node, gets
    /// the same id for a pair (a store may keep a new pair's id to itself
    /// until its first message is stored, if it alone numbers them).
    async fn single_session(&self, a: u64, b: u64, candidate: u64) -> BackendResult<u64>;
    async fn session_info(&self, session_id: u64) -> BackendResult<Option<SessionInfo>>;

    /// Writes one `MessageDoc` and one inbox entry per recipient for each
    /// record, assigning `seq` and `inboxSeq`. Idempotent: a record whose
    /// message is stored, or whose (`senderId`, `clientMessageId`) another
    /// stored message has, is not stored again but reported in `known`.
    /// `at` names the records' place in their topic, for stores that save
    /// a consumer's position with what it applied.
    async fn store_messages(
        &self,
        records: Vec<SendRecord>,
        at: Checkpoint,
    ) -> BackendResult<StoredBatch>;
    /// Applies inbox status changes (monotonic), one outcome per record.
    async fn apply_acks(
        &self,
        acks: Vec<AckRecord>,
        at: Checkpoint,
    ) -> BackendResult<Vec<AckOutcome>>;
    /// Marks the message recalled if `sender_id` sent it at or after
    /// `not_before_ms`.
    async fn recall(
        &self,
        message_id: u64,
        sender_id: u64,
        not_before_ms: i64,
    ) -> BackendResult<RecallOutcome>;

    async fn message(&self, message_id: u64) -> BackendResult<Option<MessageDoc>>;
    /// The stored message `sender_id` sent as `client_message_id`, if any.
    async fn sent_message(
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

    /// Which of the user's tokens are revoked; `None` if there is no such
    /// user.
    async fn auth_state(&self, user_id: u64) -> BackendResult<Option<AuthState>>;
    /// Takes the user's next token issue number (1, 2, ...: each is given
    /// out once, in order); `None` if there is no such user.
    async fn next_token_number(&self, user_id: u64) -> BackendResult<Option<u64>>;
    /// Revokes one token until it expires; entries that expired before
    /// `now_ms` may be dropped meanwhile.
    async fn revoke_token(
        &self,
        user_id: u64,
        token: RevokedToken,
        now_ms: i64,
    ) -> BackendResult<()>;
    /// Revokes every token numbered below `number` (a lower `number` than
    /// one set before changes nothing).
    async fn revoke_tokens_before(&self, user_id: u64, number: u64) -> BackendResult<()>;

    /// Answers when the backend can serve.
    async fn ping(&self) -> BackendResult<()>;
    /// Makes everything written durable and releases the backend; called
    /// once the node is stopping and its consumers drained. Later calls
    /// fail with `Closed` (closing again is a no-op).
    async fn close(&self) -> BackendResult<()>;
}

/// Which tokens of a user are revoked: every one numbered below
/// `revoked_before` (logout-all), and single ones (logout) until they
/// expire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthState {
    pub revoked_before: u64,
    pub revoked: Vec<RevokedToken>,
}

impl AuthState {
    pub fn revokes(&self, token_number: u64) -> bool {
        token_number < self.revoked_before || self.revoked.iter().any(|r| r.number == token_number)
    }
}

/// One revoked token, remembered until it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokedToken {
    pub number: u64,
    /// When the token expires (ms since the epoch): then it is refused
    /// anyway, and the entry may go.
    pub expires_at_ms: i64,
}

/// Where a record sits in a topic: a topic is split into partitions (the
/// embedded log has one, a RocketMQ topic has its queues), each totally
/// ordered by offset. Records published with the same route share a
/// partition, so their order is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// A batch a consumer applies: records `first..=last` of one partition.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint {
    pub consumer: &'static str,
    pub partition: u32,
    pub first: u64,
    pub last: u64,
}

#[derive(Debug, Clone)]
pub enum RecallOutcome {
    Recalled(MessageDoc),
    NotFound,
    NotSender,
    TooLate,
}

/// What a store does with a recall request ([`RecallOutcome::judge`]).
#[derive(Debug, Clone)]
pub enum RecallStep {
    /// Mark the message recalled; this is how it reads once marked.
    Write(MessageDoc),
    /// Nothing to write: answer this.
    Answer(RecallOutcome),
}

impl RecallOutcome {
    /// The rules of a recall, for every store. A recalled message keeps
    /// its place (`seq`) and loses its content; one recalled already is
    /// answered as it is.
    pub fn judge(doc: Option<MessageDoc>, sender_id: u64, not_before_ms: i64) -> RecallStep {
        let Some(mut doc) = doc else {
            return RecallStep::Answer(RecallOutcome::NotFound);
        };
        if doc.sender_id != sender_id {
            return RecallStep::Answer(RecallOutcome::NotSender);
        }
        if doc.recalled {
            return RecallStep::Answer(RecallOutcome::Recalled(doc));
        }
        if doc.server_ts < not_before_ms {
            return RecallStep::Answer(RecallOutcome::TooLate);
        }
        doc.recalled = true;
        doc.content.clear();
        RecallStep::Write(doc)
    }
}

/// The outcome of a deduplicated publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOnce {
    /// Appended at this position.
    Published(Position),
    /// The key was published before; here is the receipt stored with it.
    Duplicate(Vec<u8>),
}

/// A publish that is queued and resolves once durable.
pub type Durable<T> = BoxFuture<'static, BackendResult<T>>;

/// Where a topic looks up an idempotency key it no longer holds itself:
/// its record was applied for good, so what it was applied to knows the
/// key.
#[async_trait]
pub trait KeyHistory: Send + Sync + 'static {
    /// The receipt the key's first publish stored, if it was published.
    async fn receipt(&self, key: &str) -> BackendResult<Option<Vec<u8>>>;
}

/// A durable topic: partitions of ordered records, consumed by groups
/// that each process every record (at least once).
#[async_trait]
pub trait DurableTopic: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Queues `payload` in the partition of `route`; the outer await is
    /// backpressure (and fixes the order against later publishes of the
    /// same caller and route), the returned future resolves once the
    /// record would survive a crash.
    async fn publish(&self, route: u64, payload: Vec<u8>) -> BackendResult<Durable<Position>>;
    /// Like `publish`, but at most once per `key`: a repeat gets the
    /// `receipt` stored by the first publish instead. (A topic may answer
    /// some repeats only through its consumers: a store then reports the
    /// record as `known`.)
    async fn publish_once(
        &self,
        route: u64,
        key: String,
        payload: Vec<u8>,
        receipt: Vec<u8>,
    ) -> BackendResult<Durable<PublishOnce>>;
    /// A consumer of `group`, resuming where the group got to.
    async fn consumer(&self, group: &'static str) -> BackendResult<Box<dyn TopicConsumer>>;
    /// Answers when the topic can take publishes.
    async fn ping(&self) -> BackendResult<()>;
    /// Makes everything published durable and releases the topic, as
    /// `Store::close` does.
    async fn close(&self) -> BackendResult<()>;
}

/// One record of a topic. The payload is shared, not copied, between the
/// publisher, an in-memory tail and every consumer.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub position: Position,
    pub payload: bytes::Bytes,
}

#[async_trait]
pub trait TopicConsumer: Send {
    /// The next records (at most `max`, all of one partition, ascending),
    /// waiting until there is one; a consumer whose state (`lag`,
    /// `assigned`) changes without records may return none after a while,
    /// so that its loop reports it.
    async fn poll(&mut self, max: usize) -> BackendResult<Vec<TopicRecord>>;
    /// Marks the records through `at` processed: they need not be
    /// delivered again (the topic decides when they are deleted).
    /// Processing is idempotent, so a commit lost in a crash only causes
    /// harmless reprocessing.
    async fn commit(&mut self, at: Checkpoint) -> BackendResult<()>;
    /// Records published but not yet polled, over the partitions held.
    fn lag(&self) -> u64;
    /// Whether the consumer holds partitions to consume (a consumer that
    /// shares its group with other nodes gets them at a rebalance).
    fn assigned(&self) -> bool;
    /// Whether a stopping node consumes what is left before it stops (no
    /// other node would), or leaves it to the nodes that take its
    /// partitions over.
    fn drain_on_stop(&self) -> bool {
        true
    }
}

/// Who is online and on which node, and the messages between nodes:
/// pushes to the devices a node holds, answers to the node a request came
/// from, and broadcasts to every node.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// This node's id.
    fn node(&self) -> u16;
    /// A device of `user_id` connects to this node; `false` (and nothing
    /// counted) if the user has `max_devices` already, over every node.
    async fn device_connected(&self, user_id: u64, max_devices: usize) -> BackendResult<bool>;
    /// A device counted by `device_connected` left.
    async fn device_disconnected(&self, user_id: u64) -> BackendResult<()>;
    /// `online` and `lastSeenAt` of each user.
    async fn presence(&self, user_ids: &[u64]) -> BackendResult<Vec<PresenceVo>>;
    /// The nodes holding devices of each of these users.
    async fn locate(&self, user_ids: &[u64]) -> BackendResult<Locations>;
    /// Delivers `notice` to another node's `NodeMail`, at most once.
    async fn tell(&self, node: u16, notice: Notice) -> BackendResult<()>;
    /// Delivers `notice` to every other node, at most once.
    async fn tell_all(&self, notice: Notice) -> BackendResult<()>;
    /// As `tell_all`, and says how many other nodes it reached (those to
    /// wait for when the notice asks for an answer).
    async fn tell_all_counted(&self, notice: Notice) -> BackendResult<usize> {
        self.tell_all(notice).await.map(|()| 0)
    }
    /// Where notices from other nodes go; called once, at start.
    fn attach(&self, mail: Arc<dyn NodeMail>);
    /// Answers when the backend can serve.
    async fn ping(&self) -> BackendResult<()>;
    /// Says this node is gone (its devices with it) and releases the backend.
    async fn close(&self) -> BackendResult<()>;
}

/// Where users' devices are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locations {
    /// Every device is on this node (there is no other).
    AllHere,
    /// (node, the users with devices there); users with no device anywhere
    /// are left out.
    Nodes(Vec<(u16, Vec<u64>)>),
}

/// What receives the notices other nodes send this one (and those this
/// node sends itself).
pub trait NodeMail: Send + Sync + 'static {
    fn receive(&self, notice: Notice);
}

/// Limits that hold per user (or per client address) over every node.
#[async_trait]
pub trait Quotas: Send + Sync + 'static {
    /// Takes one send from the user's token bucket (its rate and size are
    /// the configuration's); `false` if it is empty.
    async fn take_send(&self, user_id: u64) -> BackendResult<bool>;
    /// Counts one event of `tally` in its window, which starts with the
    /// window's first event and lasts `window`; returns the count with
    /// this event and when the window ends.
    async fn count(&self, tally: &Tally, window: Duration) -> BackendResult<WindowCount>;
    /// `tally`'s current window (count 0 if none is open).
    async fn peek(&self, tally: &Tally) -> BackendResult<WindowCount>;
    /// Takes back one event counted in `tally`'s current window (none if
    /// the window is over).
    async fn uncount(&self, tally: &Tally) -> BackendResult<()>;
    /// Ends `tally`'s window: its count starts over.
    async fn clear(&self, tally: &Tally) -> BackendResult<()>;
}

/// What a window counter of [`Quotas`] counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tally {
    /// Login attempts for a username (lower-cased: usernames are unique
    /// whatever their case).
    LoginFailures(String),
    /// Failed login attempts from a client address (an IPv6 client by its
    /// /64, which one subscriber usually holds whole).
    LoginFailuresFrom(IpAddr),
    /// Registration attempts from a client address (IPv6 by its /64).
    Registrations(IpAddr),
}

/// A window's count and the time left in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    pub count: u64,
    pub resets_in: Duration,
}

/// The backends a node runs on, opened together from the configuration.
pub struct Backends {
    /// `embedded` or `cluster`, for logs and metrics.
    pub mode: &'static str,
    pub store: Arc<dyn Store>,
    pub session_topic: Arc<dyn DurableTopic>,
    pub ack_topic: Arc<dyn DurableTopic>,
    pub presence: Arc<dyn Presence>,
    pub quotas: Arc<dyn Quotas>,
    /// The HS256 secret every node of the deployment signs tokens with.
    pub jwt_secret: Vec<u8>,
    /// Sends must not be served before the session consumer caught up
    /// with what was published before a restart: the embedded store keeps
    /// a new pair's session id in memory until its first message is
    /// stored, so a send racing the replay could hand out a second one.
    pub replay_before_serving: bool,
}

impl Backends {
    /// Whether every backend answers.
    pub async fn check(&self) -> BackendResult<()> {
        self.store.ping().await?;
        self.session_topic.ping().await?;
        self.ack_topic.ping().await?;
        self.presence.ping().await
    }

    /// Closes the topics (at once), then the store and presence, logging
    /// what fails.
    pub async fn close(&self) {
        let topics = [&self.session_topic, &self.ack_topic];
        let closed = futures_util::future::join_all(topics.iter().map(|t| t.close())).await;
        for (topic, result) in topics.iter().zip(closed) {
            if let Err(e) = result {
                tracing::error!(error = %e, topic = topic.name(), "closing the topic failed");
            }
        }
        if let Err(e) = self.store.close().await {
            tracing::error!(error = %e, "closing the store failed");
        }
        if let Err(e) = self.presence.close().await {
            tracing::error!(error = %e, "closing presence failed");
        }
    }
}
