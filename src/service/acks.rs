//! Inbox status changes. Every ack (STOMP ACK, `/app/ack`, REST, auto-ack
//! on write, REST pull) is published to the ack topic; the ack-cycle
//! consumer applies it and stops redelivery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use super::backend::DurableTopic;
use super::watermark::Watermark;
use crate::error::{AppError, AppResult};
use crate::model::{parse_id, AckCommand, AckEnvelope, AckOutcome, AckRecord, InboxStatus};

/// How long a caller waits for its ack to be applied.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Acks gathered into one record batch before publishing.
const BATCH_MAX: usize = 1024;
const BATCH_WINDOW: Duration = Duration::from_millis(2);

pub struct AckService {
    topic: Arc<dyn DurableTopic>,
    waiters: Mutex<HashMap<u64, oneshot::Sender<AckOutcome>>>,
    next_token: AtomicU64,
    soon: mpsc::Sender<SoonAck>,
    /// Acks accepted by `ack_soon` so far.
    soon_queued: AtomicU64,
    /// (acks of `ack_soon` published so far, highest offset they used).
    soon_published: watch::Sender<(u64, u64)>,
    /// Highest ack-topic offset the ack-cycle consumer has applied.
    applied: Watermark,
}

/// An ack of one pushed inbox entry: (user, message id, inboxSeq, status).
type SoonAck = (u64, u64, i64, InboxStatus);

/// Longest wait of `settle`: a stalled ack pipeline delays reads, never
/// blocks them.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Parses an `ackType` (`received` or `read`).
pub fn parse_ack_type(s: &str) -> AppResult<InboxStatus> {
    match s {
        "received" | "delivered" => Ok(InboxStatus::Delivered),
        "read" => Ok(InboxStatus::Read),
        _ => Err(AppError::invalid("ackType must be `received` or `read`")),
    }
}

/// Parses 1-500 message ids.
pub fn parse_message_ids(raw: &[String]) -> AppResult<Vec<u64>> {
    if raw.is_empty() || raw.len() > 500 {
        return Err(AppError::invalid("messageIds must hold 1-500 ids"));
    }
    raw.iter().map(|r| parse_id("messageIds", r)).collect()
}

impl AckService {
    /// Starts the service and its batching task.
    pub fn start(topic: Arc<dyn DurableTopic>) -> Arc<AckService> {
        let (soon, rx) = mpsc::channel(64 * 1024);
        let svc = Arc::new(AckService {
            topic,
            waiters: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            soon,
            soon_queued: AtomicU64::new(0),
            soon_published: watch::channel((0, 0)).0,
            applied: Watermark::default(),
        });
        tokio::spawn(batch_loop(Arc::downgrade(&svc), rx));
        svc
    }

    /// Applies `command` for `user_id` and waits for the outcome.
    pub async fn apply(&self, user_id: u64, command: AckCommand) -> AppResult<AckOutcome> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(token, tx);
        let record = AckRecord {
            user_id,
            command,
            reply_token: Some(token),
        };
        let published = publish_batch(&*self.topic, AckEnvelope::One(record)).await;
        if let Err(e) = published {
            self.waiters.lock().remove(&token);
            return Err(e);
        }
        match tokio::time::timeout(APPLY_TIMEOUT, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            _ => {
                self.waiters.lock().remove(&token);
                Err(AppError::Unavailable("ack was not applied in time".into()))
            }
        }
    }

    /// Queues a single-message ack to be published with others shortly
    /// (auto-ack on write, STOMP ACK frames): the hot path, never waits.
    pub fn ack_soon(&self, user_id: u64, message_id: u64, inbox_seq: i64, status: InboxStatus) {
        if self
            .soon
            .try_send((user_id, message_id, inbox_seq, status))
            .is_ok()
        {
            self.soon_queued.fetch_add(1, Ordering::Relaxed);
        } else {
            // The entry stays pending: redelivery or sync recovers it.
            metrics::counter!("herald_acks_dropped_total").increment(1);
        }
    }

    /// Waits until every ack queued by `ack_soon` before this call is
    /// applied, so a read that follows an ACK frame sees its effect.
    pub async fn settle(&self) {
        let queued = self.soon_queued.load(Ordering::Relaxed);
        let mut published = self.soon_published.subscribe();
        let offset =
            match tokio::time::timeout(SETTLE_TIMEOUT, published.wait_for(|(n, _)| *n >= queued))
                .await
            {
                Ok(Ok(state)) => state.1,
                _ => return,
            };
        if offset == 0 {
            return;
        }
        self.applied.wait_for(offset, SETTLE_TIMEOUT).await;
    }

    /// The ack-cycle consumer applied everything up to `offset`.
    pub fn applied_up_to(&self, offset: u64) {
        self.applied.advance(offset);
    }

    /// Hands the outcome of a record to its waiting caller, if any.
    pub fn complete(&self, token: u64, outcome: AckOutcome) {
        if let Some(tx) = self.waiters.lock().remove(&token) {
            let _ = tx.send(outcome);
        }
    }
}

/// Publishes one ack-topic record and waits until it is durable.
async fn publish_batch(topic: &dyn DurableTopic, envelope: AckEnvelope) -> AppResult<u64> {
    let payload =
        serde_json::to_vec(&envelope).map_err(|e| AppError::Unavailable(e.to_string()))?;
    let durable = topic.publish(payload).await?;
    Ok(durable.await?)
}

async fn batch_loop(svc: std::sync::Weak<AckService>, mut rx: mpsc::Receiver<SoonAck>) {
    let mut buf = Vec::with_capacity(BATCH_MAX);
    while let Some(first) = rx.recv().await {
        buf.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while buf.len() < BATCH_MAX {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => buf.push(item),
                _ => break,
            }
        }
        let Some(svc) = svc.upgrade() else { return };
        let items = buf.len() as u64;
        let mut grouped: HashMap<(u64, InboxStatus), Vec<(u64, i64)>> = HashMap::new();
        for (user, mid, inbox_seq, status) in buf.drain(..) {
            grouped
                .entry((user, status))
                .or_default()
                .push((mid, inbox_seq));
        }
        let records = grouped
            .into_iter()
            .map(|((user_id, status), entries)| AckRecord {
                user_id,
                command: AckCommand::Entries { entries, status },
                reply_token: None,
            })
            .collect();
        let highest = match publish_batch(&*svc.topic, AckEnvelope::Batch(records)).await {
            Ok(offset) => offset,
            Err(e) => {
                tracing::warn!(error = %e, items, "acks were not committed");
                0
            }
        };
        // Failed items count as done too: `settle` must not wait for them.
        svc.soon_published.send_modify(|(n, max)| {
            *n += items;
            *max = (*max).max(highest);
        });
    }
}
