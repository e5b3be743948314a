//! This node's mail: what other nodes (and this one) tell it, handed to
//! the service it is for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::acks::AckService;
use super::backend::NodeMail;
use super::delivery::{Broadcast, DeliveryHub};
use super::directory::Directory;
use super::notices::Notice;
use super::relay::{push_events, push_message, Relay};
use super::tokens::Tokens;
use crate::model::AcceptedSend;

/// Sends waiting for the session consumer to store them, by message id.
#[derive(Default)]
pub struct SendWaiters {
    waiting: Mutex<HashMap<u64, oneshot::Sender<StoredAs>>>,
}

/// How a send's record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredAs {
    /// As the message the sender was told of.
    Itself,
    /// Not at all: the send had been stored before, as this message.
    Original(AcceptedSend),
}

impl SendWaiters {
    /// Waits for message `message_id` to be stored: called before its
    /// record is published, so the answer cannot come first.
    pub fn expect(&self, message_id: u64) -> oneshot::Receiver<StoredAs> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(message_id, tx);
        rx
    }

    /// Stops waiting (the publish failed, or it was a repeat).
    pub fn forget(&self, message_id: u64) {
        self.waiting.lock().remove(&message_id);
    }

    /// Answers the waiting sends of these messages.
    pub fn stored(&self, answers: impl IntoIterator<Item = (u64, StoredAs)>) {
        let mut found = Vec::new();
        {
            let mut waiting = self.waiting.lock();
            for (message_id, how) in answers {
                if let Some(tx) = waiting.remove(&message_id) {
                    found.push((tx, how));
                }
            }
        }
        for (tx, how) in found {
            let _ = tx.send(how);
        }
    }
}

pub struct Mailbox {
    /// This node's id.
    pub node: u16,
    pub relay: Arc<Relay>,
    pub sends: Arc<SendWaiters>,
    pub acks: Arc<AckService>,
    pub directory: Arc<Directory>,
    pub hub: Arc<DeliveryHub>,
    pub tokens: Arc<Tokens>,
}

impl NodeMail for Mailbox {
    fn receive(&self, notice: Notice) {
        match notice {
            Notice::Stored(ids) => self
                .sends
                .stored(ids.into_iter().map(|id| (id, StoredAs::Itself))),
            Notice::Known(known) => self.sends.stored(
                known
                    .into_iter()
                    .map(|(id, original)| (id, StoredAs::Original(original))),
            ),
            Notice::AcksApplied(replies) => {
                for reply in replies {
                    self.acks.replied(reply);
                }
            }
            Notice::Messages(messages) => {
                let now = Instant::now();
                for m in messages {
                    // Only the sending connection itself is skipped.
                    let except = m
                        .origin
                        .and_then(|(node, conn)| (node == self.node).then_some(conn));
                    push_message(&self.hub, &m.doc, &m.recipients, except, now);
                }
            }
            Notice::Events(events) => push_events(&self.hub, events),
            Notice::Broadcast(b) => {
                self.hub.publish_topic(Broadcast {
                    destination: Arc::from(b.destination.as_str()),
                    headers: b.headers,
                    body: Bytes::from(b.body),
                });
            }
            Notice::SessionChanged(session_id) => self.directory.forget_session(session_id),
            Notice::Settle { token, reply_to } => {
                let (acks, relay) = (self.acks.clone(), self.relay.clone());
                tokio::spawn(async move {
                    acks.settle().await;
                    relay.tell(reply_to, Notice::Settled(token)).await;
                });
            }
            Notice::Settled(token) => self.acks.settled_elsewhere(token),
            Notice::TokensRevoked {
                user_id,
                revoked,
                answer,
            } => self.tokens.revoked_elsewhere(user_id, revoked, answer),
            Notice::TokensForgotten(token) => self.tokens.forgotten_elsewhere(token),
        }
    }
}
