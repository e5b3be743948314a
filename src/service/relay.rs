//! Where pushes and answers go: to this node's devices and services
//! directly, to other nodes through the presence backend. Stored messages
//! are pushed only to the nodes that hold their recipients' devices, so a
//! 1:1 message never goes to every node.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use super::backend::{Locations, NodeMail, Presence};
use super::delivery::{Broadcast, DeliveryHub, UserEvent};
use super::notices::{Notice, RoutedBroadcast, RoutedEvent, RoutedMessage};
use crate::model::dto::MessageVoTemplate;
use crate::model::{InboxRef, InboxStatus, MessageDoc, StoredMessage};

/// A message just stored, with the node and connection that sent it.
#[derive(Debug, Clone)]
pub struct MessageSent {
    pub stored: StoredMessage,
    pub origin: Option<(u16, u64)>,
    pub stored_at: Instant,
}

pub struct Relay {
    node: u16,
    presence: Arc<dyn Presence>,
    hub: Arc<DeliveryHub>,
    /// This node's mail: what it tells itself goes straight there.
    mail: OnceLock<Arc<dyn NodeMail>>,
}

impl Relay {
    pub fn new(presence: Arc<dyn Presence>, hub: Arc<DeliveryHub>) -> Relay {
        Relay {
            node: presence.node(),
            presence,
            hub,
            mail: OnceLock::new(),
        }
    }

    /// Sets where this node's own notices go (once, before any is sent).
    pub fn attach(&self, mail: Arc<dyn NodeMail>) {
        if self.mail.set(mail).is_err() {
            tracing::warn!("the relay's mail was attached twice");
        }
    }

    pub fn node(&self) -> u16 {
        self.node
    }

    pub fn hub(&self) -> &DeliveryHub {
        &self.hub
    }

    /// Delivers `notice` to `node` (this one included). A notice to
    /// another node that cannot be sent is logged and counted: what it
    /// carries is stored, and clients recover it by sync or a retry.
    pub async fn tell(&self, node: u16, notice: Notice) {
        if node == self.node {
            match self.mail.get() {
                Some(mail) => mail.receive(notice),
                None => tracing::warn!("a notice before the node's mail was attached"),
            }
            return;
        }
        if let Err(e) = self.presence.tell(node, notice).await {
            metrics::counter!("herald_notices_lost_total").increment(1);
            tracing::warn!(error = %e, node, "a notice to another node was not sent");
        }
    }

    /// Delivers `notice` to every other node.
    pub async fn tell_others(&self, notice: Notice) {
        if let Err(e) = self.presence.tell_all(notice).await {
            metrics::counter!("herald_notices_lost_total").increment(1);
            tracing::warn!(error = %e, "a notice to the other nodes was not sent");
        }
    }

    /// Delivers `notice` to every other node; how many it reached (0 if it
    /// could not be sent: logged and counted as `tell_others` does).
    pub async fn tell_others_counted(&self, notice: Notice) -> usize {
        match self.presence.tell_all_counted(notice).await {
            Ok(n) => n,
            Err(e) => {
                metrics::counter!("herald_notices_lost_total").increment(1);
                tracing::warn!(error = %e, "a notice to the other nodes was not sent");
                0
            }
        }
    }

    /// Pushes stored messages to every online device of their recipients,
    /// in batch (so `seq`) order per node.
    pub async fn push_messages(&self, batch: &[MessageSent]) {
        let mut users: Vec<u64> = batch
            .iter()
            .flat_map(|s| s.stored.recipients.iter().map(|r| r.user_id))
            .collect();
        users.sort_unstable();
        users.dedup();
        match self.locate(&users).await {
            Locations::AllHere => {
                for sent in batch {
                    let d = &sent.stored;
                    let except = self.local_origin(sent.origin);
                    push_message(&self.hub, &d.doc, &d.recipients, except, sent.stored_at);
                }
            }
            Locations::Nodes(nodes) => {
                for (node, held) in nodes {
                    self.push_messages_on(node, batch, &held).await;
                }
            }
        }
    }

    /// The messages of `batch` for the recipients among `held` (sorted),
    /// pushed on `node`.
    async fn push_messages_on(&self, node: u16, batch: &[MessageSent], held: &[u64]) {
        let here = node == self.node;
        let mut routed = Vec::new();
        for sent in batch {
            let d = &sent.stored;
            let recipients: Vec<InboxRef> = d
                .recipients
                .iter()
                .filter(|r| held.binary_search(&r.user_id).is_ok())
                .copied()
                .collect();
            if recipients.is_empty() {
                continue;
            }
            if here {
                let except = self.local_origin(sent.origin);
                push_message(&self.hub, &d.doc, &recipients, except, sent.stored_at);
            } else {
                routed.push(RoutedMessage {
                    doc: MessageDoc::clone(&d.doc),
                    recipients,
                    origin: sent.origin,
                });
            }
        }
        if !routed.is_empty() {
            self.tell(node, Notice::Messages(routed)).await;
        }
    }

    /// Pushes ready events (recalls) to every online device of their users.
    pub async fn push_events(&self, events: Vec<RoutedEvent>) {
        let users = distinct_users(events.iter().map(|e| e.user_id));
        let nodes = match self.locate(&users).await {
            Locations::AllHere => vec![(self.node, users)],
            Locations::Nodes(nodes) => nodes,
        };
        for (node, held) in nodes {
            let mine: Vec<RoutedEvent> = events
                .iter()
                .filter(|e| held.binary_search(&e.user_id).is_ok())
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            if node == self.node {
                push_events(&self.hub, mine);
            } else {
                self.tell(node, Notice::Events(mine)).await;
            }
        }
    }

    /// Sends a `/topic/...` broadcast to its subscribers on every node.
    pub async fn broadcast(&self, b: Broadcast) {
        let routed = RoutedBroadcast {
            destination: b.destination.to_string(),
            headers: b.headers.clone(),
            body: b.body.to_vec(),
        };
        self.hub.publish_topic(b);
        self.tell_others(Notice::Broadcast(routed)).await;
    }

    /// The nodes other than this one that hold devices of `user_id`.
    pub async fn other_nodes_of(&self, user_id: u64) -> Vec<u16> {
        match self.locate(&[user_id]).await {
            Locations::AllHere => Vec::new(),
            Locations::Nodes(nodes) => nodes
                .into_iter()
                .map(|(n, _)| n)
                .filter(|&n| n != self.node)
                .collect(),
        }
    }

    /// Which of `users` have a device on some node.
    pub async fn online(&self, users: &[u64]) -> Vec<u64> {
        match self.locate(users).await {
            Locations::AllHere => users
                .iter()
                .copied()
                .filter(|&u| self.hub.is_online(u))
                .collect(),
            Locations::Nodes(nodes) => distinct_users(nodes.into_iter().flat_map(|(_, u)| u)),
        }
    }

    /// Where users' devices are; if that cannot be told, this node's
    /// devices still get their pushes (the others sync).
    async fn locate(&self, users: &[u64]) -> Locations {
        match self.presence.locate(users).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot locate devices; pushing to this node's only");
                Locations::Nodes(vec![(self.node, users.to_vec())])
            }
        }
    }

    /// The sending connection, if it is on this node.
    fn local_origin(&self, origin: Option<(u16, u64)>) -> Option<u64> {
        origin.and_then(|(node, conn)| (node == self.node).then_some(conn))
    }
}

/// Pushes a message to the devices on this node of `recipients`, but the
/// sending connection `except`. The JSON is serialized once per message
/// and completed once per recipient (its `inboxSeq` and status), whatever
/// the number of its devices.
pub fn push_message(
    hub: &DeliveryHub,
    doc: &MessageDoc,
    recipients: &[InboxRef],
    except: Option<u64>,
    stored_at: Instant,
) {
    // Built for the first recipient online: most 1:1 pushes go to one.
    let mut template: Option<MessageVoTemplate> = None;
    for r in recipients {
        // The sending device has its SendAck; the sender's others get the push.
        let except = if r.user_id == doc.sender_id {
            except
        } else {
            None
        };
        if !hub.has_device_besides(r.user_id, except) {
            continue;
        }
        let template = match &template {
            Some(t) => t,
            None => match MessageVoTemplate::new(doc) {
                Some(t) => template.insert(t),
                None => {
                    // The inbox keeps it for sync; no push can carry it.
                    tracing::error!(message_id = doc.message_id, "cannot encode message");
                    return;
                }
            },
        };
        let body = Bytes::from(template.body(r.inbox_seq, r.status.as_str()));
        let event = Arc::new(UserEvent {
            message_id: doc.message_id,
            inbox_seq: r.inbox_seq,
            body,
            pending: r.status == InboxStatus::Pending,
            stored_at,
            redelivery: false,
        });
        hub.push_to_user(r.user_id, &event, except);
    }
}

/// Pushes ready events to the users' devices on this node.
pub fn push_events(hub: &DeliveryHub, events: Vec<RoutedEvent>) {
    for e in events {
        let user_id = e.user_id;
        hub.push_to_user(user_id, &e.into_user_event(), None);
    }
}

impl RoutedEvent {
    /// The event as this node's connections push it.
    pub fn into_user_event(self) -> Arc<UserEvent> {
        Arc::new(UserEvent {
            message_id: self.message_id,
            inbox_seq: self.inbox_seq,
            body: Bytes::from(self.body),
            pending: self.pending,
            stored_at: Instant::now(),
            redelivery: self.redelivery,
        })
    }
}

/// Each user once, sorted (for `binary_search`).
pub fn distinct_users(users: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut users: Vec<u64> = users.into_iter().collect();
    users.sort_unstable();
    users.dedup();
    users
}

/// Groups items by the node they go to.
pub fn by_node<T>(items: impl IntoIterator<Item = (u16, T)>) -> HashMap<u16, Vec<T>> {
    let mut out: HashMap<u16, Vec<T>> = HashMap::new();
    for (node, item) in items {
        out.entry(node).or_default().push(item);
    }
    out
}
