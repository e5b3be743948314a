//! The ack-cycle consumer: applies the ack topic to the inboxes (statuses
//! only ever rise), stops redelivery of what left `pending`, and runs the
//! redelivery clock: unacked client-ack pushes are pushed again after
//! ackTimeout x 2^(k-1), up to maxRedeliveries, then dead-lettered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use async_trait::async_trait;

use super::{retry, BatchHandler};
use crate::model::AckEnvelope;
use crate::service::backend::{Checkpoint, Store};
use crate::service::notices::{AckReply, Notice};
use crate::service::redelivery::Verdict;
use crate::service::relay::{distinct_users, Relay};
use crate::service::{MessageService, RedeliveryTracker};

/// Applies ack records to the inboxes, and replies to the nodes that
/// published them (their callers wait, their trackers stop redelivering).
pub struct AckConsumer {
    pub store: Arc<dyn Store>,
    pub relay: Arc<Relay>,
}

#[async_trait]
impl BatchHandler for AckConsumer {
    type Record = AckEnvelope;

    async fn handle(&mut self, batch: Vec<AckEnvelope>, at: Checkpoint) {
        let batch: Vec<_> = batch
            .into_iter()
            .flat_map(AckEnvelope::into_records)
            .collect();
        let store = &self.store;
        let outcomes = retry("applying acks", || store.apply_acks(batch.clone(), at)).await;
        // (node, token) -> the outcomes of its records, in record order.
        let mut replies: HashMap<(u16, u64), Vec<_>> = HashMap::new();
        for (record, outcome) in batch.iter().zip(outcomes) {
            if let Some(token) = record.reply_token {
                replies
                    .entry((record.reply_node, token))
                    .or_default()
                    .push((record.user_id, outcome));
            }
        }
        let mut by_node: HashMap<u16, Vec<AckReply>> = HashMap::new();
        for ((node, token), outcomes) in replies {
            by_node
                .entry(node)
                .or_default()
                .push(AckReply { token, outcomes });
        }
        for (node, replies) in by_node {
            self.relay.tell(node, Notice::AcksApplied(replies)).await;
        }
    }
}

/// The redelivery clock of the pushes this node's connections made: due
/// ones go again to the user's devices on every node.
pub async fn run_redelivery(
    tracker: Arc<RedeliveryTracker>,
    messages: Arc<MessageService>,
    relay: Arc<Relay>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let wait = tracker
            .next_due()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tracker.changed.notified() => continue,
            _ = shutdown.changed() => break,
        }
        let due = tracker.take_due(Instant::now(), 4096);
        let users = distinct_users(due.iter().map(|d| d.user_id));
        let online = relay.online(&users).await;
        let mut by_user: HashMap<u64, Vec<u64>> = HashMap::new();
        for d in due {
            if online.binary_search(&d.user_id).is_err() {
                // Nobody to push to: it stays pending for pull and sync.
                continue;
            }
            match tracker.judge(d) {
                Verdict::Redeliver => by_user.entry(d.user_id).or_default().push(d.message_id),
                Verdict::DeadLetter => {
                    metrics::counter!("herald_messages_dead_lettered_total").increment(1);
                }
            }
        }
        for (user_id, ids) in by_user {
            match messages.redeliver(user_id, &ids, None).await {
                Ok(settled) => tracker.resolve(user_id, &settled),
                Err(e) => tracing::warn!(error = %e, user_id, "redelivery failed"),
            }
        }
    }
    tracing::info!("redelivery clock stopped");
}
