//! The JSON types of what clients send, each the one definition of its
//! rule.
//!
//! A type here gives, from the same code, the OpenAPI schema of every field
//! of its type ([`Wire::schema`]: pattern, lengths, bounds), the REST check
//! (poem-openapi's `ParseFromJSON` and `ParseFromParameter`) and the STOMP
//! check (serde's `Deserialize`, for `/app/send` and `/app/ack` bodies). So
//! the spec, REST and STOMP cannot disagree, and a request that fails a
//! rule is refused before any handler runs, as `400 invalid_argument`.
//!
//! They take only the JSON type the contract names. poem-openapi's own
//! `String` turns `42` and `false` into strings; ids in particular must be
//! strings, so that a JavaScript client that lost an id's precision (above
//! 2^53) fails loudly instead of addressing someone else.

use std::borrow::Cow;
use std::fmt;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use serde_json::Value;

use super::ids::{decimal_id, ID_PATTERN, ID_RULE};
use super::InboxStatus;
use crate::config::Config;

/// Largest page of `GET /messages/pull` and `GET /sessions/{id}/messages`.
pub const MAX_PAGE: u32 = 200;
/// Largest page of `GET /messages/unread` and `GET /inbox/sync`.
pub const MAX_BATCH: u32 = 500;
/// Most user ids one `GET /presence` may name.
pub const MAX_PRESENCE_IDS: usize = 100;

/// What a wire type is: its schema and its parse, for JSON and parameters.
pub trait Wire: Sized {
    /// Its name in poem-openapi's parse errors.
    const NAME: &'static str;
    /// Its OpenAPI schema, stating every rule [`Wire::from_json`] checks.
    fn schema() -> MetaSchema;
    /// Parses a JSON value: a REST body field or a STOMP body field.
    fn from_json(value: Value) -> Result<Self, String>;
    /// Parses a path or query parameter.
    fn from_param(raw: &str) -> Result<Self, String>;
    /// Its JSON form (for schema defaults and serialization).
    fn to_json(&self) -> Value;
}

/// Implements poem-openapi's and serde's traits for [`Wire`] types: the
/// orphan rule forbids one blanket impl of poem-openapi's traits.
macro_rules! impl_wire {
    ($({$($generics:tt)*})? $t:ty) => {
        impl$(<$($generics)*>)? Type for $t {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                Cow::Borrowed(<Self as Wire>::NAME)
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new(<Self as Wire>::schema()))
            }

            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(std::iter::once(self))
            }
        }

        impl$(<$($generics)*>)? ParseFromJSON for $t {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                <Self as Wire>::from_json(value.unwrap_or_default()).map_err(ParseError::custom)
            }
        }

        impl$(<$($generics)*>)? ParseFromParameter for $t {
            fn parse_from_parameter(raw: &str) -> ParseResult<Self> {
                <Self as Wire>::from_param(raw).map_err(ParseError::custom)
            }
        }

        impl$(<$($generics)*>)? ToJSON for $t {
            fn to_json(&self) -> Option<Value> {
                Some(<Self as Wire>::to_json(self))
            }
        }

        impl$(<$($generics)*>)? serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serde::Serialize::serialize(&<Self as Wire>::to_json(self), s)
            }
        }

        // Through a `Value`, so that STOMP runs exactly the REST parse.
        impl<'de, $($($generics)*)?> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = <Value as serde::Deserialize>::deserialize(d)?;
                <Self as Wire>::from_json(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The JSON type of `value`, for messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------
// ids
// ---------------------------------------------------------------------------

/// Parses one id of `what` (e.g. "a user id") from its string form.
fn id_from_str(what: &str, raw: &str) -> Result<u64, String> {
    decimal_id(raw).ok_or_else(|| format!("{what} must be {ID_RULE}"))
}

/// Parses one id of `what` from JSON: only a string will do.
fn id_from_json(what: &str, value: &Value) -> Result<u64, String> {
    match value {
        Value::String(s) => id_from_str(what, s),
        Value::Number(_) => Err(format!(
            "{what} must be a JSON string, not a number: ids are strings of decimal \
             digits (JavaScript loses the precision of larger numbers)"
        )),
        other => Err(format!(
            "{what} must be a JSON string of decimal digits, not {}",
            json_type(other)
        )),
    }
}

fn id_schema(description: &'static str) -> MetaSchema {
    MetaSchema {
        description: Some(description),
        pattern: Some(ID_PATTERN.to_string()),
        example: Some(Value::String("385701919407996928".into())),
        ..MetaSchema::new("string")
    }
}

macro_rules! id_types {
    ($($(#[$doc:meta])* $t:ident: $what:literal, $description:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $t(u64);

        impl $t {
            pub fn new(id: u64) -> Self {
                $t(id)
            }

            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl Wire for $t {
            const NAME: &'static str = stringify!($t);

            fn schema() -> MetaSchema {
                id_schema($description)
            }

            fn from_json(value: Value) -> Result<Self, String> {
                id_from_json($what, &value).map($t)
            }

            fn from_param(raw: &str) -> Result<Self, String> {
                id_from_str($what, raw).map($t)
            }

            fn to_json(&self) -> Value {
                Value::String(self.0.to_string())
            }
        }

        impl_wire!($t);
    )*};
}

id_types! {
    /// A user's id.
    UserId: "a user id", "A user id: a positive 64-bit integer as a string of decimal digits, no leading zeros.";
    /// A group's id.
    GroupId: "a group id", "A group id: a positive 64-bit integer as a string of decimal digits, no leading zeros.";
    /// A session's (conversation's) id.
    SessionId: "a session id", "A session id: a positive 64-bit integer as a string of decimal digits, no leading zeros.";
    /// A message's id.
    MessageId: "a message id", "A message id: a positive 64-bit integer as a string of decimal digits, no leading zeros.";
}

/// Parses a JSON array of ids of `what`, `min..=max` of them.
fn ids_from_json(
    field: &str,
    what: &str,
    value: &Value,
    (min, max): (usize, usize),
) -> Result<Vec<u64>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "{field} must be an array of ids, not {}",
            json_type(value)
        ));
    };
    if items.len() < min || items.len() > max {
        return Err(format!("{field} must hold {min}-{max} ids"));
    }
    items.iter().map(|v| id_from_json(what, v)).collect()
}

macro_rules! id_lists {
    ($($(#[$doc:meta])* $t:ident: $field:literal of $item:ident, $what:literal, $min:expr, $max:expr;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $t(Vec<u64>);

        impl $t {
            pub const MIN: usize = $min;
            pub const MAX: usize = $max;

            pub fn ids(&self) -> &[u64] {
                &self.0
            }
        }

        impl Wire for $t {
            const NAME: &'static str = $field;

            fn schema() -> MetaSchema {
                MetaSchema {
                    items: Some(Box::new(<$item as Type>::schema_ref())),
                    min_items: Some(Self::MIN),
                    max_items: Some(Self::MAX),
                    ..MetaSchema::new("array")
                }
            }

            fn from_json(value: Value) -> Result<Self, String> {
                ids_from_json($field, $what, &value, (Self::MIN, Self::MAX)).map($t)
            }

            fn from_param(raw: &str) -> Result<Self, String> {
                Err(format!("{} must be a JSON array, not the parameter {raw:?}", $field))
            }

            fn to_json(&self) -> Value {
                Value::Array(self.0.iter().map(|id| Value::String(id.to_string())).collect())
            }
        }

        impl_wire!($t);
    )*};
}

id_lists! {
    /// `memberIds` of `POST /groups`: the first members besides the creator.
    MemberIds: "memberIds" of UserId, "a user id", 0, 1000;
    /// `userIds` of `POST /groups/{groupId}/members`.
    UserIds: "userIds" of UserId, "a user id", 1, 1000;
    /// `messageIds` of an ack.
    MessageIds: "messageIds" of MessageId, "a message id", 1, 500;
}

/// `userIds` of `GET /presence`: 1-100 ids, comma-separated (blanks
/// around an id are allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdList(Vec<u64>);

impl UserIdList {
    pub fn ids(&self) -> &[u64] {
        &self.0
    }

    /// The pattern of the whole list: what [`Wire::from_param`] accepts.
    fn pattern() -> String {
        let id = ID_PATTERN.trim_start_matches('^').trim_end_matches('$');
        let more = MAX_PRESENCE_IDS - 1;
        format!("^ *{id} *(, *{id} *){{0,{more}}}$")
    }
}

impl Wire for UserIdList {
    const NAME: &'static str = "userIds";

    fn schema() -> MetaSchema {
        MetaSchema {
            description: Some("User ids, comma-separated (blanks around them are allowed)."),
            pattern: Some(Self::pattern()),
            example: Some(Value::String(
                "385701919407996928,385701919407996929".into(),
            )),
            ..MetaSchema::new("string")
        }
    }

    fn from_json(value: Value) -> Result<Self, String> {
        match value {
            Value::String(s) => Self::from_param(&s),
            other => Err(format!(
                "userIds must be a string, not {}",
                json_type(&other)
            )),
        }
    }

    fn from_param(raw: &str) -> Result<Self, String> {
        let ids = raw
            .split(',')
            .map(|part| id_from_str("each of userIds", part.trim_matches(' ')))
            .collect::<Result<Vec<u64>, String>>()?;
        if ids.len() > MAX_PRESENCE_IDS {
            return Err(format!("userIds must hold 1-{MAX_PRESENCE_IDS} ids"));
        }
        Ok(UserIdList(ids))
    }

    fn to_json(&self) -> Value {
        let ids: Vec<String> = self.0.iter().map(u64::to_string).collect();
        Value::String(ids.join(","))
    }
}

impl_wire!(UserIdList);

// ---------------------------------------------------------------------------
// text
// ---------------------------------------------------------------------------

/// The rule of a text field: its length in characters (Unicode scalar
/// values, as OpenAPI's `minLength`/`maxLength` count them) and, for
/// usernames, its characters.
struct TextRule {
    field: &'static str,
    min: usize,
    max: usize,
    /// The characters allowed, if not any.
    chars: Option<Charset>,
}

/// The characters a text field allows: a test, and the same as a regex
/// character class for the schema's `pattern`.
#[derive(Clone, Copy)]
struct Charset {
    allowed: fn(char) -> bool,
    class: &'static str,
}

impl TextRule {
    fn check(&self, value: &str) -> Result<(), String> {
        let TextRule {
            field, min, max, ..
        } = *self;
        let len = value.chars().count();
        if let Some(Charset { allowed, class }) = self.chars {
            if !value.chars().all(allowed) || len < min || len > max {
                return Err(format!("{field} must be {min}-{max} characters of {class}"));
            }
        } else if len < min || len > max {
            return Err(format!("{field} must be {min}-{max} characters"));
        }
        Ok(())
    }

    fn parse(&self, value: Value) -> Result<String, String> {
        match value {
            Value::String(s) => self.check(&s).map(|()| s),
            other => Err(format!(
                "{} must be a JSON string, not {}",
                self.field,
                json_type(&other)
            )),
        }
    }

    fn schema(&self, description: &'static str) -> MetaSchema {
        MetaSchema {
            description: Some(description),
            min_length: Some(self.min),
            max_length: Some(self.max),
            pattern: self
                .chars
                .map(|c| format!("^{}{{{},{}}}$", c.class, self.min, self.max)),
            ..MetaSchema::new("string")
        }
    }
}

fn username_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

macro_rules! text_types {
    ($($(#[$doc:meta])* $t:ident: $rule:expr, $description:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $t(String);

        impl $t {
            const RULE: TextRule = $rule;

            /// Checks `value` as a client's would be.
            pub fn new(value: impl Into<String>) -> Result<Self, String> {
                let value = value.into();
                Self::RULE.check(&value).map(|()| $t(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::ops::Deref for $t {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Wire for $t {
            const NAME: &'static str = Self::RULE.field;

            fn schema() -> MetaSchema {
                Self::RULE.schema($description)
            }

            fn from_json(value: Value) -> Result<Self, String> {
                Self::RULE.parse(value).map($t)
            }

            fn from_param(raw: &str) -> Result<Self, String> {
                Self::new(raw)
            }

            fn to_json(&self) -> Value {
                Value::String(self.0.clone())
            }
        }

        impl_wire!($t);
    )*};
}

text_types! {
    /// A username at registration.
    Username: TextRule {
        field: "username",
        min: 3,
        max: 32,
        chars: Some(Charset { allowed: username_char, class: "[A-Za-z0-9_.-]" }),
    }, "Letters, digits, `_`, `.` and `-`; unique.";
    /// A password at registration.
    Password: TextRule { field: "password", min: 8, max: 128, chars: None },
        "Any characters.";
    /// A nickname.
    Nickname: TextRule { field: "nickname", min: 1, max: 64, chars: None },
        "The name shown to others; need not be unique.";
    /// A username at login: anything a registration might have used, so a
    /// wrong one is 401, not 400.
    LoginName: TextRule { field: "username", min: 1, max: 64, chars: None },
        "The username.";
    /// A password at login.
    LoginPassword: TextRule { field: "password", min: 1, max: 256, chars: None },
        "The password.";
    /// A group's name.
    GroupName: TextRule { field: "name", min: 1, max: 64, chars: None },
        "The group's name.";
    /// The sender's idempotency key of a send.
    ClientMessageId: TextRule { field: "clientMessageId", min: 1, max: 64, chars: None },
        "The sender's idempotency key: a repeat of a send with the same key creates nothing \
         new and answers the original's `SendAck`.";
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

impl fmt::Debug for LoginPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginPassword(..)")
    }
}

macro_rules! debug_as_string {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    )*};
}

debug_as_string!(Username, Nickname, LoginName, GroupName, ClientMessageId);

/// A message's content: a non-empty JSON string. Its size limit is the
/// setting `maxContentBytes` (in UTF-8 bytes; larger is `413
/// payload_too_large`), checked where the configuration is known.
#[derive(Clone, PartialEq, Eq)]
pub struct Content(String);

impl Content {
    pub fn new(value: impl Into<String>) -> Result<Self, String> {
        let value = value.into();
        if value.is_empty() {
            return Err("content must not be empty".into());
        }
        Ok(Content(value))
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::ops::Deref for Content {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Content({} bytes)", self.0.len())
    }
}

impl Wire for Content {
    const NAME: &'static str = "content";

    fn schema() -> MetaSchema {
        MetaSchema {
            description: Some(
                "Not empty, and at most `maxContentBytes` UTF-8 bytes (a setting; `maxLength` \
                 is its default): larger content is `413 payload_too_large`.",
            ),
            min_length: Some(1),
            max_length: Some(Config::default().max_content_bytes),
            ..MetaSchema::new("string")
        }
    }

    fn from_json(value: Value) -> Result<Self, String> {
        match value {
            Value::String(s) => Content::new(s),
            other => Err(format!(
                "content must be a JSON string, not {}",
                json_type(&other)
            )),
        }
    }

    fn from_param(raw: &str) -> Result<Self, String> {
        Content::new(raw)
    }

    fn to_json(&self) -> Value {
        Value::String(self.0.clone())
    }
}

impl_wire!(Content);

// ---------------------------------------------------------------------------
// numbers and enums
// ---------------------------------------------------------------------------

/// Parses an integer in `min..=max` from JSON: only a JSON integer will do.
fn int_from_json(field: &str, value: &Value, (min, max): (i64, i64)) -> Result<i64, String> {
    match value.as_i64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ if value.is_number() => Err(format!("{field} must be an integer {min} to {max}")),
        _ => Err(format!(
            "{field} must be a JSON integer, not {}",
            json_type(value)
        )),
    }
}

fn int_from_param(field: &str, raw: &str, bounds: (i64, i64)) -> Result<i64, String> {
    let n: i64 = raw
        .parse()
        .map_err(|_| format!("{field} must be an integer, not {raw:?}"))?;
    int_from_json(field, &Value::from(n), bounds)
}

fn int_schema(format: &'static str, (min, max): (i64, i64)) -> MetaSchema {
    MetaSchema {
        minimum: Some(min as f64),
        maximum: (max < i64::MAX).then_some(max as f64),
        ..MetaSchema::new_with_format("integer", format)
    }
}

/// `messageType` of a send: 1 text, 2 image (content: a URL or JSON),
/// 3 voice, 4 file, 5 custom JSON. (6, system messages, only the server
/// creates.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientMessageType(i32);

impl ClientMessageType {
    const BOUNDS: (i64, i64) = (1, 5);

    pub fn new(value: i32) -> Result<Self, String> {
        int_from_json("messageType", &Value::from(value), Self::BOUNDS).map(|_| Self(value))
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

impl Wire for ClientMessageType {
    const NAME: &'static str = "messageType";

    fn schema() -> MetaSchema {
        MetaSchema {
            description: Some(
                "1 text, 2 image (content: a URL or JSON), 3 voice, 4 file, 5 custom JSON.",
            ),
            ..int_schema("int32", Self::BOUNDS)
        }
    }

    fn from_json(value: Value) -> Result<Self, String> {
        // Within 1..=5, so the cast cannot truncate.
        int_from_json("messageType", &value, Self::BOUNDS).map(|n| Self(n as i32))
    }

    fn from_param(raw: &str) -> Result<Self, String> {
        int_from_param("messageType", raw, Self::BOUNDS).map(|n| Self(n as i32))
    }

    fn to_json(&self) -> Value {
        Value::from(self.0)
    }
}

impl_wire!(ClientMessageType);

/// A `seq` or `inboxSeq` bound given by a client: 0 or more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seq(i64);

impl Seq {
    const BOUNDS: (i64, i64) = (0, i64::MAX);

    pub fn get(self) -> i64 {
        self.0
    }
}

impl Wire for Seq {
    const NAME: &'static str = "seq";

    fn schema() -> MetaSchema {
        int_schema("int64", Self::BOUNDS)
    }

    fn from_json(value: Value) -> Result<Self, String> {
        int_from_json("a seq", &value, Self::BOUNDS).map(Seq)
    }

    fn from_param(raw: &str) -> Result<Self, String> {
        int_from_param("a seq", raw, Self::BOUNDS).map(Seq)
    }

    fn to_json(&self) -> Value {
        Value::from(self.0)
    }
}

impl_wire!(Seq);

/// A page size: 1 to `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit<const MAX: u32>(u32);

impl<const MAX: u32> Limit<MAX> {
    /// `n`, brought within 1..=MAX (for defaults).
    pub const fn clamped(n: u32) -> Self {
        Limit(if n == 0 {
            1
        } else if n > MAX {
            MAX
        } else {
            n
        })
    }

    pub fn get(self) -> usize {
        self.0 as usize
    }

    const fn bounds() -> (i64, i64) {
        (1, MAX as i64)
    }
}

impl<const MAX: u32> Wire for Limit<MAX> {
    const NAME: &'static str = "limit";

    fn schema() -> MetaSchema {
        int_schema("uint32", Self::bounds())
    }

    fn from_json(value: Value) -> Result<Self, String> {
        // Within 1..=MAX, so the cast cannot truncate.
        int_from_json("the page size", &value, Self::bounds()).map(|n| Limit(n as u32))
    }

    fn from_param(raw: &str) -> Result<Self, String> {
        int_from_param("the page size", raw, Self::bounds()).map(|n| Limit(n as u32))
    }

    fn to_json(&self) -> Value {
        Value::from(self.0)
    }
}

impl_wire!({const MAX: u32} Limit<MAX>);

/// `ackType`: `received` (the device has it) or `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckType {
    Received,
    Read,
}

impl AckType {
    const NAMES: [(&'static str, AckType); 2] =
        [("received", AckType::Received), ("read", AckType::Read)];

    /// The inbox status an ack of this type raises entries to.
    pub fn status(self) -> InboxStatus {
        match self {
            AckType::Received => InboxStatus::Delivered,
            AckType::Read => InboxStatus::Read,
        }
    }

    fn name(self) -> &'static str {
        match self {
            AckType::Received => "received",
            AckType::Read => "read",
        }
    }
}

impl Wire for AckType {
    const NAME: &'static str = "ackType";

    fn schema() -> MetaSchema {
        MetaSchema {
            enum_items: Self::NAMES
                .iter()
                .map(|(name, _)| Value::String((*name).into()))
                .collect(),
            ..MetaSchema::new("string")
        }
    }

    fn from_json(value: Value) -> Result<Self, String> {
        match value {
            Value::String(s) => Self::from_param(&s),
            other => Err(format!(
                "ackType must be a JSON string, not {}",
                json_type(&other)
            )),
        }
    }

    fn from_param(raw: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(name, _)| *name == raw)
            .map(|(_, t)| *t)
            .ok_or_else(|| "ackType must be `received` or `read`".to_string())
    }

    fn to_json(&self) -> Value {
        Value::String(self.name().into())
    }
}

impl_wire!(AckType);

#[cfg(test)]
mod tests {
    use poem_openapi::validation::{Pattern, Validator};
    use serde_json::json;

    use super::*;

    fn rest<T: ParseFromJSON>(v: Value) -> Result<T, String> {
        T::parse_from_json(Some(v)).map_err(|e| e.into_message())
    }

    fn stomp<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// REST and STOMP agree on `v`, and the spec's pattern (if any) too.
    fn agree<T>(v: Value) -> bool
    where
        T: ParseFromJSON + serde::de::DeserializeOwned + Wire,
    {
        let r = rest::<T>(v.clone()).is_ok();
        assert_eq!(r, stomp::<T>(v.clone()).is_ok(), "{}: {v}", T::NAME);
        if let (Some(p), Value::String(s)) = (T::schema().pattern, &v) {
            let pattern: &'static str = Box::leak(p.into_boxed_str());
            assert_eq!(r, Pattern::new(pattern).check(s), "{}: {v}", T::NAME);
        }
        r
    }

    #[test]
    fn ids_are_strings_of_digits_without_leading_zeros() {
        for ok in ["1", "42", "385701919407996928", "9999999999999999999"] {
            assert!(agree::<UserId>(json!(ok)), "{ok}");
        }
        for bad in [
            json!("0"),
            json!("0123"),
            json!(""),
            json!("12a"),
            json!("-1"),
            json!("+1"),
            json!(" 1"),
            json!("1\n"),
            json!("10000000000000000000"),
            json!(42),
            json!(false),
            json!(null),
            json!(["1"]),
        ] {
            assert!(!agree::<UserId>(bad.clone()), "{bad}");
        }
        let number = rest::<GroupId>(json!(385701919407996928u64)).unwrap_err();
        assert!(number.contains("not a number"), "{number}");
        let zero = rest::<GroupId>(json!("0")).unwrap_err();
        assert!(
            zero.contains("positive") && zero.contains("leading zeros"),
            "{zero}"
        );
        assert_eq!(
            GroupId::from_param("0123"),
            GroupId::from_json(json!("0123"))
        );
    }

    #[test]
    fn text_fields_take_only_strings_within_their_rule() {
        assert!(agree::<Username>(json!("alice_1.x-y")));
        assert!(agree::<Username>(json!("a".repeat(32))));
        for bad in [
            json!("ab"),
            json!("a".repeat(33)),
            json!("bad name"),
            json!("bäd"),
            json!("abc\n"),
            json!(123),
            json!(true),
        ] {
            assert!(!agree::<Username>(bad.clone()), "{bad}");
        }
        assert!(
            agree::<Nickname>(json!("é".repeat(64))),
            "characters, not bytes"
        );
        assert!(!agree::<Nickname>(json!("n".repeat(65))));
        assert!(!agree::<Nickname>(json!("")));
        assert!(!agree::<GroupName>(json!(false)));
        assert!(!agree::<Content>(json!(42)));
        assert!(!agree::<Content>(json!("")));
        assert!(agree::<Content>(json!("x")));
        assert!(!agree::<ClientMessageId>(json!("k".repeat(65))));
        assert!(!agree::<Password>(json!("1234567")));
    }

    #[test]
    fn numbers_and_enums() {
        assert!(agree::<ClientMessageType>(json!(5)));
        for bad in [json!(0), json!(6), json!("1"), json!(1.5), json!(null)] {
            assert!(!agree::<ClientMessageType>(bad.clone()), "{bad}");
        }
        assert!(agree::<Seq>(json!(0)));
        assert!(!agree::<Seq>(json!(-1)));
        assert!(agree::<AckType>(json!("read")));
        assert!(!agree::<AckType>(json!("delivered")));
        assert!(!agree::<AckType>(json!(1)));
        assert_eq!(Limit::<200>::from_param("200").map(Limit::get), Ok(200));
        assert!(Limit::<200>::from_param("201").is_err());
        assert!(Limit::<200>::from_param("0").is_err());
    }

    #[test]
    fn id_lists_count_their_ids() {
        assert!(agree::<MessageIds>(json!(["1", "2"])));
        assert!(!agree::<MessageIds>(json!([])));
        assert!(!agree::<MessageIds>(json!([1])));
        let many: Vec<String> = (1..=501).map(|i| i.to_string()).collect();
        assert!(!agree::<MessageIds>(json!(many)));
        assert!(agree::<MemberIds>(json!([])));
    }

    #[test]
    fn presence_lists_match_their_pattern() {
        let pattern: &'static str = Box::leak(UserIdList::pattern().into_boxed_str());
        let hundred = (1..=100)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let too_many = format!("{hundred},101");
        for raw in [
            "1",
            "1, 2,3",
            " 7 ",
            hundred.as_str(),
            too_many.as_str(),
            "",
            "1,,2",
            "1,x",
            "01",
            "1,\t2",
        ] {
            let ok = UserIdList::from_param(raw).is_ok();
            assert_eq!(ok, Pattern::new(pattern).check(&raw), "{raw:?}");
        }
        let ids = UserIdList::from_param("1, 2,3").unwrap();
        assert_eq!(ids.ids(), &[1, 2, 3]);
    }
}
