//! Wire DTOs shared by REST and STOMP. Ids are decimal strings (JavaScript
//! clients lose precision above 2^53); field names are camelCase.
//!
//! The fields of requests are [`wire`](super::wire) types: each states its
//! rule in the spec and checks it when the body is parsed, the same way
//! for REST and STOMP. A field that may be null is declared `nullable`
//! (an `Option` alone only makes it optional in the spec): responses
//! write `null` for `None`, and requests take `null` as absent.

use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::Object;
use serde::{Deserialize, Serialize};
use validator::Validate;

use super::message::{InboxMessage, MessageDoc};
use super::wire::{
    AckType, ClientMessageId, ClientMessageType, Content, GroupId, GroupName, LoginName,
    LoginPassword, MemberIds, MessageIds, Nickname, Password, Seq, SessionId, UserId, UserIds,
    Username,
};

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
pub struct RegisterReq {
    pub username: Username,
    pub password: Password,
    pub nickname: Nickname,
}

// `Validate` (with no rules left: the field types check them) is kept for
// the callers of `LoginReq::validate`.
#[derive(Debug, Clone, Object, Deserialize, Validate)]
#[oai(rename_all = "camelCase")]
pub struct LoginReq {
    pub username: LoginName,
    pub password: LoginPassword,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct LoginResp {
    /// HS256 JWT for `Authorization: Bearer` (REST) or CONNECT.
    pub token: String,
    pub user_id: String,
    /// Expiry, ms since the epoch.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Object, Serialize, PartialEq, Eq)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct UserVo {
    pub user_id: String,
    pub username: String,
    pub nickname: String,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct PresenceVo {
    pub user_id: String,
    /// True while any device of the user is connected.
    pub online: bool,
    /// When the last device disconnected (ms); null if never seen.
    #[oai(nullable)]
    pub last_seen_at: Option<i64>,
}

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct CreateGroupReq {
    pub name: GroupName,
    /// Initial members besides the creator (null or absent: none).
    #[oai(default, nullable)]
    #[serde(default)]
    pub member_ids: MemberIds,
}

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct AddMembersReq {
    pub user_ids: UserIds,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct GroupVo {
    pub group_id: String,
    pub session_id: String,
    pub name: String,
    pub owner_id: String,
    pub member_ids: Vec<String>,
}

/// A message to send: exactly one of `toUserId` and `groupId` (not null).
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct SendReq {
    /// The recipient of a single-chat message (not the sender).
    #[oai(nullable)]
    pub to_user_id: Option<UserId>,
    /// The group of a group message (members only).
    #[oai(nullable)]
    pub group_id: Option<GroupId>,
    pub message_type: ClientMessageType,
    pub content: Content,
    pub client_message_id: ClientMessageId,
    /// The sender's clock (ms); server time if absent or null.
    #[oai(nullable)]
    pub client_timestamp: Option<i64>,
}

impl SendReq {
    /// What the derived schema of `SendReq` cannot say: exactly one of
    /// `toUserId` and `groupId` is a string (the other absent or null).
    /// `MessageService::send` checks the same.
    pub fn refine_schema(registry: &mut Registry) {
        let type_name = <SendReq as poem_openapi::types::Type>::name();
        let Some(schema) = registry.schemas.get_mut(type_name.as_ref()) else {
            return;
        };
        let string_field = |name: &'static str| {
            MetaSchemaRef::Inline(Box::new(MetaSchema {
                required: vec![name],
                properties: vec![(
                    name,
                    MetaSchemaRef::Inline(Box::new(MetaSchema::new("string"))),
                )],
                ..MetaSchema::ANY
            }))
        };
        schema.one_of = vec![string_field("toUserId"), string_field("groupId")];
    }
}

#[derive(Debug, Clone, Object, Serialize, Deserialize, PartialEq, Eq)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct SendAck {
    pub client_message_id: String,
    pub message_id: String,
    pub session_id: String,
    pub server_timestamp: i64,
    /// Always `accepted`: sent only once the message is durable.
    pub status: String,
}

// The field order is part of the push path: `MessageVoTemplate` needs
// `inboxSeq` before any text a user wrote and `status` last (its test
// fails otherwise). (Not a doc comment: those go into openapi.yaml.)
/// A message as one user sees it.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct MessageVo {
    /// `message`, or `recall` for a recall event.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub message_id: String,
    pub session_id: String,
    /// `single` or `group`.
    pub session_type: String,
    pub seq: i64,
    pub inbox_seq: i64,
    pub sender_id: String,
    /// The recipient of a single-chat message; null in a group.
    #[oai(nullable)]
    pub to_user_id: Option<String>,
    /// The group of a group message; null in a single chat.
    #[oai(nullable)]
    pub group_id: Option<String>,
    pub message_type: i32,
    pub content: String,
    pub client_message_id: String,
    pub client_timestamp: i64,
    pub server_timestamp: i64,
    pub adjusted_timestamp: i64,
    pub is_recalled: bool,
    /// The receiving user's inbox status: `pending`, `delivered` or `read`.
    pub status: String,
}

impl MessageVo {
    pub fn new(doc: &MessageDoc, inbox_seq: i64, status: &str) -> MessageVo {
        MessageVo {
            kind: "message".into(),
            message_id: doc.message_id.to_string(),
            session_id: doc.session_id.to_string(),
            session_type: doc.session_type.as_str().into(),
            seq: doc.seq,
            inbox_seq,
            sender_id: doc.sender_id.to_string(),
            to_user_id: doc.to_user_id.map(|id| id.to_string()),
            group_id: doc.group_id.map(|id| id.to_string()),
            message_type: doc.message_type,
            content: doc.content.clone(),
            client_message_id: doc.client_message_id.clone(),
            client_timestamp: doc.client_ts,
            server_timestamp: doc.server_ts,
            adjusted_timestamp: doc.adjusted_ts,
            is_recalled: doc.recalled,
            status: status.into(),
        }
    }
}

impl From<&InboxMessage> for MessageVo {
    fn from(m: &InboxMessage) -> Self {
        MessageVo::new(&m.doc, m.inbox_seq, m.status.as_str())
    }
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct PullResp {
    pub messages: Vec<MessageVo>,
    pub has_more: bool,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct UnreadResp {
    pub messages: Vec<MessageVo>,
    /// Every unread message of the caller, across sessions.
    pub total: i64,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct SyncResp {
    pub messages: Vec<MessageVo>,
    pub has_more: bool,
    /// The cursor to pass as `afterInboxSeq` next time.
    pub last_inbox_seq: i64,
}

/// REST ack body; also the first form of the STOMP `/app/ack` body.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct AckReq {
    pub message_ids: MessageIds,
    /// `received` (the device has them) or `read`.
    pub ack_type: AckType,
}

/// STOMP `/app/ack` body: `{messageIds, ackType}` or `{sessionId, upToSeq, ackType: "read"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StompAckReq {
    pub message_ids: Option<MessageIds>,
    pub session_id: Option<SessionId>,
    pub up_to_seq: Option<Seq>,
    pub ack_type: AckType,
}

/// Parses the JSON body of a STOMP SEND to `/app/send` or `/app/ack`.
///
/// Through a `Value` that must be an object: serde's derived `Deserialize`
/// also takes a struct as a JSON array of its fields in order (`[null,
/// null, 1, "hi", "c-1", null]` was a `SendReq`), which the contract does
/// not allow and REST refuses. As in REST, a repeated key counts once (the
/// last). Found by `tests/fuzz_json.rs`.
pub fn from_stomp_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    if !value.is_object() {
        return Err(serde::de::Error::custom("the body must be a JSON object"));
    }
    T::deserialize(value)
}

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct MarkReadReq {
    pub session_id: SessionId,
    /// Mark up to this `seq`; all if absent or null.
    #[oai(nullable)]
    pub up_to_seq: Option<Seq>,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct UpdatedResp {
    /// Inbox entries whose status changed.
    pub updated: u64,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct SessionVo {
    pub session_id: String,
    pub session_type: String,
    /// The other user of a single session; null for a group.
    #[oai(nullable)]
    pub peer_id: Option<String>,
    /// The group of a group session; null for a single one.
    #[oai(nullable)]
    pub group_id: Option<String>,
    /// The group's name, or the peer's nickname; null if unknown.
    #[oai(nullable)]
    pub name: Option<String>,
    /// The newest message; null if there is none.
    #[oai(nullable)]
    pub last_message: Option<MessageVo>,
    pub unread_count: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct HistoryResp {
    pub messages: Vec<MessageVo>,
    pub has_more: bool,
}

/// The body of every REST error.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct ErrorBody {
    /// snake_case code: invalid_argument, unauthenticated, forbidden, not_found,
    /// conflict, payload_too_large, rate_limited, unavailable.
    pub code: String,
    pub message: String,
}

/// What `/user/queue/errors` receives for a rejected SEND.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendErrorVo {
    pub code: String,
    pub message: String,
    pub client_message_id: Option<String>,
}

/// Turns `validator` errors into one readable sentence.
pub fn validation_message(errors: &validator::ValidationErrors) -> String {
    let mut parts: Vec<String> = errors
        .field_errors()
        .into_iter()
        .flat_map(|(field, errs)| {
            errs.iter().map(move |e| match &e.message {
                Some(m) => m.to_string(),
                None => format!("{field} is invalid"),
            })
        })
        .collect();
    parts.sort();
    parts.join("; ")
}

/// The `MessageVo` JSON of one message for any number of recipients: it is
/// serialized once with the two fields that differ per recipient
/// (`inboxSeq`, `status`) left open, and each recipient's body is the
/// pieces joined around theirs. A 1,000-member group message used to cost
/// 1,000 `MessageVo`s (a dozen strings each) and 1,000 serializations,
/// all on the listener task the last member's push waits behind.
pub struct MessageVoTemplate {
    /// The message serialized with `inboxSeq` 0 and `status` "".
    json: Vec<u8>,
    /// Where the `0` of `inboxSeq` is (the head ends before it).
    seq_value_at: usize,
    /// Where the `""}` of `status` starts (the middle ends before it).
    status_value_at: usize,
}

impl MessageVoTemplate {
    /// `None` only if the serialized layout is not the one expected: serde
    /// writes fields in declaration order, so `inboxSeq` comes before any
    /// text a user wrote and `status` is the last field (held by a test).
    pub fn new(doc: &MessageDoc) -> Option<MessageVoTemplate> {
        const SEQ: &[u8] = b"\"inboxSeq\":0,";
        const STATUS_END: &[u8] = b"\"status\":\"\"}";
        let json = serde_json::to_vec(&MessageVo::new(doc, 0, "")).ok()?;
        let seq_value_at = json.windows(SEQ.len()).position(|w| w == SEQ)? + SEQ.len() - 2;
        // `status` must close the object, after `inboxSeq`'s value.
        if !json.ends_with(STATUS_END) || json.len() < seq_value_at + 1 + STATUS_END.len() {
            return None;
        }
        let status_value_at = json.len() - 3;
        Some(MessageVoTemplate {
            json,
            seq_value_at,
            status_value_at,
        })
    }

    /// The body for a recipient whose entry is `inbox_seq` with `status`:
    /// byte for byte `serde_json::to_vec(&MessageVo::new(doc, inbox_seq, status))`.
    pub fn body(&self, inbox_seq: i64, status: &str) -> Vec<u8> {
        let head = &self.json[..self.seq_value_at];
        let middle = &self.json[self.seq_value_at + 1..self.status_value_at];
        let mut out = Vec::with_capacity(head.len() + middle.len() + 40);
        out.extend_from_slice(head);
        // Writing into a Vec cannot fail; an i64 and a &str always serialize.
        let _ = serde_json::to_writer(&mut out, &inbox_seq);
        out.extend_from_slice(middle);
        let _ = serde_json::to_writer(&mut out, status);
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SessionType;

    #[test]
    fn stomp_bodies_are_json_objects() {
        // serde alone takes a struct as the array of its fields.
        let as_array: &[u8] = br#"[null, null, 1, "hi", "c-1", null]"#;
        assert!(from_stomp_body::<SendReq>(as_array).is_err());
        assert!(from_stomp_body::<StompAckReq>(br#"[["1"], null, null, "read"]"#).is_err());
        assert!(from_stomp_body::<SendReq>(b"null").is_err());
        // serde skips an unknown field's string without checking its UTF-8.
        assert!(from_stomp_body::<StompAckReq>(b"{\"x\":\"\x80\",\"ackType\":\"read\"}").is_err());
        let send: SendReq = from_stomp_body(
            br#"{"toUserId":"7","messageType":1,"content":"hi","clientMessageId":"c-1"}"#,
        )
        .expect("an object parses");
        assert_eq!(send.client_message_id.as_str(), "c-1");
        // A repeated key counts once, the last, as REST takes it.
        let ack: StompAckReq =
            from_stomp_body(br#"{"ackType":"received","sessionId":"7","ackType":"read"}"#)
                .expect("an object parses");
        assert_eq!(ack.ack_type, AckType::Read);
    }

    fn doc(content: &str, group: bool) -> MessageDoc {
        MessageDoc {
            message_id: 385_701_919_407_996_928,
            session_id: 42,
            session_type: if group {
                SessionType::Group
            } else {
                SessionType::Single
            },
            seq: 7,
            sender_id: 1,
            to_user_id: (!group).then_some(2),
            group_id: group.then_some(9),
            message_type: 1,
            content: content.to_string(),
            client_message_id: "c-\"inboxSeq\":0,".to_string(),
            client_ts: -5,
            server_ts: 1_700_000_000_000,
            adjusted_ts: 1_700_000_000_001,
            recalled: false,
        }
    }

    #[test]
    fn a_template_body_is_the_serialized_message_vo() {
        let contents = [
            "",
            "hello",
            "\"inboxSeq\":0,\"status\":\"\"}",
            "quote \" backslash \\ newline \n tab \t nul \u{0} emoji 😀",
        ];
        for content in contents {
            for group in [false, true] {
                let d = doc(content, group);
                let template = MessageVoTemplate::new(&d).expect("the layout is the expected one");
                for (inbox_seq, status) in [(1, "pending"), (i64::MAX, "read"), (-3, "a\"b")] {
                    let expected =
                        serde_json::to_vec(&MessageVo::new(&d, inbox_seq, status)).unwrap();
                    assert_eq!(
                        String::from_utf8(template.body(inbox_seq, status)).unwrap(),
                        String::from_utf8(expected).unwrap(),
                        "content {content:?}, group {group}"
                    );
                }
            }
        }
    }
}
