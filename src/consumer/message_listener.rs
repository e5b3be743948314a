//! The message-sent listener: pushes each stored message to every online
//! device of every recipient, in topic (and so `seq`) order. The JSON is
//! built once per recipient, whatever the number of its devices.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::session_consumer::MessageSent;
use crate::model::dto::MessageVo;
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
        let vo = MessageVo::new(doc, r.inbox_seq, r.status.as_str());
        let body = match serde_json::to_vec(&vo) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode message");
                continue;
            }
        };
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
