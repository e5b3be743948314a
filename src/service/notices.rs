//! What nodes tell each other (a node tells itself the same way): the
//! answers a consumer owes the node a request came from, the pushes for
//! the devices a node holds, and what every node must hear.

use serde::{Deserialize, Serialize};

use crate::model::{AcceptedSend, AckOutcome, InboxRef, MessageDoc};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Notice {
    /// Sends the session consumer stored, by message id, for the node that
    /// accepted them (it answers the senders).
    Stored(Vec<u64>),
    /// Sends the session consumer found stored before, for the node that
    /// accepted them: (the send's message id, the stored send it is).
    Known(Vec<(u64, AcceptedSend)>),
    /// Ack records applied, for the node that published them.
    AcksApplied(Vec<AckReply>),
    /// Stored messages for some recipients' devices on this node.
    Messages(Vec<RoutedMessage>),
    /// Events (recalls) ready for users' devices on this node.
    Events(Vec<RoutedEvent>),
    /// A `/topic/...` broadcast, for the node's subscribers.
    Broadcast(RoutedBroadcast),
    /// The members of a session changed: forget what is cached of it.
    SessionChanged(u64),
    /// Apply the acks this node queued so far, then answer `Settled` with
    /// the token to node `reply_to` (a read there must see them).
    Settle { token: u64, reply_to: u16 },
    /// The acks were applied (the answer to `Settle`).
    Settled(u64),
    /// Tokens of a user were revoked: forget what is cached of the user's
    /// tokens and close the connections that use a revoked one; then, if
    /// `answer` names a (token, node), answer `TokensForgotten` there.
    TokensRevoked {
        user_id: u64,
        revoked: Revocation,
        answer: Option<(u64, u16)>,
    },
    /// A node applied a `TokensRevoked` (the answer, with its token).
    TokensForgotten(u64),
}

/// Which tokens of a user a logout revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Revocation {
    /// The token with this issue number (logout).
    One(u64),
    /// Every token numbered below this (logout-all).
    Before(u64),
}

impl Revocation {
    pub fn covers(&self, token_number: u64) -> bool {
        match *self {
            Revocation::One(n) => token_number == n,
            Revocation::Before(n) => token_number < n,
        }
    }
}

/// The outcomes of the ack records published with one reply token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckReply {
    pub token: u64,
    /// (user, outcome) of each record with the token.
    pub outcomes: Vec<(u64, AckOutcome)>,
}

/// A stored message and the recipients it is pushed to on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutedMessage {
    pub doc: MessageDoc,
    pub recipients: Vec<InboxRef>,
    /// The sending connection (node, connection id): it gets the SendAck,
    /// not the push.
    pub origin: Option<(u16, u64)>,
}

/// One user's event, its body encoded already.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutedEvent {
    pub user_id: u64,
    pub message_id: u64,
    pub inbox_seq: i64,
    pub body: String,
    /// The user's entry is pending: a push on a client-ack subscription
    /// awaits an ack.
    #[serde(default)]
    pub pending: bool,
    /// A redelivery: the node that pushed it first keeps its clock.
    #[serde(default)]
    pub redelivery: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutedBroadcast {
    pub destination: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}
