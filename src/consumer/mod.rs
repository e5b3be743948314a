//! Topic consumers and the event listener:
//! - `session_consumer`: session topic -> `MessageDoc` + inbox entries -> event
//! - `message_listener`: event -> pushes to every online device
//! - `ack_cycle`: ack topic -> inbox status; redelivery and dead letters
//!
//! Both topic consumers share `run_topic`: poll, decode, handle, commit,
//! report lag, and on shutdown drain what was published before stopping.

pub mod ack_cycle;
pub mod message_listener;
pub mod session_consumer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::error::BackendResult;
use crate::service::backend::{AppliedPosition, Store, TopicConsumer};

/// Records taken from a topic per poll.
pub const POLL_MAX: usize = 2048;

/// Waits before retrying after a backend failure (grows to one second).
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(10u64.saturating_mul(1 << attempt.min(7)).min(1000))
}

/// Runs `op` until it succeeds: a consumer that skipped a batch would lose
/// acknowledged messages or acks.
pub async fn retry<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BackendResult<T>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::error!(error = %e, attempt, "{what} failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// What a topic consumer does with a decoded batch.
#[async_trait]
pub trait BatchHandler: Send {
    type Record: DeserializeOwned + Send;
    /// Handles records up to `applied.offset` and saves that position with
    /// what it wrote; must not give up (see `retry`).
    async fn handle(&mut self, batch: Vec<Self::Record>, applied: AppliedPosition);
}

/// Where a consume loop runs: its topic (a metric label), its consumer
/// group, and the store that saves the group's position.
pub struct Consuming {
    pub topic: &'static str,
    pub group: &'static str,
    pub store: Arc<dyn Store>,
}

/// The consume loop of `at.group` on `at.topic`.
pub async fn run_topic<H: BatchHandler>(
    at: Consuming,
    mut consumer: Box<dyn TopicConsumer>,
    mut handler: H,
    mut shutdown: watch::Receiver<bool>,
) {
    let Consuming {
        topic,
        group,
        store,
    } = at;
    let mut committed = 0;
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
                tracing::error!(topic, error = %e, "topic poll failed");
                tokio::time::sleep(backoff(3)).await;
                continue;
            }
        };
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            continue;
        };
        let (first, last) = (first.offset, last.offset);
        let batch = records
            .iter()
            .filter_map(|r| match serde_json::from_slice(&r.payload) {
                Ok(rec) => Some(rec),
                Err(e) => {
                    // A record this version cannot read would block the
                    // topic forever; it is logged and skipped.
                    tracing::error!(topic, offset = r.offset, error = %e, "undecodable record skipped");
                    None
                }
            })
            .collect();
        let applied = AppliedPosition {
            consumer: group,
            first,
            offset: last,
        };
        handler.handle(batch, applied).await;
        // Only what is on disk in the store may leave the topic.
        let durable = store.durable_position(group);
        if durable > committed {
            match consumer.commit(durable).await {
                Ok(()) => committed = durable,
                Err(e) => tracing::warn!(topic, error = %e, "offset commit failed; will retry"),
            }
        }
        metrics::gauge!("herald_topic_consumer_lag", "topic" => topic).set(consumer.lag() as f64);
    }
    tracing::info!(topic, "consumer stopped");
}
