//! The session consumer: stores what the session topic carries (one
//! `MessageDoc`, one inbox entry per recipient, gap-free `seq`/`inboxSeq`),
//! tells the nodes that accepted the sends, and raises message-sent
//! events, in topic order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{retry, BatchHandler};
use crate::model::ids::now_ms;
use crate::model::{SendRecord, StoredBatch};
use crate::service::backend::{Checkpoint, Store};
use crate::service::notices::Notice;
use crate::service::relay::{by_node, MessageSent, Relay};

pub struct SessionConsumer {
    pub store: Arc<dyn Store>,
    pub relay: Arc<Relay>,
    pub events: mpsc::Sender<Vec<MessageSent>>,
}

#[async_trait]
impl BatchHandler for SessionConsumer {
    type Record = SendRecord;

    async fn handle(&mut self, batch: Vec<SendRecord>, at: Checkpoint) {
        let origins: HashMap<u64, (u16, Option<u64>)> = batch
            .iter()
            .map(|r| (r.message_id, (r.origin_node, r.origin_conn)))
            .collect();
        let store = &self.store;
        let done = retry("storing messages", || {
            store.store_messages(batch.clone(), at)
        })
        .await;
        self.answer_senders(&done, &origins).await;
        let stored_at = Instant::now();
        let now = now_ms();
        let sent: Vec<MessageSent> = done
            .stored
            .into_iter()
            .map(|s| {
                let delay = (now - s.accepted_at_ms).max(0) as f64 / 1000.0;
                metrics::histogram!("herald_send_to_store_seconds").record(delay);
                let origin = origins
                    .get(&s.doc.message_id)
                    .and_then(|&(node, conn)| Some((node, conn?)));
                MessageSent {
                    stored: s,
                    origin,
                    stored_at,
                }
            })
            .collect();
        if !sent.is_empty() && self.events.send(sent).await.is_err() {
            tracing::warn!("message listener is gone");
        }
    }
}

impl SessionConsumer {
    /// Tells each node that accepted sends of the batch how they were
    /// stored: its senders are answered then (read your writes).
    async fn answer_senders(&self, done: &StoredBatch, origins: &HashMap<u64, (u16, Option<u64>)>) {
        let node_of = |id: &u64| origins.get(id).map_or(self.relay.node(), |o| o.0);
        let stored = by_node(done.stored.iter().map(|s| {
            let id = s.doc.message_id;
            (node_of(&id), id)
        }));
        for (node, ids) in stored {
            self.relay.tell(node, Notice::Stored(ids)).await;
        }
        let known = by_node(
            done.known
                .iter()
                .map(|k| (node_of(&k.message_id), (k.message_id, k.accepted.clone()))),
        );
        for (node, known) in known {
            self.relay.tell(node, Notice::Known(known)).await;
        }
    }
}
