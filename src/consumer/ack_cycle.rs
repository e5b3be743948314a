//! The ack-cycle consumer: applies the ack topic to the inboxes (statuses
//! only ever rise), stops redelivery of what left `pending`, and runs the
//! redelivery clock: unacked client-ack pushes are pushed again after
//! ackTimeout x 2^(k-1), up to maxRedeliveries, then dead-lettered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{backoff, POLL_MAX};
use crate::model::AckRecord;
use crate::service::backend::{Store, TopicConsumer};
use crate::service::redelivery::Verdict;
use crate::service::{AckService, DeliveryHub, MessageService, RedeliveryTracker};

pub async fn run_acks(
    mut consumer: Box<dyn TopicConsumer>,
    store: Arc<dyn Store>,
    acks: Arc<AckService>,
    tracker: Arc<RedeliveryTracker>,
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
                tracing::error!(error = %e, "ack topic poll failed");
                tokio::time::sleep(backoff(3)).await;
                continue;
            }
        };
        let Some(last) = records.last().map(|r| r.offset) else {
            continue;
        };
        let batch: Vec<AckRecord> = records
            .iter()
            .filter_map(|r| match serde_json::from_slice(&r.payload) {
                Ok(rec) => Some(rec),
                Err(e) => {
                    tracing::error!(offset = r.offset, error = %e, "undecodable ack record skipped");
                    None
                }
            })
            .collect();
        let outcomes = apply_with_retry(&*store, &batch).await;
        for (record, outcome) in batch.iter().zip(outcomes) {
            tracker.resolve(record.user_id, &outcome.no_longer_pending);
            if let Some(token) = record.reply_token {
                acks.complete(token, outcome);
            }
        }
        acks.applied_up_to(last);
        if let Err(e) = consumer.commit(last).await {
            tracing::warn!(error = %e, "ack offset commit failed; records will be re-read");
        }
        metrics::gauge!("herald_topic_consumer_lag", "topic" => "ack").set(consumer.lag() as f64);
    }
    tracing::info!("ack consumer stopped");
}

async fn apply_with_retry(store: &dyn Store, batch: &[AckRecord]) -> Vec<crate::model::AckOutcome> {
    let mut attempt = 0;
    loop {
        match store.apply_acks(batch.to_vec()).await {
            Ok(outcomes) => return outcomes,
            Err(e) => {
                tracing::error!(error = %e, attempt, "applying acks failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// The redelivery clock.
pub async fn run_redelivery(
    tracker: Arc<RedeliveryTracker>,
    messages: Arc<MessageService>,
    hub: Arc<DeliveryHub>,
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
        let mut by_user: HashMap<u64, Vec<u64>> = HashMap::new();
        for d in due {
            if !hub.is_online(d.user_id) {
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
