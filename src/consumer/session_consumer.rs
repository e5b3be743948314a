//! The session consumer: stores what the session topic carries (one
//! `MessageDoc`, one inbox entry per recipient, gap-free `seq`/`inboxSeq`)
//! and raises message-sent events, in topic order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{retry, BatchHandler};
use crate::model::ids::now_ms;
use crate::model::{SendRecord, StoredMessage};
use crate::service::backend::{AppliedPosition, Store};
use crate::service::directory::Directory;
use crate::service::Watermark;

/// A message just stored, with the connection that sent it.
#[derive(Debug, Clone)]
pub struct MessageSent {
    pub stored: StoredMessage,
    pub origin_conn: Option<u64>,
    pub stored_at: Instant,
}

pub struct SessionConsumer {
    pub store: Arc<dyn Store>,
    /// Told which new pairs' sessions are stored now.
    pub directory: Arc<Directory>,
    pub watermark: Arc<Watermark>,
    pub events: mpsc::Sender<Vec<MessageSent>>,
}

#[async_trait]
impl BatchHandler for SessionConsumer {
    type Record = SendRecord;

    async fn handle(&mut self, batch: Vec<SendRecord>, applied: AppliedPosition) {
        let origins: HashMap<u64, u64> = batch
            .iter()
            .filter_map(|r| r.origin_conn.map(|c| (r.message_id, c)))
            .collect();
        let store = &self.store;
        let stored = retry("storing messages", || {
            store.store_messages(batch.clone(), applied)
        })
        .await;
        // Only the first message of a session (since the store cached it)
        // can be a new pair's: the others need no word to the directory.
        for s in stored.iter().filter(|s| s.session_resolved) {
            if let Some(to) = s.doc.to_user_id {
                let doc = &s.doc;
                self.directory
                    .single_session_stored(doc.sender_id, to, doc.session_id);
            }
        }
        self.watermark.advance(applied.offset);
        let stored_at = Instant::now();
        let now = now_ms();
        let sent: Vec<MessageSent> = stored
            .into_iter()
            .map(|s| {
                let delay = (now - s.accepted_at_ms).max(0) as f64 / 1000.0;
                metrics::histogram!("herald_send_to_store_seconds").record(delay);
                let origin_conn = origins.get(&s.doc.message_id).copied();
                MessageSent {
                    stored: s,
                    origin_conn,
                    stored_at,
                }
            })
            .collect();
        if !sent.is_empty() && self.events.send(sent).await.is_err() {
            tracing::warn!("message listener is gone");
        }
    }
}
