//! The session consumer: stores what the session topic carries (one
//! `MessageDoc`, one inbox entry per recipient, gap-free `seq`/`inboxSeq`)
//! and raises message-sent events, in topic order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::{backoff, POLL_MAX};
use crate::model::ids::now_ms;
use crate::model::{SendRecord, StoredMessage};
use crate::service::backend::{Store, TopicConsumer};
use crate::service::StoredWatermark;

/// A message just stored, with the connection that sent it.
#[derive(Debug, Clone)]
pub struct MessageSent {
    pub stored: StoredMessage,
    pub origin_conn: Option<u64>,
    pub stored_at: Instant,
}

pub async fn run(
    mut consumer: Box<dyn TopicConsumer>,
    store: Arc<dyn Store>,
    watermark: Arc<StoredWatermark>,
    events: mpsc::Sender<Vec<MessageSent>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // On shutdown, finish what was published before stopping.
        if *shutdown.borrow() && consumer.lag() == 0 {
            break;
        }
        let polled = tokio::select! {
            polled = consumer.poll(POLL_MAX) => polled,
            _ = shutdown.changed(), if !*shutdown.borrow() => continue,
        };
        let records = match polled {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "session topic poll failed");
                tokio::time::sleep(backoff(3)).await;
                continue;
            }
        };
        let Some(last) = records.last().map(|r| r.offset) else {
            continue;
        };
        let mut origins = HashMap::with_capacity(records.len());
        let batch: Vec<SendRecord> = records
            .iter()
            .filter_map(|r| match serde_json::from_slice::<SendRecord>(&r.payload) {
                Ok(rec) => {
                    origins.insert(rec.message_id, rec.origin_conn);
                    Some(rec)
                }
                Err(e) => {
                    // A record this version cannot read would block the
                    // topic forever; it is logged and skipped.
                    tracing::error!(offset = r.offset, error = %e, "undecodable session record skipped");
                    None
                }
            })
            .collect();
        let stored = store_with_retry(&*store, batch).await;
        watermark.advance(last);
        let stored_at = Instant::now();
        let now = now_ms();
        let sent: Vec<MessageSent> = stored
            .into_iter()
            .map(|s| {
                let delay = (now - s.accepted_at_ms).max(0) as f64 / 1000.0;
                metrics::histogram!("herald_send_to_store_seconds").record(delay);
                let origin_conn = origins.get(&s.doc.message_id).copied().flatten();
                MessageSent {
                    stored: s,
                    origin_conn,
                    stored_at,
                }
            })
            .collect();
        if !sent.is_empty() && events.send(sent).await.is_err() {
            tracing::warn!("message listener is gone");
        }
        if let Err(e) = consumer.commit(last).await {
            tracing::warn!(error = %e, "session offset commit failed; records will be re-read");
        }
        metrics::gauge!("herald_topic_consumer_lag", "topic" => "session")
            .set(consumer.lag() as f64);
    }
    tracing::info!("session consumer stopped");
}

/// Stores a batch, retrying until the backend takes it: skipping it would
/// lose acknowledged messages.
async fn store_with_retry(store: &dyn Store, batch: Vec<SendRecord>) -> Vec<StoredMessage> {
    let mut attempt = 0;
    loop {
        match store.store_messages(batch.clone()).await {
            Ok(stored) => return stored,
            Err(e) => {
                tracing::error!(error = %e, attempt, "storing messages failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}
