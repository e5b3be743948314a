//! The durable topics on RocketMQ. A topic has `queues` queues, created at
//! start; a record goes to the queue of its route (`route % queues`; the
//! session id for the session topic), so a session's records keep their
//! order. Every node consumes in one consumer group per topic; the broker
//! gives each queue to one of them at a time.

mod client;
mod consumer;
mod producer;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rocketmq_model::common::message::message_queue::MessageQueue;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use client::rocket_failure;
pub use client::RocketRuntime;
use consumer::RocketConsumer;
use producer::RocketProducer;

use crate::error::{BackendError, BackendResult};
use crate::service::backend::{Durable, DurableTopic, Position, PublishOnce, TopicConsumer};

/// Records waiting per queue for their batch; beyond it a publisher waits.
const QUEUED_PER_QUEUE: usize = 4096;
/// A batch holds at most this many records and bytes (the broker refuses
/// messages over 4 MiB).
const BATCH_RECORDS: usize = 512;
const BATCH_BYTES: usize = 1024 * 1024;
/// How long topic creation may take to show in the route.
const CREATE_WITHIN: Duration = Duration::from_secs(15);

/// The RocketMQ client of one node: its runtime and producer, shared by
/// its topics (the last one closed stops them).
pub struct RocketClient {
    runtime: Arc<RocketRuntime>,
    producer: RocketProducer,
    namesrv: String,
    /// Names topics and groups apart from other clusters on the broker.
    prefix: String,
    broker_cluster: String,
    queues: u32,
    open_topics: AtomicUsize,
}

impl RocketClient {
    /// Connects to the name server(s) `namesrv`.
    pub async fn start(
        namesrv: &str,
        cluster: &str,
        broker_cluster: &str,
        queues: u32,
    ) -> BackendResult<Arc<RocketClient>> {
        let runtime = RocketRuntime::new()?;
        let prefix = format!("herald-{cluster}");
        let producer =
            RocketProducer::start(runtime.client(), namesrv, &format!("{prefix}-producer")).await?;
        Ok(Arc::new(RocketClient {
            runtime,
            producer,
            namesrv: namesrv.to_string(),
            prefix,
            broker_cluster: broker_cluster.to_string(),
            queues,
            open_topics: AtomicUsize::new(0),
        }))
    }

    /// Opens (creating it if needed) topic `name`.
    pub async fn topic(self: &Arc<Self>, name: &str) -> BackendResult<RocketTopic> {
        let topic = format!("{}-{name}", self.prefix);
        let mqs = self
            .producer
            .create_topic(&self.broker_cluster, &topic, self.queues, CREATE_WITHIN)
            .await?;
        let mut senders = Vec::with_capacity(mqs.len());
        let mut loops = Vec::with_capacity(mqs.len());
        for mq in mqs {
            let (tx, rx) = mpsc::channel(QUEUED_PER_QUEUE);
            senders.push(tx);
            loops.push(tokio::spawn(send_loop(
                self.producer.clone(),
                topic.clone(),
                mq,
                rx,
            )));
        }
        self.open_topics.fetch_add(1, Ordering::AcqRel);
        Ok(RocketTopic {
            name: name.to_string(),
            topic,
            client: self.clone(),
            senders: Mutex::new(Some(Arc::new(senders))),
            loops: Mutex::new(loops),
            consumers: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        })
    }

    async fn topic_closed(&self) {
        if self.open_topics.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.producer.shutdown().await;
            self.runtime.shutdown().await;
        }
    }
}

/// A record on its way into its queue's next batch.
struct Outgoing {
    payload: Bytes,
    done: oneshot::Sender<BackendResult<Position>>,
}

pub struct RocketTopic {
    name: String,
    topic: String,
    client: Arc<RocketClient>,
    /// One per queue, by queue id; gone once closing.
    senders: Mutex<Option<Arc<Vec<mpsc::Sender<Outgoing>>>>>,
    loops: Mutex<Vec<JoinHandle<()>>>,
    consumers: Mutex<Vec<Arc<consumer::Shared>>>,
    closed: AtomicBool,
}

/// Sends the records queued for one queue, in order, in batches: one
/// round trip to the broker (and one flush there) for all that gathered
/// while the previous batch was sent.
async fn send_loop(
    producer: RocketProducer,
    topic: String,
    mq: MessageQueue,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    let partition = mq.queue_id().max(0) as u32;
    let batch_records = metrics::histogram!("herald_topic_write_records", "topic" => topic.clone());
    let mut batch = Vec::with_capacity(BATCH_RECORDS);
    while let Some(first) = rx.recv().await {
        let mut bytes = first.payload.len();
        batch.push(first);
        while batch.len() < BATCH_RECORDS && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(more) => {
                    bytes += more.payload.len();
                    batch.push(more);
                }
                Err(_) => break,
            }
        }
        batch_records.record(batch.len() as f64);
        let payloads = batch.iter().map(|o| o.payload.clone()).collect();
        match producer.send_batch(&topic, &mq, payloads).await {
            Ok(first) => {
                for (i, o) in batch.drain(..).enumerate() {
                    let offset = first + i as u64;
                    let _ = o.done.send(Ok(Position { partition, offset }));
                }
            }
            Err(e) => {
                let text = e.to_string();
                tracing::warn!(topic, partition, error = %text, "a batch was not stored");
                for o in batch.drain(..) {
                    let _ = o.done.send(Err(rocket_failure(text.clone())));
                }
            }
        }
    }
}

impl RocketTopic {
    fn senders(&self) -> BackendResult<Arc<Vec<mpsc::Sender<Outgoing>>>> {
        self.senders.lock().clone().ok_or(BackendError::Closed)
    }
}

#[async_trait]
impl DurableTopic for RocketTopic {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, route: u64, payload: Vec<u8>) -> BackendResult<Durable<Position>> {
        let senders = self.senders()?;
        let queue = (route % senders.len().max(1) as u64) as usize;
        let (done, stored) = oneshot::channel();
        let outgoing = Outgoing {
            payload: Bytes::from(payload),
            done,
        };
        // Queued in call order: the route's records keep their order.
        senders[queue]
            .send(outgoing)
            .await
            .map_err(|_| BackendError::Closed)?;
        Ok(Box::pin(async move {
            stored.await.map_err(|_| BackendError::Closed)?
        }))
    }

    /// Publishes; repeats of the key are left to the store's unique index
    /// (a `KeyedTopic` in front answers most of them before).
    async fn publish_once(
        &self,
        route: u64,
        _key: String,
        payload: Vec<u8>,
        _receipt: Vec<u8>,
    ) -> BackendResult<Durable<PublishOnce>> {
        let durable = self.publish(route, payload).await?;
        Ok(Box::pin(async move {
            Ok(PublishOnce::Published(durable.await?))
        }))
    }

    async fn consumer(&self, group: &'static str) -> BackendResult<Box<dyn TopicConsumer>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BackendError::Closed);
        }
        let c = &self.client;
        let group = format!("{}-{group}", c.prefix);
        let consumer =
            RocketConsumer::start(c.runtime.client(), &c.namesrv, &group, &self.topic).await?;
        self.consumers.lock().push(consumer.shared());
        Ok(Box::new(consumer))
    }

    async fn ping(&self) -> BackendResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BackendError::Closed);
        }
        let queues = self.client.producer.queues(&self.topic).await?;
        if queues.is_empty() {
            return Err(rocket_failure(format!("no broker routes {}", self.topic)));
        }
        Ok(())
    }

    /// Sends what was queued, leaves the consumer groups (their queues go
    /// to the other nodes at once), and stops the client with the last
    /// topic.
    async fn close(&self) -> BackendResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.senders.lock().take();
        let loops = std::mem::take(&mut *self.loops.lock());
        for l in loops {
            let _ = l.await;
        }
        let consumers = std::mem::take(&mut *self.consumers.lock());
        futures_util::future::join_all(consumers.iter().map(|c| c.shutdown())).await;
        self.client.topic_closed().await;
        Ok(())
    }
}
