//! The destinations a STOMP client may use.

use crate::model::ids::decimal_id;

/// A destination a client may SUBSCRIBE to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeTarget {
    /// `/user/queue/message`: message and recall events.
    Messages,
    /// `/user/queue/ack`: this user's `SendAck`s.
    SendAcks,
    /// `/user/queue/errors`: rejected SENDs.
    Errors,
    /// `/topic/public.<name>` or `/topic/session.<sid>.<name>`.
    Topic(TopicName),
}

/// A broadcast topic; `session` is set for session-scoped topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicName {
    pub destination: String,
    pub session: Option<u64>,
}

/// A destination a client may SEND to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendTarget {
    AppSend,
    AppAck,
    Topic(TopicName),
}

pub const MESSAGES: &str = "/user/queue/message";
pub const SEND_ACKS: &str = "/user/queue/ack";
pub const ERRORS: &str = "/user/queue/errors";

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Parses `/topic/public.<name>` and `/topic/session.<sid>.<name>`.
pub fn parse_topic(dest: &str) -> Option<TopicName> {
    let rest = dest.strip_prefix("/topic/")?;
    if let Some(name) = rest.strip_prefix("public.") {
        return valid_name(name).then(|| TopicName {
            destination: dest.to_string(),
            session: None,
        });
    }
    let rest = rest.strip_prefix("session.")?;
    let (sid, name) = rest.split_once('.')?;
    // As everywhere an id is given: no leading zeros, so one session has
    // one destination.
    let session = decimal_id(sid)?;
    valid_name(name).then(|| TopicName {
        destination: dest.to_string(),
        session: Some(session),
    })
}

pub fn parse_subscribe(dest: &str) -> Option<SubscribeTarget> {
    match dest {
        MESSAGES => Some(SubscribeTarget::Messages),
        SEND_ACKS => Some(SubscribeTarget::SendAcks),
        ERRORS => Some(SubscribeTarget::Errors),
        _ => parse_topic(dest).map(SubscribeTarget::Topic),
    }
}

pub fn parse_send(dest: &str) -> Option<SendTarget> {
    match dest {
        "/app/send" => Some(SendTarget::AppSend),
        "/app/ack" => Some(SendTarget::AppAck),
        _ => parse_topic(dest).map(SendTarget::Topic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(
            parse_subscribe("/user/queue/message"),
            Some(SubscribeTarget::Messages)
        );
        assert_eq!(parse_subscribe("/user/queue/other"), None);
        let t = parse_topic("/topic/public.typing-1_x.y").unwrap();
        assert_eq!(t.session, None);
        let t = parse_topic("/topic/session.42.typing").unwrap();
        assert_eq!(t.session, Some(42));
        assert!(parse_topic("/topic/public.").is_none());
        assert!(parse_topic("/topic/public.a b").is_none());
        assert!(parse_topic("/topic/session.x.typing").is_none());
        assert!(parse_topic("/topic/session.42").is_none());
        assert!(parse_topic("/topic/session.042.typing").is_none());
        assert!(parse_topic("/topic/session.0.typing").is_none());
        assert!(parse_topic("/topic/other.a").is_none());
        assert_eq!(parse_send("/app/send"), Some(SendTarget::AppSend));
        assert_eq!(parse_send("/app/nope"), None);
    }
}
