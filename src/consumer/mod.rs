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
use crate::service::backend::{Checkpoint, TopicConsumer};
use crate::service::readiness::ConsumerState;

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
    /// Handles the records of `at` (passing `at` on to the store, which
    /// may save the position with what it wrote); must not give up (see
    /// `retry`).
    async fn handle(&mut self, batch: Vec<Self::Record>, at: Checkpoint);
}

/// Where a consume loop runs: its topic (a metric label), its consumer
/// group, and where it reports its state (readiness, lag).
pub struct Consuming {
    pub topic: &'static str,
    pub group: &'static str,
    pub state: Arc<ConsumerState>,
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
        state,
    } = at;
    let lag_gauge = metrics::gauge!("herald_topic_consumer_lag", "topic" => topic);
    loop {
        state.report(consumer.assigned(), consumer.lag());
        // On shutdown, finish what was published before stopping (unless
        // other nodes take the partitions over).
        if *shutdown.borrow() && (consumer.lag() == 0 || !consumer.drain_on_stop()) {
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
        let checkpoint = Checkpoint {
            consumer: group,
            partition: first.position.partition,
            first: first.position.offset,
            last: last.position.offset,
        };
        let batch = records
            .iter()
            .filter_map(|r| match serde_json::from_slice(&r.payload) {
                Ok(rec) => Some(rec),
                Err(e) => {
                    // A record this version cannot read would block the
                    // topic forever; it is logged and skipped.
                    tracing::error!(topic, position = ?r.position, error = %e, "undecodable record skipped");
                    None
                }
            })
            .collect();
        handler.handle(batch, checkpoint).await;
        if let Err(e) = consumer.commit(checkpoint).await {
            tracing::warn!(topic, error = %e, "offset commit failed; will retry");
        }
        lag_gauge.set(consumer.lag() as f64);
    }
    state.stopped();
    tracing::info!(topic, "consumer stopped");
}
