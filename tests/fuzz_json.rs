//! Fuzz target: the JSON request bodies, through the parse the server
//! runs on them.
//!
//! Every request DTO of the REST API goes through poem-openapi's real
//! `Json<T>` extractor (what a REST handler gets), and the STOMP bodies
//! through `dto::from_stomp_body`, which the connection calls
//! (`/app/send`: `SendReq`; `/app/ack`: `StompAckReq`). The request types'
//! fields check their rules as they are parsed (`model::wire`), so what
//! parses is what a handler acts on.
//!
//! * `json_values_fuzz`: arbitrary JSON values, most shaped like one of
//!   the DTOs with each field valid, near a limit, or of another type.
//! * `json_bytes_fuzz`: arbitrary bytes (mutated corpus entries and
//!   noise: broken JSON, duplicate keys, deep nesting, odd numbers).
//! * `json_corpus_replays`: every file of `tests/fuzz/corpus/json/`;
//!   a file named `<dto>-ok-*.json` must be accepted as that DTO.
//! * `json_rest_api_fuzz`: the REST operations of a node running in this
//!   process, with real users, a group and a message to name, so that
//!   requests get past the parse: what the handlers and services check
//!   after it (exactly one recipient, content within `maxContentBytes`, no
//!   single chat with oneself) is checked on every 2xx; no answer is 5xx,
//!   and every error is `{code, message}` with the contract's status.
//!
//! The oracle is the contract written out below as a table ([`DTOS`]),
//! from PROTOCOL.md and the OpenAPI spec, not from the server's code:
//! whatever the server accepts must satisfy it (ids are JSON strings of
//! decimal digits, lengths and bounds within range, enums from their list,
//! required fields present, the body an object), and the server must take
//! each field as sent (no number turned into a string, no trimming: what
//! the parsed request serializes back to equals the input). No input may
//! panic, and the REST and STOMP parses of `SendReq` must agree.
//!
//! Found by it: `/app/send` and `/app/ack` took a JSON array of the
//! fields in order as the body (serde's derived `Deserialize` accepts
//! that), and took invalid UTF-8 inside an unknown field's string; both
//! are refused since `dto::from_stomp_body` (corpus: `send-as-array.json`,
//! `stomp-ack-*`).

mod fuzz;

use std::cell::Cell;

use herald::model::dto::{
    from_stomp_body, AckReq, AddMembersReq, CreateGroupReq, LoginReq, MarkReadReq, RegisterReq,
    SendReq, StompAckReq,
};
use poem_openapi::payload::{Json, ParsePayload};
use poem_openapi::types::{ParseFromJSON, ToJSON};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};

use fuzz::Tally;

const CORPUS: &str = "json";

// ---------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------

/// What a field must be.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A JSON string of decimal digits naming a positive 64-bit integer,
    /// without leading zeros.
    Id,
    /// A JSON array of `min..=max` ids.
    Ids { min: usize, max: usize },
    /// A JSON string of `min..=max` characters (Unicode scalar values, as
    /// OpenAPI counts them); `username`: only `[A-Za-z0-9_.-]`.
    Text {
        min: usize,
        max: usize,
        username: bool,
    },
    /// A JSON integer within `min..=max`.
    Int { min: i64, max: i64 },
    /// A JSON string, one of these.
    Enum(&'static [&'static str]),
    /// A message's content: a non-empty JSON string. Its size limit
    /// (`maxContentBytes`, in UTF-8 bytes) is the service's to check.
    Content,
}

struct Field {
    name: &'static str,
    kind: Kind,
    /// Optional fields may also be absent or null.
    required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

const ID: Kind = Kind::Id;
const ACK_TYPE: Kind = Kind::Enum(&["received", "read"]);
const SEQ: Kind = Kind::Int {
    min: 0,
    max: i64::MAX,
};

const fn text(min: usize, max: usize) -> Kind {
    Kind::Text {
        min,
        max,
        username: false,
    }
}

/// A parse of a body: what the parsed request serializes back to (REST),
/// or nothing (STOMP), or why it was refused.
type Parse<T> = fn(&[u8]) -> Result<T, String>;

/// A request body: its fields and the parses the server runs on it.
struct Dto {
    name: &'static str,
    fields: &'static [Field],
    /// The REST handler's parse.
    rest: Option<Parse<Value>>,
    /// The STOMP connection's parse.
    stomp: Option<Parse<()>>,
}

/// Every JSON request body of PROTOCOL.md sections 3 and 4.
const DTOS: &[Dto] = &[
    Dto {
        name: "register",
        fields: &[
            req(
                "username",
                Kind::Text {
                    min: 3,
                    max: 32,
                    username: true,
                },
            ),
            req("password", text(8, 128)),
            req("nickname", text(1, 64)),
        ],
        rest: Some(rest::<RegisterReq>),
        stomp: None,
    },
    Dto {
        name: "login",
        // Only present and a string: a wrong one is 401, not 400.
        fields: &[req("username", text(1, 64)), req("password", text(1, 256))],
        rest: Some(rest::<LoginReq>),
        stomp: None,
    },
    Dto {
        name: "create-group",
        fields: &[
            req("name", text(1, 64)),
            opt("memberIds", Kind::Ids { min: 0, max: 1000 }),
        ],
        rest: Some(rest::<CreateGroupReq>),
        stomp: None,
    },
    Dto {
        name: "add-members",
        fields: &[req("userIds", Kind::Ids { min: 1, max: 1000 })],
        rest: Some(rest::<AddMembersReq>),
        stomp: None,
    },
    Dto {
        name: "send",
        // Exactly one of toUserId and groupId, and content within
        // maxContentBytes, are the service's to check (it knows the
        // configuration); here each is only well-formed.
        fields: &[
            opt("toUserId", ID),
            opt("groupId", ID),
            req("messageType", Kind::Int { min: 1, max: 5 }),
            req("content", Kind::Content),
            req("clientMessageId", text(1, 64)),
            opt(
                "clientTimestamp",
                Kind::Int {
                    min: i64::MIN,
                    max: i64::MAX,
                },
            ),
        ],
        rest: Some(rest::<SendReq>),
        stomp: Some(stomp::<SendReq>),
    },
    Dto {
        name: "ack",
        fields: &[
            req("messageIds", Kind::Ids { min: 1, max: 500 }),
            req("ackType", ACK_TYPE),
        ],
        rest: Some(rest::<AckReq>),
        stomp: None,
    },
    Dto {
        name: "mark-read",
        fields: &[req("sessionId", ID), opt("upToSeq", SEQ)],
        rest: Some(rest::<MarkReadReq>),
        stomp: None,
    },
    Dto {
        name: "stomp-ack",
        // `{messageIds, ackType}` or `{sessionId, upToSeq, ackType: "read"}`;
        // which form it is, the connection decides after the parse.
        fields: &[
            opt("messageIds", Kind::Ids { min: 1, max: 500 }),
            opt("sessionId", ID),
            opt("upToSeq", SEQ),
            req("ackType", ACK_TYPE),
        ],
        rest: None,
        stomp: Some(stomp::<StompAckReq>),
    },
];

fn dto(name: &str) -> &'static Dto {
    DTOS.iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no DTO {name}"))
}

fn check_kind(kind: Kind, v: &Value) -> Result<(), String> {
    match kind {
        Kind::Id => {
            let Value::String(s) = v else {
                return Err(format!("id {v} is not a JSON string"));
            };
            let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            match s.parse::<u64>() {
                Ok(n) if digits && n > 0 && n.to_string() == *s => Ok(()),
                _ => Err(format!("id {s:?} is not a positive 64-bit decimal")),
            }
        }
        Kind::Ids { min, max } => {
            let Value::Array(items) = v else {
                return Err(format!("{v} is not an array"));
            };
            if items.len() < min || items.len() > max {
                return Err(format!("{} ids, not {min}-{max}", items.len()));
            }
            items.iter().try_for_each(|i| check_kind(Kind::Id, i))
        }
        Kind::Text { min, max, username } => {
            let Value::String(s) = v else {
                return Err(format!("{v} is not a JSON string"));
            };
            let n = s.chars().count();
            if n < min || n > max {
                return Err(format!("{n} characters, not {min}-{max}"));
            }
            if username
                && !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                return Err(format!("username {s:?} has other characters"));
            }
            Ok(())
        }
        Kind::Int { min, max } => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(()),
            _ => Err(format!("{v} is not an integer {min} to {max}")),
        },
        Kind::Enum(names) => match v {
            Value::String(s) if names.contains(&s.as_str()) => Ok(()),
            _ => Err(format!("{v} is not one of {names:?}")),
        },
        Kind::Content => match v {
            Value::String(s) if !s.is_empty() => Ok(()),
            _ => Err(format!("{v} is not a non-empty JSON string")),
        },
    }
}

/// Whether `v` satisfies the contract of `dto` (field by field).
fn contract(dto: &Dto, v: &Value) -> Result<(), String> {
    let Value::Object(obj) = v else {
        return Err(format!("the body is not a JSON object: {v}"));
    };
    for f in dto.fields {
        match obj.get(f.name) {
            None | Some(Value::Null) if !f.required => {}
            None => return Err(format!("{} is missing", f.name)),
            Some(value) => check_kind(f.kind, value).map_err(|e| format!("{}: {e}", f.name))?,
        }
    }
    Ok(())
}

/// The server took every field as sent: the parsed request, serialized
/// back, has the input's value for each field the input gave.
fn taken_as_sent(dto: &Dto, input: &Value, parsed: &Value) -> Result<(), String> {
    for f in dto.fields {
        match input.get(f.name) {
            None | Some(Value::Null) => {}
            Some(sent) => {
                let got = parsed.get(f.name);
                if got != Some(sent) {
                    return Err(format!("{} sent as {sent}, parsed as {got:?}", f.name));
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The server's parses
// ---------------------------------------------------------------------------

/// A REST body through poem-openapi's `Json<T>` extractor, as a handler
/// taking `Json<T>` gets it.
fn rest<T: ParseFromJSON + ToJSON>(body: &[u8]) -> Result<Value, String> {
    let (req, mut body) = poem::Request::builder()
        .content_type("application/json")
        .body(body.to_vec())
        .split();
    let parsed = runtime().block_on(Json::<T>::from_request(&req, &mut body));
    parsed
        .map(|Json(t)| t.to_json().unwrap_or(Value::Null))
        .map_err(|e| e.to_string())
}

/// A STOMP body, as the connection parses it.
fn stomp<T: DeserializeOwned>(body: &[u8]) -> Result<(), String> {
    from_stomp_body::<T>(body)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

/// What every parse of `body` did, checked against the contract.
#[derive(Debug, Default)]
struct Verdict {
    rest: Option<bool>,
    stomp: Option<bool>,
}

fn check_body(dto: &Dto, body: &[u8]) -> Result<Verdict, TestCaseError> {
    // How the REST extractor reads a body (empty is null); for an accepted
    // STOMP body, there are no duplicate keys, so this is also what serde
    // saw.
    let as_value = || -> Result<Value, String> {
        if body.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
        }
    };
    let mut verdict = Verdict::default();
    if let Some(parse) = dto.rest {
        let parsed = parse(body);
        verdict.rest = Some(parsed.is_ok());
        if let Ok(parsed) = parsed {
            let input = as_value().map_err(|e| {
                TestCaseError::fail(format!("{}: REST accepted what is not JSON: {e}", dto.name))
            })?;
            if let Err(e) = contract(dto, &input).and_then(|()| taken_as_sent(dto, &input, &parsed))
            {
                return Err(TestCaseError::fail(format!(
                    "{}: REST accepted {input}: {e}",
                    dto.name
                )));
            }
        }
    }
    if let Some(parse) = dto.stomp {
        let parsed = parse(body);
        verdict.stomp = Some(parsed.is_ok());
        if parsed.is_ok() {
            let input = as_value().map_err(|e| {
                TestCaseError::fail(format!(
                    "{}: STOMP accepted what is not JSON: {e}",
                    dto.name
                ))
            })?;
            if let Err(e) = contract(dto, &input) {
                return Err(TestCaseError::fail(format!(
                    "{}: STOMP accepted {input}: {e}",
                    dto.name
                )));
            }
        }
    }
    Ok(verdict)
}

/// Every DTO's parses of `body`; a JSON value (no duplicate keys) must get
/// the same answer from REST and STOMP where both take it.
fn check_all(body: &[u8], is_value: bool, tally: &Tally) -> Result<(), TestCaseError> {
    for dto in DTOS {
        let v = check_body(dto, body)?;
        if let (Some(r), Some(s)) = (v.rest, v.stomp) {
            if is_value {
                prop_assert_eq!(
                    r,
                    s,
                    "{}: REST and STOMP disagree on {}",
                    dto.name,
                    String::from_utf8_lossy(body)
                );
            }
        }
        if v.rest == Some(true) || v.stomp == Some(true) {
            tally.hit(dto.name);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// Ids and words that mean something to the server under test (real
/// users, groups, messages; a real username and password), so that
/// requests can get past the checks that look them up.
#[derive(Debug, Clone, Default)]
struct Known {
    /// Every id below.
    ids: Vec<String>,
    /// Usernames and the password.
    words: Vec<String>,
    /// (username, password) of each user; the first is the caller.
    logins: Vec<(String, String)>,
    /// The caller's id first, then the other user's.
    users: Vec<String>,
    group: String,
    sessions: Vec<String>,
    messages: Vec<String>,
}

impl Known {
    /// Made-up ids and credentials, for the parses alone.
    fn offline() -> Known {
        let ids: Vec<String> = [
            "385701919407996928",
            "7",
            "9223372036854775807",
            "42",
            "1",
            "2",
        ]
        .map(String::from)
        .to_vec();
        Known {
            users: ids[..2].to_vec(),
            group: ids[2].clone(),
            sessions: vec![ids[3].clone()],
            messages: vec![ids[4].clone(), ids[5].clone()],
            ids,
            words: vec!["alice".into(), "password1".into()],
            logins: vec![("alice".into(), "password1".into())],
        }
    }
}

fn id_string(known: &Known) -> BoxedStrategy<String> {
    let known = if known.ids.is_empty() {
        vec!["1".to_string()]
    } else {
        known.ids.clone()
    };
    prop_oneof![
        4 => select(known),
        4 => "[1-9][0-9]{0,18}",
        1 => "[0-9]{0,22}",
        2 => select(vec![
            "0", "00", "01", "007", "1", "-1", "+1", " 1", "1 ", "1.0", "1e3", "0x1F", "",
            "\u{ff11}", "9223372036854775807", "9223372036854775808", "9999999999999999999",
            "10000000000000000000", "18446744073709551615", "18446744073709551616",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

/// A character, mostly from the username class, often not.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => select(('a'..='z').chain('A'..='Z').chain('0'..='9').chain("_.-".chars()).collect::<Vec<_>>()),
        2 => select(vec![' ', '\t', '\n', '\0', '"', '\\', 'é', '€', '😀', '\u{200b}', '\u{7f}']),
        1 => any::<char>(),
    ]
}

/// A string of about `n` characters (a few either side).
fn string_near(n: usize) -> impl Strategy<Value = String> {
    (select(vec![-1i64, 0, 0, 1]), any_char(), any::<bool>()).prop_flat_map(move |(d, c, same)| {
        let len = (n as i64 + d).max(0) as usize;
        if same {
            // One character repeated: cheap at any length, and a
            // multi-byte one tells characters from bytes.
            Just(std::iter::repeat_n(c, len).collect::<String>()).boxed()
        } else {
            prop::collection::vec(any_char(), len)
                .prop_map(|cs| cs.into_iter().collect())
                .boxed()
        }
    })
}

fn text_for(min: usize, max: usize, known: &Known) -> BoxedStrategy<String> {
    let mut ends = vec![min, min + 1];
    if max < 100_000 {
        ends.push(max);
    }
    let mut words = known.words.clone();
    words.push("alice".into());
    prop_oneof![
        2 => select(ends).prop_flat_map(string_near),
        2 => prop::collection::vec(any_char(), 0..24).prop_map(|cs| cs.into_iter().collect()),
        1 => select(words),
    ]
    .boxed()
}

/// Content: short, or about the default `maxContentBytes` in bytes or in
/// characters (a two-byte character tells them apart).
fn content() -> BoxedStrategy<String> {
    let max = herald::config::Config::default().max_content_bytes;
    prop_oneof![
        3 => prop::collection::vec(any_char(), 0..24).prop_map(|cs| cs.into_iter().collect()),
        1 => (select(vec![max - 1, max, max + 1]), select(vec!['x', 'é']))
            .prop_map(|(n, c)| std::iter::repeat_n(c, n / c.len_utf8()).collect()),
        1 => (select(vec![max - 1, max, max + 1]), select(vec!['x', 'é']))
            .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
    ]
    .boxed()
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-3i64..8).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        select(vec![i64::MIN, i64::MAX, -1, 0]).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        select(vec![0.0, -0.0, 1.0, 1.5, 5.0, 1e300, -1e-300])
            .prop_map(|f| { Number::from_f64(f).map_or(Value::Null, Value::Number) }),
    ]
}

fn ids_for(min: usize, max: usize, known: &Known) -> BoxedStrategy<Value> {
    let id = prop_oneof![
        9 => id_string(known).prop_map(Value::String),
        1 => json_value(),
    ];
    let ids = move |n: usize| prop::collection::vec(id.clone(), n).prop_map(Value::Array);
    let sizes = vec![0usize, 1, 2, 3, min, max.saturating_sub(1), max, max + 1];
    select(sizes).prop_flat_map(ids).boxed()
}

/// A value for a field of `kind`: most often valid or nearly so.
fn field_value(kind: Kind, known: &Known) -> BoxedStrategy<Value> {
    let plausible = match kind {
        Kind::Id => prop_oneof![
            4 => id_string(known).prop_map(Value::String),
            1 => number(),
        ]
        .boxed(),
        Kind::Ids { min, max } => ids_for(min, max, known),
        Kind::Text { min, max, .. } => text_for(min, max, known).prop_map(Value::String).boxed(),
        Kind::Content => content().prop_map(Value::String).boxed(),
        Kind::Int { min, max } => prop_oneof![
            4 => (min.max(-5)..=max.min(8)).prop_map(Value::from),
            2 => select(vec![min, max, min.saturating_sub(1), max.saturating_add(1)])
                .prop_map(Value::from),
            1 => number(),
            1 => (min.max(-5)..=max.min(8)).prop_map(|n| Value::String(n.to_string())),
        ]
        .boxed(),
        Kind::Enum(names) => prop_oneof![
            4 => select(names.to_vec()).prop_map(|s| Value::String(s.into())),
            1 => select(vec!["delivered", "READ", "read ", "", "pending"])
                .prop_map(|s| Value::String(s.into())),
        ]
        .boxed(),
    };
    prop_oneof![
        8 => plausible,
        2 => json_value(),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
    ]
    .boxed()
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        id_string(&Known::default()).prop_map(Value::String),
        prop::collection::vec(any_char(), 0..12)
            .prop_map(|cs| Value::String(cs.into_iter().collect())),
    ]
}

fn json_value() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
            ]
        })
        .boxed()
}

/// An object key: mostly a DTO's field name.
fn key() -> impl Strategy<Value = String> {
    let names: Vec<&'static str> = DTOS
        .iter()
        .flat_map(|d| d.fields.iter().map(|f| f.name))
        .chain(["type", "userId", "clientmessageid", "", "__proto__"])
        .collect();
    prop_oneof![
        4 => select(names).prop_map(String::from),
        1 => prop::collection::vec(any_char(), 0..8).prop_map(|cs| cs.into_iter().collect()),
    ]
}

/// An object shaped like `dto`: each field present (mostly) with a value
/// from [`field_value`], plus now and then a field of another DTO.
fn dto_shaped(dto: &'static Dto, known: &Known) -> BoxedStrategy<Value> {
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = dto
        .fields
        .iter()
        .map(|f| {
            let present = if f.required { 0.9 } else { 0.5 };
            prop::option::weighted(present, field_value(f.kind, known))
                .prop_map(move |v| v.map(|v| (f.name.to_string(), v)))
                .boxed()
        })
        .collect();
    (fields, prop::collection::vec((key(), json_value()), 0..2))
        .prop_map(|(fields, extra)| {
            let mut obj: Map<String, Value> = extra.into_iter().collect();
            obj.extend(fields.into_iter().flatten());
            Value::Object(obj)
        })
        .boxed()
}

/// A body of `dto` that the node under test should accept: the real ids
/// and credentials, the other fields anywhere within their rules.
fn valid_body(dto: &Dto, known: &Known) -> BoxedStrategy<Value> {
    use serde_json::json;
    let k = known.clone();
    let valid_text = |min: usize, max: usize| {
        prop::collection::vec(any_char(), min..=max.min(80))
            .prop_map(|cs| cs.into_iter().collect::<String>())
    };
    let name = "[A-Za-z0-9_.-]{3,32}";
    match dto.name {
        "register" => (name, valid_text(8, 128), valid_text(1, 64))
            .prop_map(|(u, p, n)| json!({"username": u, "password": p, "nickname": n}))
            .boxed(),
        "login" => select(k.logins)
            .prop_map(|(u, p)| json!({"username": u, "password": p}))
            .boxed(),
        "create-group" => (valid_text(1, 64), prop::sample::subsequence(k.users, 0..=2))
            .prop_map(|(n, m)| json!({"name": n, "memberIds": m}))
            .boxed(),
        "add-members" => prop::sample::subsequence(k.users, 1..=2)
            .prop_map(|m| json!({"userIds": m}))
            .boxed(),
        "send" => (
            prop_oneof![
                Just(("toUserId", k.users[1].clone())),
                Just(("groupId", k.group.clone())),
            ],
            1..=5i32,
            prop_oneof![3 => valid_text(1, 40), 1 => content()]
                .prop_filter("non-empty", |c| !c.is_empty()),
            valid_text(1, 64),
            prop::option::of(any::<i64>()),
        )
            .prop_map(|((field, to), t, c, cmid, ts)| {
                let mut v = json!({field: to, "messageType": t, "content": c,
                    "clientMessageId": cmid});
                if let Some(ts) = ts {
                    v["clientTimestamp"] = json!(ts);
                }
                v
            })
            .boxed(),
        "ack" => (
            prop::sample::subsequence(k.messages, 1..=1),
            select(vec!["received", "read"]),
        )
            .prop_map(|(ids, t)| json!({"messageIds": ids, "ackType": t}))
            .boxed(),
        "mark-read" => (select(k.sessions), prop::option::of(0..100i64))
            .prop_map(|(s, up)| json!({"sessionId": s, "upToSeq": up}))
            .boxed(),
        "stomp-ack" => prop_oneof![
            (
                prop::sample::subsequence(k.messages, 1..=1),
                select(vec!["received", "read"])
            )
                .prop_map(|(ids, t)| json!({"messageIds": ids, "ackType": t})),
            (select(k.sessions), prop::option::of(0..100i64))
                .prop_map(|(s, up)| json!({"sessionId": s, "upToSeq": up, "ackType": "read"})),
        ]
        .boxed(),
        other => panic!("no valid body for {other}"),
    }
}

fn values() -> impl Strategy<Value = Value> {
    let known = Known::offline();
    let shaped: Vec<(u32, BoxedStrategy<Value>)> = DTOS
        .iter()
        .flat_map(|d| [(1, valid_body(d, &known)), (3, dto_shaped(d, &known))])
        .collect();
    prop_oneof![
        8 => prop::strategy::Union::new_weighted(shaped),
        1 => json_value(),
    ]
}

/// Tokens the byte mutator inserts.
const DICTIONARY: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"0",
    b"1",
    b"-1",
    b"1.0",
    b"1e2",
    b"18446744073709551616",
    b"\"1\"",
    b"\"01\"",
    b"\\u0000",
    b"\\ud800",
    b"\\\"",
    b"\xff",
    b"\xc3\xa9",
    b" ",
    b"\"toUserId\":",
    b"\"groupId\":",
    b"\"messageIds\":",
    b"\"sessionId\":",
    b"\"ackType\":\"read\"",
    b"\"username\":",
    b"\"content\":",
];

fn seeds() -> Vec<Vec<u8>> {
    fuzz::corpus(CORPUS).into_iter().map(|(_, b)| b).collect()
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => fuzz::mutated(seeds(), DICTIONARY, 4096),
        2 => values().prop_map(|v| serde_json::to_vec(&v).expect("a Value serializes")),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

// ---------------------------------------------------------------------------
// The targets
// ---------------------------------------------------------------------------

fn dto_tally() -> Tally {
    Tally::new(&DTOS.iter().map(|d| d.name).collect::<Vec<_>>())
}

#[test]
fn json_corpus_replays() {
    let tally = dto_tally();
    let mut must_accept = 0;
    for (name, body) in fuzz::corpus(CORPUS) {
        if let Err(e) = check_all(&body, false, &tally) {
            panic!("corpus {CORPUS}/{name}: {e}");
        }
        // `<dto>-ok-...`: an example of the contract, which must pass.
        if let Some((dto_name, _)) = name.split_once("-ok-") {
            let d = dto(dto_name);
            let v = check_body(d, &body).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_ne!(v.rest, Some(false), "{name}: refused by REST");
            assert_ne!(v.stomp, Some(false), "{name}: refused by STOMP");
            must_accept += 1;
        }
    }
    assert!(must_accept >= DTOS.len(), "{must_accept} examples");
    tally.assert_each_at_least("json corpus", 1);
}

#[test]
fn json_values_fuzz() {
    let accepted = dto_tally();
    let refused = Cell::new(0u64);
    fuzz::fuzz(
        "json values",
        CORPUS,
        0.3,
        256,
        values(),
        |v| serde_json::to_vec(v).expect("a Value serializes"),
        |v| {
            let body = serde_json::to_vec(&v).expect("a Value serializes");
            let before: u64 = DTOS.iter().map(|d| accepted.get(d.name)).sum();
            check_all(&body, true, &accepted)?;
            let after: u64 = DTOS.iter().map(|d| accepted.get(d.name)).sum();
            if after == before {
                refused.set(refused.get() + 1);
            }
            Ok(())
        },
    );
    // Both ways, for every DTO: else the oracle was never put to work.
    accepted.assert_each_at_least("json values (accepted)", 1);
    assert!(refused.get() > 0, "nothing was refused");
}

#[test]
fn json_bytes_fuzz() {
    let accepted = dto_tally();
    fuzz::fuzz(
        "json bytes",
        CORPUS,
        0.3,
        256,
        bytes(),
        |b| b.clone(),
        |b| check_all(&b, false, &accepted),
    );
    println!("fuzz json bytes: accepted {accepted:?}");
}

// ---------------------------------------------------------------------------
// The REST API of a running node
// ---------------------------------------------------------------------------

/// A node in this process (embedded backends in a temporary directory)
/// serving the whole HTTP application, with two users, a group and a
/// message, so that fuzzed requests can also be accepted: what the
/// handlers and services check after the parse (a send has exactly one
/// recipient, its content is within `maxContentBytes`, ...) is checked on
/// what they accept.
struct Api {
    rt: tokio::runtime::Runtime,
    client: poem::test::TestClient<poem::endpoint::BoxEndpoint<'static, poem::Response>>,
    node: Option<herald::app::Node>,
    _dir: tempfile::TempDir,
    token: String,
    me: String,
    group: String,
    known: Known,
    max_content_bytes: usize,
}

/// The REST operation of each DTO (`{group}`: the test's group).
fn operation(dto: &str) -> (&'static str, u16) {
    match dto {
        "register" => ("/api/v1/auth/register", 201),
        "login" => ("/api/v1/auth/login", 200),
        "create-group" => ("/api/v1/groups", 201),
        "add-members" => ("/api/v1/groups/{group}/members", 200),
        "send" => ("/api/v1/messages", 202),
        "ack" => ("/api/v1/messages/ack", 200),
        "mark-read" => ("/api/v1/messages/mark-read", 200),
        other => panic!("no REST operation for {other}"),
    }
}

/// The status of each error code (PROTOCOL.md section 3).
const ERROR_CODES: &[(&str, u16)] = &[
    ("invalid_argument", 400),
    ("unauthenticated", 401),
    ("forbidden", 403),
    ("not_found", 404),
    ("conflict", 409),
    ("payload_too_large", 413),
    ("rate_limited", 429),
];

impl Api {
    fn start() -> Api {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cfg = herald::config::Config {
            data_dir: dir.path().to_path_buf(),
            // Fuzzing, not load: no fsync, and no quota in the way of
            // what is being checked.
            durability: "normal".into(),
            send_rate_per_sec: 1_000_000,
            send_burst: 1_000_000,
            registrations_per_hour: 0,
            login_max_failures: 0,
            ..Default::default()
        };
        let max_content_bytes = cfg.max_content_bytes;
        let node = rt
            .block_on(herald::app::Node::start(cfg))
            .expect("the node starts");
        let app =
            herald::controller::routes(node.services.clone(), herald::telemetry::metrics_handle());
        let client = poem::test::TestClient::new(poem::EndpointExt::boxed(app));
        let mut api = Api {
            rt,
            client,
            node: Some(node),
            _dir: dir,
            token: String::new(),
            me: String::new(),
            group: String::new(),
            known: Known::default(),
            max_content_bytes,
        };
        api.populate();
        api
    }

    /// Two users, a group of both, and a message between them.
    fn populate(&mut self) {
        let suffix = std::process::id();
        let (alice, bob) = (format!("alice{suffix}"), format!("bob{suffix}"));
        let password = "password1";
        let mut ids = Vec::new();
        for name in [&alice, &bob] {
            let body =
                serde_json::json!({"username": name, "password": password, "nickname": name});
            let (status, user) = self.call("/api/v1/auth/register", "", &body.to_string());
            assert_eq!(status, 201, "register {name}: {user}");
            ids.push(user["userId"].as_str().expect("a userId").to_string());
        }
        let body = serde_json::json!({"username": alice, "password": password});
        let (status, login) = self.call("/api/v1/auth/login", "", &body.to_string());
        assert_eq!(status, 200, "login: {login}");
        self.token = login["token"].as_str().expect("a token").to_string();
        self.me = ids[0].clone();
        let body = serde_json::json!({"name": "fuzz", "memberIds": [ids[1]]});
        let (status, group) = self.call("/api/v1/groups", &self.token.clone(), &body.to_string());
        assert_eq!(status, 201, "create group: {group}");
        self.group = group["groupId"].as_str().expect("a groupId").to_string();
        ids.push(self.group.clone());
        ids.push(
            group["sessionId"]
                .as_str()
                .expect("a sessionId")
                .to_string(),
        );
        let body = serde_json::json!({"toUserId": ids[1], "messageType": 1, "content": "hi",
            "clientMessageId": "fuzz-1"});
        let (status, ack) = self.call("/api/v1/messages", &self.token.clone(), &body.to_string());
        assert_eq!(status, 202, "send: {ack}");
        ids.push(ack["messageId"].as_str().expect("a messageId").to_string());
        ids.push(ack["sessionId"].as_str().expect("a sessionId").to_string());
        self.known = Known {
            users: ids[..2].to_vec(),
            group: ids[2].clone(),
            sessions: vec![ids[3].clone(), ids[5].clone()],
            messages: vec![ids[4].clone()],
            ids,
            words: vec![alice.clone(), bob.clone(), password.to_string()],
            logins: vec![(alice, password.into()), (bob, password.into())],
        };
    }

    /// POSTs `body`; the status and the body as JSON (null if it is not).
    fn call(&self, path: &str, token: &str, body: &str) -> (u16, Value) {
        let (status, bytes) = self.post(path, token, body.as_bytes().to_vec());
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn post(&self, path: &str, token: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let path = path.replace("{group}", &self.group);
        self.rt.block_on(async {
            let mut req = self
                .client
                .post(path)
                .content_type("application/json")
                .body(body);
            if !token.is_empty() {
                req = req.header("authorization", format!("Bearer {token}"));
            }
            let resp = req.send().await.0;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().into_vec().await.unwrap_or_default();
            (status, bytes)
        })
    }

    /// What the handlers check beyond each field's rule, on `v` (an
    /// accepted body).
    fn beyond_fields(&self, dto: &Dto, v: &Value) -> Result<(), String> {
        if dto.name != "send" {
            return Ok(());
        }
        let target = |f: &str| v.get(f).filter(|t| !t.is_null());
        match (target("toUserId"), target("groupId")) {
            (Some(to), None) if *to == Value::String(self.me.clone()) => {
                return Err("a single-chat send to oneself was accepted".into());
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(
                    "a send without exactly one of toUserId and groupId was accepted".into(),
                )
            }
        }
        let bytes = v["content"].as_str().map_or(0, str::len);
        if bytes > self.max_content_bytes {
            return Err(format!(
                "{bytes} bytes of content accepted, the limit is {}",
                self.max_content_bytes
            ));
        }
        Ok(())
    }

    /// One request; the outcome checked against the contract.
    fn check(&self, dto: &Dto, body: &[u8], tally: &Tally) -> Result<(), TestCaseError> {
        let (path, created) = operation(dto.name);
        let token = if path.contains("/auth/") {
            ""
        } else {
            &self.token
        };
        let (status, answer) = self.post(path, token, body.to_vec());
        let shown = || {
            String::from_utf8_lossy(body)
                .chars()
                .take(2000)
                .collect::<String>()
        };
        prop_assert!(
            status < 500,
            "{} answered {} to {}",
            dto.name,
            status,
            shown()
        );
        if (200..300).contains(&status) {
            prop_assert_eq!(status, created, "{}", dto.name);
            let input: Value = serde_json::from_slice(body).map_err(|e| {
                TestCaseError::fail(format!(
                    "{} accepted what is not JSON ({e}): {}",
                    dto.name,
                    shown()
                ))
            })?;
            if let Err(e) = contract(dto, &input).and_then(|()| self.beyond_fields(dto, &input)) {
                return Err(TestCaseError::fail(format!(
                    "{} accepted {}: {e}",
                    dto.name,
                    shown()
                )));
            }
            tally.hit(dto.name);
        } else {
            let error: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
            let code = error["code"].as_str().unwrap_or_default();
            prop_assert!(
                error["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{} answered {} without a message: {}",
                dto.name,
                status,
                String::from_utf8_lossy(&answer)
            );
            prop_assert!(
                ERROR_CODES.contains(&(code, status)),
                "{} answered {} with code {:?}",
                dto.name,
                status,
                code
            );
        }
        Ok(())
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            self.rt.block_on(node.stop());
        }
    }
}

#[test]
fn json_rest_api_fuzz() {
    let api = Api::start();
    let rest: Vec<&'static Dto> = DTOS.iter().filter(|d| d.rest.is_some()).collect();
    // Registrations and logins hash passwords (slow on purpose): fewer.
    let weight = |d: &Dto| {
        if matches!(d.name, "register" | "login") {
            2
        } else {
            3
        }
    };
    // (weight, (index in `rest`, body)) per DTO.
    type Case = (u32, BoxedStrategy<(usize, Vec<u8>)>);
    let cases: Vec<Case> = rest
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let to_bytes = |v: Value| serde_json::to_vec(&v).expect("a Value serializes");
            let body = prop_oneof![
                3 => valid_body(d, &api.known).prop_map(to_bytes),
                4 => dto_shaped(d, &api.known).prop_map(to_bytes),
                1 => fuzz::mutated(seeds(), DICTIONARY, 64),
            ];
            (weight(d), body.prop_map(move |b| (i, b)).boxed())
        })
        .collect();
    let accepted = Tally::new(&rest.iter().map(|d| d.name).collect::<Vec<_>>());
    fuzz::fuzz(
        "json REST API",
        CORPUS,
        0.4,
        256,
        prop::strategy::Union::new_weighted(cases),
        |(_, body)| body.clone(),
        |(i, body)| api.check(rest[i], &body, &accepted),
    );
    accepted.assert_each_at_least("json REST API (accepted)", 1);
}

/// The oracle itself on hand-picked values: a wrong oracle would make the
/// targets vacuous (accepting everything) or wrong.
#[test]
fn contract_oracle_examples() {
    let send = dto("send");
    let ok = serde_json::json!({"toUserId": "385701919407996928", "messageType": 1,
        "content": "hi", "clientMessageId": "c-1", "clientTimestamp": 1_700_000_000_000i64});
    assert_eq!(contract(send, &ok), Ok(()));
    for (field, bad) in [
        ("toUserId", serde_json::json!(385701919407996928u64)),
        ("toUserId", serde_json::json!("0123")),
        ("toUserId", serde_json::json!("0")),
        ("messageType", serde_json::json!(6)),
        ("messageType", serde_json::json!("1")),
        ("messageType", serde_json::json!(1.5)),
        ("content", serde_json::json!(42)),
        ("content", serde_json::json!("")),
        ("clientMessageId", serde_json::json!("k".repeat(65))),
    ] {
        let mut v = ok.clone();
        v[field] = bad.clone();
        assert!(contract(send, &v).is_err(), "{field}: {bad}");
    }
    assert!(contract(send, &serde_json::json!([null, null, 1, "hi", "c", null])).is_err());
    let register = dto("register");
    let ok = serde_json::json!({"username": "alice", "password": "password1", "nickname": "é"});
    assert_eq!(contract(register, &ok), Ok(()));
    let mut bad = ok.clone();
    bad["username"] = serde_json::json!("al ice");
    assert!(contract(register, &bad).is_err());
    let parsed = serde_json::json!({"username": "alice", "password": "password1", "nickname": "x"});
    assert!(taken_as_sent(register, &ok, &parsed).is_err());
    assert!(contract(dto("stomp-ack"), &serde_json::json!({"ackType": "read"})).is_ok());
    assert!(contract(dto("ack"), &serde_json::json!({"ackType": "read"})).is_err());
}
