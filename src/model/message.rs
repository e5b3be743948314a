//! Stored documents and topic records of the inbox model.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A conversation: two users, or one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionType {
    Single,
    Group,
}

impl SessionType {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionType::Single => "single",
            SessionType::Group => "group",
        }
    }
    pub fn from_code(code: i64) -> SessionType {
        if code == 2 {
            SessionType::Group
        } else {
            SessionType::Single
        }
    }
    pub fn code(self) -> i64 {
        match self {
            SessionType::Single => 1,
            SessionType::Group => 2,
        }
    }
}

/// Inbox entry status; the order is the only allowed direction of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboxStatus {
    Pending = 0,
    Delivered = 1,
    Read = 2,
}

impl InboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InboxStatus::Pending => "pending",
            InboxStatus::Delivered => "delivered",
            InboxStatus::Read => "read",
        }
    }
    pub fn from_code(code: i64) -> InboxStatus {
        match code {
            2 => InboxStatus::Read,
            1 => InboxStatus::Delivered,
            _ => InboxStatus::Pending,
        }
    }
    pub fn code(self) -> i64 {
        self as i64
    }
    /// Counted as unread (pending or delivered).
    pub fn is_unread(self) -> bool {
        self != InboxStatus::Read
    }
}

/// What the send controller publishes to the session topic: an accepted,
/// validated message that does not have its `seq` yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendRecord {
    /// The node that accepted it: it waits to answer the sender.
    #[serde(default)]
    pub origin_node: u16,
    /// The connection (on `origin_node`) that sent it: the sender's other
    /// devices get the push, this one gets the `SendAck`.
    #[serde(default)]
    pub origin_conn: Option<u64>,
    pub message_id: u64,
    pub session_id: u64,
    pub session_type: SessionType,
    pub sender_id: u64,
    pub to_user_id: Option<u64>,
    pub group_id: Option<u64>,
    pub message_type: i32,
    pub content: String,
    pub client_message_id: String,
    pub client_ts: i64,
    pub server_ts: i64,
    pub adjusted_ts: i64,
}

/// A stored message (`MessageDoc`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageDoc {
    pub message_id: u64,
    pub session_id: u64,
    pub session_type: SessionType,
    pub seq: i64,
    pub sender_id: u64,
    pub to_user_id: Option<u64>,
    pub group_id: Option<u64>,
    pub message_type: i32,
    pub content: String,
    pub client_message_id: String,
    pub client_ts: i64,
    pub server_ts: i64,
    pub adjusted_ts: i64,
    pub recalled: bool,
}

impl MessageDoc {
    pub fn from_record(r: SendRecord, seq: i64) -> MessageDoc {
        MessageDoc {
            message_id: r.message_id,
            session_id: r.session_id,
            session_type: r.session_type,
            seq,
            sender_id: r.sender_id,
            to_user_id: r.to_user_id,
            group_id: r.group_id,
            message_type: r.message_type,
            content: r.content,
            client_message_id: r.client_message_id,
            client_ts: r.client_ts,
            server_ts: r.server_ts,
            adjusted_ts: r.adjusted_ts,
            recalled: false,
        }
    }
}

/// One recipient's view of a message: its `UserInbox` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxRef {
    pub user_id: u64,
    pub inbox_seq: i64,
    pub status: InboxStatus,
}

impl InboxRef {
    /// A recipient's new entry for a message from `sender`: the sender's
    /// own copy is read already (it only serves sync), the others' pending.
    pub fn new_entry(user_id: u64, sender: u64, inbox_seq: i64) -> InboxRef {
        let status = if user_id == sender {
            InboxStatus::Read
        } else {
            InboxStatus::Pending
        };
        InboxRef {
            user_id,
            inbox_seq,
            status,
        }
    }
}

/// A message as one user sees it (document + that user's inbox entry).
#[derive(Debug, Clone)]
pub struct InboxMessage {
    pub doc: Arc<MessageDoc>,
    pub inbox_seq: i64,
    pub status: InboxStatus,
}

/// A message just written by the session consumer, with every recipient's
/// inbox entry: the payload of the message-sent event.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub doc: Arc<MessageDoc>,
    pub recipients: Vec<InboxRef>,
    /// When the send was accepted (ms), for the send-to-store histogram.
    pub accepted_at_ms: i64,
}

/// What `Store::store_messages` did with a batch of records.
#[derive(Debug, Clone, Default)]
pub struct StoredBatch {
    /// The records stored now, in record order.
    pub stored: Vec<StoredMessage>,
    /// Records not stored because their send was stored before: with the
    /// same message id (a record processed again), or as another message
    /// with the same (`senderId`, `clientMessageId`) (a repeat the topic
    /// did not catch).
    pub known: Vec<KnownSend>,
}

/// A record whose send was stored before.
#[derive(Debug, Clone)]
pub struct KnownSend {
    /// The record's message id (what its sender waits for).
    pub message_id: u64,
    /// The stored send it is.
    pub accepted: AcceptedSend,
}

/// What the sender is told once a send is durably accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedSend {
    pub client_message_id: String,
    pub message_id: u64,
    pub session_id: u64,
    pub server_ts: i64,
}

impl AcceptedSend {
    /// The idempotency key of a send: its sender and `clientMessageId`.
    pub fn key(sender_id: u64, client_message_id: &str) -> String {
        format!("{sender_id}:{client_message_id}")
    }

    /// The sender and `clientMessageId` a `key` was made of.
    pub fn parse_key(key: &str) -> Option<(u64, &str)> {
        let (sender, client_message_id) = key.split_once(':')?;
        Some((sender.parse().ok()?, client_message_id))
    }
}

/// An inbox status change requested by a user (STOMP ACK, `/app/ack`, REST).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum AckCommand {
    /// Mark these messages (by id) at least `status`.
    Messages {
        message_ids: Vec<u64>,
        status: InboxStatus,
    },
    /// Mark these entries of the user's inbox, named (messageId, inboxSeq)
    /// as they were pushed, at least `status`: STOMP ACKs, found by the
    /// inbox's primary key instead of through the message.
    Entries {
        entries: Vec<(u64, i64)>,
        status: InboxStatus,
    },
    /// Mark the session's messages up to `up_to_seq` (all if `None`) read.
    SessionRead {
        session_id: u64,
        up_to_seq: Option<i64>,
    },
}

/// One user's ack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckRecord {
    pub user_id: u64,
    pub command: AckCommand,
    /// Set when the publisher waits for the outcome: the token it waits
    /// on, on node `reply_node`.
    #[serde(default)]
    pub reply_token: Option<u64>,
    #[serde(default)]
    pub reply_node: u16,
}

/// What one ack-topic record carries: a single ack (a REST or `/app/ack`
/// call waiting for its outcome), or the STOMP ACK frames of many users
/// gathered for a few milliseconds: one append for hundreds of acks.
/// Written as the bare record or a JSON array of them.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum AckEnvelope {
    Batch(Vec<AckRecord>),
    One(AckRecord),
}

/// Reads the two shapes by their first token. (`#[serde(untagged)]` would
/// first copy the whole record into serde's generic `Content` tree, a
/// string and a map per field of every ack in a batch, and then try each
/// shape on the copy: the ack consumer's biggest allocator.)
impl<'de> Deserialize<'de> for AckEnvelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
        use serde::de::{MapAccess, SeqAccess, Visitor};

        struct Shape;
        impl<'de> Visitor<'de> for Shape {
            type Value = AckEnvelope;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an ack record or an array of them")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<AckEnvelope, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(AckEnvelope::Batch)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AckEnvelope, A::Error> {
                AckRecord::deserialize(MapAccessDeserializer::new(map)).map(AckEnvelope::One)
            }
        }
        d.deserialize_any(Shape)
    }
}

impl AckEnvelope {
    pub fn into_records(self) -> Vec<AckRecord> {
        match self {
            AckEnvelope::Batch(records) => records,
            AckEnvelope::One(record) => vec![record],
        }
    }
}

/// The outcome of applying one `AckRecord`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AckOutcome {
    /// Inbox entries whose status changed.
    pub updated: u64,
    /// Message ids that left `pending` (no more redelivery for them).
    pub no_longer_pending: Vec<u64>,
}

impl AckOutcome {
    /// Counts an entry of `message_id` going from `old` to `new`; `false`
    /// (and nothing counted) if that is not a rise: statuses never go back.
    pub fn raise(&mut self, message_id: u64, old: InboxStatus, new: InboxStatus) -> bool {
        if old >= new {
            return false;
        }
        self.updated += 1;
        if old == InboxStatus::Pending {
            self.no_longer_pending.push(message_id);
        }
        true
    }
}

/// A user account.
#[derive(Debug, Clone)]
pub struct User {
    pub user_id: u64,
    pub username: String,
    pub nickname: String,
    pub password_hash: String,
    pub created_at: i64,
}

/// A group and its members.
#[derive(Debug, Clone)]
pub struct Group {
    pub group_id: u64,
    pub session_id: u64,
    pub name: String,
    pub owner_id: u64,
    pub member_ids: Vec<u64>,
    pub created_at: i64,
}

/// One row of a user's session list.
#[derive(Debug, Clone)]
pub struct SessionSummary {
    pub session_id: u64,
    pub session_type: SessionType,
    pub peer_id: Option<u64>,
    pub group_id: Option<u64>,
    pub name: Option<String>,
    pub last_message: Option<InboxMessage>,
    pub unread_count: i64,
    pub updated_at: i64,
}

/// Who may see and write a session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub session_id: u64,
    pub session_type: SessionType,
    /// Both users of a single session; the members of a group session.
    pub members: Vec<u64>,
    pub group_id: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_record_reads_back_alone_or_in_a_batch() {
        let one = AckRecord {
            user_id: 3,
            command: AckCommand::Messages {
                message_ids: vec![5, 6],
                status: InboxStatus::Delivered,
            },
            reply_token: Some(9),
            reply_node: 0,
        };
        // A record written alone (also by earlier versions) is one ack.
        let alone = serde_json::to_vec(&one).unwrap();
        let read: AckEnvelope = serde_json::from_slice(&alone).unwrap();
        let records = read.into_records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].reply_token, Some(9));
        let batch =
            serde_json::to_vec(&AckEnvelope::Batch(vec![one.clone(), one.clone()])).unwrap();
        let read: AckEnvelope = serde_json::from_slice(&batch).unwrap();
        let records = read.into_records();
        assert_eq!(records.len(), 2);
        assert!(records
            .iter()
            .all(|r| r.user_id == 3 && r.command == one.command && r.reply_token == Some(9)));
        assert!(serde_json::from_slice::<AckEnvelope>(b"{\"nope\":1}").is_err());
        assert!(serde_json::from_slice::<AckEnvelope>(b"[{\"nope\":1}]").is_err());
        assert!(serde_json::from_slice::<AckEnvelope>(b"7").is_err());
    }
}
