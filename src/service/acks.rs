//! Inbox status changes. Every ack (STOMP ACK, `/app/ack`, REST, auto-ack
//! on write, REST pull) is published to the ack topic; the ack-cycle
//! consumer applies it and stops redelivery.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use super::backend::DurableTopic;
use super::notices::{AckReply, Notice};
use super::redelivery::RedeliveryTracker;
use super::relay::Relay;
use super::watermark::Watermark;
use crate::error::{AppError, AppResult};
use crate::model::{AckCommand, AckEnvelope, AckOutcome, AckRecord, InboxStatus};

/// How long a caller waits for its ack to be applied.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Acks gathered into one record batch before publishing.
const BATCH_MAX: usize = 1024;
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// Publishes acks to the ack topic and takes the replies of the ack-cycle
/// consumer, which may run on another node: every record names the node
/// and the token its publisher waits on here.
pub struct AckService {
    node: u16,
    topic: Arc<dyn DurableTopic>,
    /// To the nodes holding a reader's other devices (see `settle_for`).
    relay: Arc<Relay>,
    /// Told which of this node's client-ack pushes were acked.
    tracker: Arc<RedeliveryTracker>,
    /// What each reply token is for.
    pending: Mutex<HashMap<u64, Waiting>>,
    next_token: AtomicU64,
    soon: mpsc::Sender<SoonAck>,
    /// Acks accepted by `ack_soon` so far.
    soon_queued: AtomicU64,
    /// (acks of `ack_soon` published so far, number of the last batch).
    soon_published: watch::Sender<(u64, u64)>,
    /// Batches of `ack_soon` applied, numbered from 1.
    batches: Mutex<Batches>,
}

/// A reply token's waiter.
enum Waiting {
    /// An `apply` call.
    Call(oneshot::Sender<AckOutcome>),
    /// A batch of `ack_soon`, by number.
    Batch(u64),
    /// Another node applying what it queued (`settle_for`).
    Settle(oneshot::Sender<()>),
}

/// Which batches were applied: every one up to `through`, and some after.
#[derive(Default)]
struct Batches {
    through: Watermark,
    ahead: BTreeSet<u64>,
}

impl Batches {
    fn done(&mut self, batch: u64) {
        if batch > self.through.get() {
            self.ahead.insert(batch);
        }
        self.advance_from(self.through.get());
    }

    /// Counts every batch up to `batch` applied: replies that were lost
    /// must not hold later reads forever.
    fn give_up_through(&mut self, batch: u64) {
        self.ahead.retain(|&b| b > batch);
        self.advance_from(self.through.get().max(batch));
    }

    /// Moves `through` from `from` over the batches applied after it.
    fn advance_from(&mut self, mut from: u64) {
        while self.ahead.remove(&(from + 1)) {
            from += 1;
        }
        self.through.advance(from);
    }
}

/// An ack of one pushed inbox entry: (user, message id, inboxSeq, status).
type SoonAck = (u64, u64, i64, InboxStatus);

/// Longest wait of `settle`: a stalled ack pipeline delays reads, never
/// blocks them.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

impl AckService {
    /// Starts the service and its batching task.
    pub fn start(
        topic: Arc<dyn DurableTopic>,
        tracker: Arc<RedeliveryTracker>,
        relay: Arc<Relay>,
    ) -> Arc<AckService> {
        let (soon, rx) = mpsc::channel(64 * 1024);
        let svc = Arc::new(AckService {
            node: relay.node(),
            topic,
            relay,
            tracker,
            pending: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            soon,
            soon_queued: AtomicU64::new(0),
            soon_published: watch::channel((0, 0)).0,
            batches: Mutex::default(),
        });
        tokio::spawn(batch_loop(Arc::downgrade(&svc), rx));
        svc
    }

    fn token(&self, waiting: Waiting) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().insert(token, waiting);
        token
    }

    /// Applies `command` for `user_id` and waits for the outcome.
    pub async fn apply(&self, user_id: u64, command: AckCommand) -> AppResult<AckOutcome> {
        let (tx, rx) = oneshot::channel();
        let token = self.token(Waiting::Call(tx));
        let record = AckRecord {
            user_id,
            command,
            reply_token: Some(token),
            reply_node: self.node,
        };
        let published = publish_batch(&*self.topic, user_id, AckEnvelope::One(record)).await;
        if let Err(e) = published {
            self.pending.lock().remove(&token);
            return Err(e);
        }
        match tokio::time::timeout(APPLY_TIMEOUT, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            _ => {
                self.pending.lock().remove(&token);
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
        let batch =
            match tokio::time::timeout(SETTLE_TIMEOUT, published.wait_for(|(n, _)| *n >= queued))
                .await
            {
                Ok(Ok(state)) => state.1,
                _ => return,
            };
        if batch == 0 {
            return;
        }
        let applied = self.batches.lock().through.wait(batch);
        if !Watermark::reached(applied, SETTLE_TIMEOUT).await {
            tracing::warn!(batch, "acks were not applied in time; reading anyway");
            self.batches.lock().give_up_through(batch);
        }
    }

    /// Like `settle`, and also on the other nodes holding devices of
    /// `user_id`: a read sees the acks of all the user's devices, whatever
    /// node each is connected to.
    pub async fn settle_for(&self, user_id: u64) {
        let others = self.relay.other_nodes_of(user_id).await;
        let mut answers = Vec::with_capacity(others.len());
        for node in others {
            let (tx, rx) = oneshot::channel();
            let token = self.token(Waiting::Settle(tx));
            let ask = Notice::Settle {
                token,
                reply_to: self.node,
            };
            self.relay.tell(node, ask).await;
            answers.push((token, rx));
        }
        self.settle().await;
        for (token, rx) in answers {
            if tokio::time::timeout(SETTLE_TIMEOUT, rx).await.is_err() {
                self.pending.lock().remove(&token);
                tracing::warn!("another node did not settle its acks in time; reading anyway");
            }
        }
    }

    /// Another node applied the acks it had queued (`settle_for`).
    pub fn settled_elsewhere(&self, token: u64) {
        if let Some(Waiting::Settle(tx)) = self.pending.lock().remove(&token) {
            let _ = tx.send(());
        }
    }

    /// The ack-cycle consumer (here or on another node) applied the
    /// records published with `reply.token`.
    pub fn replied(&self, reply: AckReply) {
        for (user_id, outcome) in &reply.outcomes {
            self.tracker.resolve(*user_id, &outcome.no_longer_pending);
        }
        let waiting = self.pending.lock().remove(&reply.token);
        match waiting {
            Some(Waiting::Call(tx)) => {
                let outcome = reply.outcomes.into_iter().next().map(|(_, o)| o);
                let _ = tx.send(outcome.unwrap_or_default());
            }
            Some(Waiting::Batch(batch)) => self.batches.lock().done(batch),
            Some(Waiting::Settle(_)) | None => {}
        }
    }
}

/// Publishes one ack-topic record and waits until it is durable. Acks of
/// one user share a partition, so they are applied in order.
async fn publish_batch(
    topic: &dyn DurableTopic,
    route: u64,
    envelope: AckEnvelope,
) -> AppResult<()> {
    let payload =
        serde_json::to_vec(&envelope).map_err(|e| AppError::Unavailable(e.to_string()))?;
    let durable = topic.publish(route, payload).await?;
    durable.await?;
    Ok(())
}

async fn batch_loop(svc: std::sync::Weak<AckService>, mut rx: mpsc::Receiver<SoonAck>) {
    let mut buf = Vec::with_capacity(BATCH_MAX);
    let mut batch = 0;
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
        batch += 1;
        let items = buf.len() as u64;
        let token = svc.token(Waiting::Batch(batch));
        let mut grouped: HashMap<(u64, InboxStatus), Vec<(u64, i64)>> = HashMap::new();
        for (user, mid, inbox_seq, status) in buf.drain(..) {
            grouped
                .entry((user, status))
                .or_default()
                .push((mid, inbox_seq));
        }
        // Statuses only rise, so the order of batches does not matter:
        // they spread over the partitions.
        let route = batch;
        let records = grouped
            .into_iter()
            .map(|((user_id, status), entries)| AckRecord {
                user_id,
                command: AckCommand::Entries { entries, status },
                reply_token: Some(token),
                reply_node: svc.node,
            })
            .collect();
        if let Err(e) = publish_batch(&*svc.topic, route, AckEnvelope::Batch(records)).await {
            tracing::warn!(error = %e, items, "acks were not committed");
            // `settle` must not wait for them.
            svc.pending.lock().remove(&token);
            svc.batches.lock().done(batch);
        }
        svc.soon_published.send_modify(|(n, last)| {
            *n += items;
            *last = batch;
        });
    }
}
