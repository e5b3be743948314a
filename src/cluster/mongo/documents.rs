//! The documents as stored: camelCase fields, ids as Int64 (bson writes a
//! `u64` as Int64 and refuses one above `i64::MAX`), and their conversions
//! to the model's types.

use std::sync::Arc;

use mongodb::bson::{Bson, Document};
use serde::{Deserialize, Serialize};

use crate::model::{
    AcceptedSend, Group, InboxMessage, InboxRef, InboxStatus, MessageDoc, SessionType, User,
};

pub const USERS: &str = "users";
pub const GROUPS: &str = "groups";
pub const MEMBERS: &str = "members";
pub const SESSIONS: &str = "sessions";
pub const MESSAGES: &str = "messages";
pub const INBOX: &str = "inbox";

/// An id as a BSON value for filters (`doc!` takes no `u64`).
pub fn id(v: u64) -> Bson {
    Bson::Int64(v as i64)
}

pub fn ids(vs: impl IntoIterator<Item = u64>) -> Vec<Bson> {
    vs.into_iter().map(id).collect()
}

/// `_id` of a member document.
pub fn member_key(group_id: u64, user_id: u64) -> String {
    format!("{group_id}:{user_id}")
}

/// `_id` of an inbox entry.
pub fn entry_key(user_id: u64, inbox_seq: i64) -> String {
    format!("{user_id}:{inbox_seq}")
}

/// Usernames are unique without regard to ASCII case, as SQLite's
/// `COLLATE NOCASE` (which folds ASCII only) makes them in the embedded
/// store.
pub fn username_key(username: &str) -> String {
    username.to_ascii_lowercase()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDoc {
    #[serde(rename = "_id")]
    pub id: u64,
    pub username: String,
    pub username_lower: String,
    pub nickname: String,
    pub password_hash: String,
    pub created_at: i64,
    /// The last `inboxSeq` given out in the user's inbox.
    #[serde(default)]
    pub inbox_seq: i64,
}

impl UserDoc {
    pub fn new(u: User) -> UserDoc {
        UserDoc {
            id: u.user_id,
            username_lower: username_key(&u.username),
            username: u.username,
            nickname: u.nickname,
            password_hash: u.password_hash,
            created_at: u.created_at,
            inbox_seq: 0,
        }
    }

    pub fn into_user(self) -> User {
        User {
            user_id: self.id,
            username: self.username,
            nickname: self.nickname,
            password_hash: self.password_hash,
            created_at: self.created_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDoc {
    #[serde(rename = "_id")]
    pub id: u64,
    pub session_id: u64,
    pub name: String,
    pub owner_id: u64,
    pub created_at: i64,
}

impl GroupDoc {
    pub fn into_group(self, member_ids: Vec<u64>) -> Group {
        Group {
            group_id: self.id,
            session_id: self.session_id,
            name: self.name,
            owner_id: self.owner_id,
            member_ids,
            created_at: self.created_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub group_id: u64,
    pub user_id: u64,
    pub joined_at: i64,
}

impl MemberDoc {
    pub fn new(group_id: u64, user_id: u64, joined_at: i64) -> MemberDoc {
        MemberDoc {
            id: member_key(group_id, user_id),
            group_id,
            user_id,
            joined_at,
        }
    }
}

/// Members in the embedded store's order: by `joinedAt`, then user id.
pub fn ordered_members(mut members: Vec<MemberDoc>) -> Vec<u64> {
    members.sort_by_key(|m| (m.joined_at, m.user_id));
    members.into_iter().map(|m| m.user_id).collect()
}

/// `type` of a session document.
pub const SINGLE: i32 = 1;
pub const GROUP: i32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDoc {
    #[serde(rename = "_id")]
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_lo: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_hi: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<u64>,
    #[serde(default)]
    pub last_seq: i64,
    /// Absent until the first message: a single session without one is
    /// not listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<u64>,
    #[serde(default)]
    pub updated_at: i64,
}

impl SessionDoc {
    pub fn single(id: u64, (lo, hi): (u64, u64), at: i64) -> SessionDoc {
        SessionDoc {
            id,
            kind: SINGLE,
            user_lo: Some(lo),
            user_hi: Some(hi),
            group_id: None,
            last_seq: 0,
            last_message_id: None,
            updated_at: at,
        }
    }

    pub fn group(id: u64, group_id: u64, at: i64) -> SessionDoc {
        SessionDoc {
            id,
            kind: GROUP,
            user_lo: None,
            user_hi: None,
            group_id: Some(group_id),
            last_seq: 0,
            last_message_id: None,
            updated_at: at,
        }
    }

    pub fn session_type(&self) -> SessionType {
        SessionType::from_code(self.kind as i64)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRow {
    #[serde(rename = "_id")]
    pub id: u64,
    pub session_id: u64,
    pub seq: i64,
    pub session_type: i32,
    pub sender_id: u64,
    #[serde(default)]
    pub to_user_id: Option<u64>,
    #[serde(default)]
    pub group_id: Option<u64>,
    pub message_type: i32,
    pub content: String,
    pub client_message_id: String,
    /// `"<senderId>:<clientMessageId>"` (`AcceptedSend::key`): the send's
    /// idempotency key in one field, so that a batch's keys are looked up
    /// with one `$in` on a single-field unique index.
    pub send_key: String,
    pub client_ts: i64,
    pub server_ts: i64,
    pub adjusted_ts: i64,
    #[serde(default)]
    pub recalled: bool,
}

impl MessageRow {
    pub fn new(d: &MessageDoc) -> MessageRow {
        MessageRow {
            id: d.message_id,
            session_id: d.session_id,
            seq: d.seq,
            session_type: d.session_type.code() as i32,
            sender_id: d.sender_id,
            to_user_id: d.to_user_id,
            group_id: d.group_id,
            message_type: d.message_type,
            content: d.content.clone(),
            client_message_id: d.client_message_id.clone(),
            send_key: AcceptedSend::key(d.sender_id, &d.client_message_id),
            client_ts: d.client_ts,
            server_ts: d.server_ts,
            adjusted_ts: d.adjusted_ts,
            recalled: d.recalled,
        }
    }

    pub fn into_doc(self) -> MessageDoc {
        MessageDoc {
            message_id: self.id,
            session_id: self.session_id,
            session_type: SessionType::from_code(self.session_type as i64),
            seq: self.seq,
            sender_id: self.sender_id,
            to_user_id: self.to_user_id,
            group_id: self.group_id,
            message_type: self.message_type,
            content: self.content,
            client_message_id: self.client_message_id,
            client_ts: self.client_ts,
            server_ts: self.server_ts,
            adjusted_ts: self.adjusted_ts,
            recalled: self.recalled,
        }
    }
}

/// The fields of a stored message that identify its send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendRow {
    #[serde(rename = "_id")]
    pub id: u64,
    pub session_id: u64,
    pub client_message_id: String,
    pub send_key: String,
    pub server_ts: i64,
}

impl SendRow {
    pub fn projection() -> Document {
        mongodb::bson::doc! {"_id": 1, "sessionId": 1, "clientMessageId": 1, "sendKey": 1, "serverTs": 1}
    }

    pub fn accepted(&self) -> AcceptedSend {
        AcceptedSend {
            client_message_id: self.client_message_id.clone(),
            message_id: self.id,
            session_id: self.session_id,
            server_ts: self.server_ts,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboxDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: u64,
    pub inbox_seq: i64,
    pub message_id: u64,
    pub session_id: u64,
    pub seq: i64,
    pub status: i32,
    /// `status < read`, for the partial index of unread entries.
    pub unread: bool,
}

impl InboxDoc {
    pub fn new(doc: &MessageDoc, e: &InboxRef) -> InboxDoc {
        InboxDoc {
            id: entry_key(e.user_id, e.inbox_seq),
            user_id: e.user_id,
            inbox_seq: e.inbox_seq,
            message_id: doc.message_id,
            session_id: doc.session_id,
            seq: doc.seq,
            status: e.status.code() as i32,
            unread: e.status.is_unread(),
        }
    }

    pub fn status(&self) -> InboxStatus {
        InboxStatus::from_code(self.status as i64)
    }

    pub fn view(&self, doc: Arc<MessageDoc>) -> InboxMessage {
        InboxMessage {
            doc,
            inbox_seq: self.inbox_seq,
            status: self.status(),
        }
    }
}
