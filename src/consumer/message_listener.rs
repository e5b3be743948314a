//! The message-sent listener: pushes each stored message to every online
//! device of every recipient, in topic (and so `seq`) order. The JSON is
//! serialized once per message and completed once per recipient (its
//! `inboxSeq` and status), whatever the number of its devices.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::session_consumer::MessageSent;
use crate::model::dto::MessageVoTemplate;
use crate::model::InboxStatus;
use crate::service::delivery::{DeliveryHub, UserEvent};

pub async fn run(mut events: mpsc::Receiver<Vec<MessageSent>>, hub: Arc<DeliveryHub>) {
    while let Some(batch) = events.recv().await {
        for sent in &batch {
            push_one(&hub, sent);
        }
    }
    tracing::info!("message listener stopped");
}

fn push_one(hub: &DeliveryHub, sent: &MessageSent) {
    let doc = &sent.stored.doc;
    // Built for the first recipient online: most 1:1 pushes go to one.
    let mut template: Option<MessageVoTemplate> = None;
    for r in &sent.stored.recipients {
        // The sending device has its SendAck; the sender's others get the push.
        let except = if r.user_id == doc.sender_id {
            sent.origin_conn
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
            stored_at: sent.stored_at,
            redelivery: false,
        });
        hub.push_to_user(r.user_id, &event, except);
    }
}
