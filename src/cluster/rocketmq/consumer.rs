//! A consumer group member on the lite pull consumer: async polls and
//! explicit commits fit the consume loop's "poll, write, commit" (the
//! orderly push consumer calls a synchronous listener on a blocking pool,
//! and its broker-side queue locks outlive a killed node for up to a
//! minute). Each queue is consumed by one member of the group at a time;
//! during a hand-over two members may both process a few records, which
//! the consumers absorb (the store is idempotent, `seq` is guarded by a
//! unique index).
//!
//! Commits stay in the client's memory until pushed to the broker: the
//! client would push them every 5 s after a 10 s delay (a member killed
//! early had its successor redo everything); the background task here
//! pushes them every 500 ms, and reports assignment and lag.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rocketmq_client_rust::{ClientRuntime, DefaultLitePullConsumer, DefaultMQProducer};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;

use super::client::{cannot_connect, rocket_error};
use crate::error::{BackendError, BackendResult};
use crate::service::backend::{Checkpoint, Position, TopicConsumer, TopicRecord};

/// Messages per pull request (so per polled batch).
const PULL_BATCH: i32 = 256;
/// How long the broker holds a pull with nothing to answer (a pull under
/// way holds a stopping consumer up: the client's 20 s made a stop take
/// that long), and how long the client waits for such an answer.
const PULL_SUSPEND_MS: u64 = 2000;
const PULL_SUSPEND_TIMEOUT_MS: u64 = 5000;
/// How long one poll of the client waits (a poll is cancelled only
/// between two of these), and how many empty ones make an empty answer
/// (the consume loop then reports lag and assignment).
const POLL_WAIT_MS: u64 = 200;
const EMPTY_POLLS: u32 = 5;
/// How often commits are pushed to the broker.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// How often assignment and lag are read, and the broker's reachability
/// checked.
const CHECK_EVERY: u32 = 2;
/// A consumer whose broker is routed again but unreachable for this long
/// is replaced (the transport's circuit breaker, as for the producer).
const HEAL_ANYWAY_AFTER: Duration = Duration::from_secs(5);

/// What the consume loop and the background task share.
pub struct Shared {
    runtime: Arc<ClientRuntime>,
    namesrv: String,
    group: String,
    topic: String,
    current: RwLock<DefaultLitePullConsumer>,
    /// The next offset to read of each queue this member committed (the
    /// client's own answer for a queue never committed is a warning).
    committed: Mutex<HashMap<u32, i64>>,
    /// The next offset to poll of each queue this member polled.
    polled: Mutex<HashMap<u32, i64>>,
    assigned: AtomicBool,
    lag: AtomicU64,
    stopped: AtomicBool,
}

impl Shared {
    fn client(&self) -> DefaultLitePullConsumer {
        self.current.read().clone()
    }

    /// Pushes the commits of every held queue, and leaves the group (the
    /// others take its queues at once).
    pub async fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let client = self.client();
        flush(self, &client).await;
        client.shutdown().await;
    }
}

async fn start_client(
    runtime: &Arc<ClientRuntime>,
    namesrv: &str,
    group: &str,
    topic: &str,
) -> BackendResult<DefaultLitePullConsumer> {
    let c = DefaultLitePullConsumer::builder(runtime.clone())
        .name_server_addr(namesrv.to_string())
        .consumer_group(group.to_string())
        // A new group starts at the beginning (the default skips history).
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .pull_batch_size(PULL_BATCH)
        .broker_suspend_max_time_millis(PULL_SUSPEND_MS)
        .consumer_timeout_millis_when_suspend(PULL_SUSPEND_TIMEOUT_MS)
        .auto_commit(false)
        .build()
        .map_err(rocket_error)?;
    c.subscribe(topic).await.map_err(rocket_error)?;
    c.start().await.map_err(rocket_error)?;
    Ok(c)
}

pub struct RocketConsumer {
    shared: Arc<Shared>,
    /// Batches polled from other queues than the one being returned.
    stash: VecDeque<Vec<TopicRecord>>,
}

impl RocketConsumer {
    pub async fn start(
        runtime: Arc<ClientRuntime>,
        namesrv: &str,
        group: &str,
        topic: &str,
    ) -> BackendResult<RocketConsumer> {
        let client = start_client(&runtime, namesrv, group, topic).await?;
        let shared = Arc::new(Shared {
            runtime,
            namesrv: namesrv.to_string(),
            group: group.to_string(),
            topic: topic.to_string(),
            current: RwLock::new(client),
            committed: Mutex::new(HashMap::new()),
            polled: Mutex::new(HashMap::new()),
            assigned: AtomicBool::new(false),
            lag: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        tokio::spawn(background(shared.clone()));
        Ok(RocketConsumer {
            shared,
            stash: VecDeque::new(),
        })
    }

    /// What the topic keeps to stop this consumer when it closes.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

fn records(batch: Vec<Arc<MessageExt>>) -> Vec<TopicRecord> {
    batch
        .into_iter()
        .map(|m| TopicRecord {
            position: Position {
                partition: m.queue_id().max(0) as u32,
                offset: m.queue_offset().max(0) as u64,
            },
            payload: m.body().unwrap_or_default(),
        })
        .collect()
}

#[async_trait]
impl TopicConsumer for RocketConsumer {
    async fn poll(&mut self, max: usize) -> BackendResult<Vec<TopicRecord>> {
        if let Some(stashed) = self.stash.pop_front() {
            return Ok(stashed);
        }
        let client = self.shared.client();
        let mut empty = 0;
        let mut out = loop {
            if self.shared.stopped.load(Ordering::Acquire) {
                return Err(BackendError::Closed);
            }
            let batch = client.poll_with_timeout_zero_copy(POLL_WAIT_MS).await;
            if !batch.is_empty() {
                break records(batch);
            }
            empty += 1;
            if empty >= EMPTY_POLLS {
                return Ok(Vec::new());
            }
        };
        // More of what is buffered already, as long as it is of the same
        // queue (a batch is one partition).
        let partition = out[0].position.partition;
        while out.len() < max {
            let more = client.poll_with_timeout_zero_copy(0).await;
            let Some(first) = more.first() else { break };
            if first.queue_id().max(0) as u32 != partition {
                self.stash.push_back(records(more));
                break;
            }
            out.extend(records(more));
        }
        if let Some(last) = out.last() {
            let next = i64::try_from(last.position.offset + 1).unwrap_or(i64::MAX);
            self.shared.polled.lock().insert(partition, next);
        }
        Ok(out)
    }

    async fn commit(&mut self, at: Checkpoint) -> BackendResult<()> {
        let client = self.shared.client();
        let assigned = client.assignment().await.map_err(rocket_error)?;
        // A queue given to another member meanwhile is not committed: the
        // new owner resumes from what was pushed to the broker.
        let Some(mq) = assigned
            .into_iter()
            .find(|mq| mq.queue_id().max(0) as u32 == at.partition)
        else {
            return Ok(());
        };
        // The next offset to read; kept in memory, pushed by `flush`.
        let next = i64::try_from(at.last + 1).unwrap_or(i64::MAX);
        client
            .commit_with_map(HashMap::from([(mq, next)]), false)
            .await;
        Ok(())
    }

    fn lag(&self) -> u64 {
        self.shared.lag.load(Ordering::Relaxed)
    }

    fn assigned(&self) -> bool {
        self.shared.assigned.load(Ordering::Relaxed)
    }

    /// Other nodes take the queues over (at once: leaving the group
    /// notifies them).
    fn drain_on_stop(&self) -> bool {
        false
    }
}

/// Pushes commits, reports assignment and lag, and replaces the client
/// when only the transport's circuit breaker keeps it from a broker that
/// is back.
async fn background(s: Arc<Shared>) {
    let mut tick = 0u32;
    let mut unreachable_since: Option<Instant> = None;
    let mut left_route = false;
    let mut prober: Option<DefaultMQProducer> = None;
    while !s.stopped.load(Ordering::Acquire) {
        tokio::time::sleep(FLUSH_EVERY).await;
        let client = s.client();
        flush(&s, &client).await;
        tick += 1;
        if !tick.is_multiple_of(CHECK_EVERY) {
            continue;
        }
        let reachable = report(&s, &client).await;
        if reachable {
            unreachable_since = None;
            left_route = false;
            continue;
        }
        let since = *unreachable_since.get_or_insert_with(Instant::now);
        if !routed(&s, &mut prober).await {
            left_route = true;
            continue;
        }
        if !left_route && since.elapsed() < HEAL_ANYWAY_AFTER {
            continue;
        }
        if let Ok(fresh) = start_client(&s.runtime, &s.namesrv, &s.group, &s.topic).await {
            let old = std::mem::replace(&mut *s.current.write(), fresh);
            tracing::info!(group = %s.group, "the RocketMQ consumer was replaced after a broker outage");
            unreachable_since = None;
            left_route = false;
            tokio::spawn(async move { old.shutdown().await });
        }
    }
    if let Some(mut p) = prober {
        p.shutdown().await;
    }
}

/// Updates assignment and lag; `false` if the broker cannot be reached.
async fn report(s: &Shared, client: &DefaultLitePullConsumer) -> bool {
    let Ok(assigned) = client.assignment().await else {
        return true;
    };
    s.assigned.store(!assigned.is_empty(), Ordering::Relaxed);
    // A queue that moved to another member moves on there: what this one
    // committed of it is stale, should the queue come back.
    let held: Vec<u32> = assigned
        .iter()
        .map(|mq| mq.queue_id().max(0) as u32)
        .collect();
    s.committed.lock().retain(|q, _| held.contains(q));
    s.polled.lock().retain(|q, _| held.contains(q));
    let mut lag = 0u64;
    for mq in &assigned {
        let max = match client.max_offset(mq).await {
            Ok(m) => m,
            Err(e) if cannot_connect(&e) => return false,
            Err(_) => continue,
        };
        // Published, not polled yet (a queue not polled since it came
        // here counts once its first batch is: its records come soon).
        let queue = mq.queue_id().max(0) as u32;
        let next = s.polled.lock().get(&queue).copied().unwrap_or(max);
        lag += (max - next).max(0) as u64;
    }
    s.lag.store(lag, Ordering::Relaxed);
    true
}

/// Whether the name server routes the topic: asked through a producer,
/// since the consumer answers from the route it cached.
async fn routed(s: &Shared, prober: &mut Option<DefaultMQProducer>) -> bool {
    if prober.is_none() {
        let mut p = DefaultMQProducer::builder(s.runtime.clone())
            .producer_group(format!("{}-route-probe", s.group))
            .name_server_addr(s.namesrv.clone())
            .build();
        if p.start().await.is_ok() {
            *prober = Some(p);
        }
    }
    match prober.as_mut() {
        Some(p) => matches!(p.fetch_publish_message_queues(&s.topic).await, Ok(q) if !q.is_empty()),
        None => false,
    }
}

/// Pushes this member's commits of every queue it holds to the broker.
/// (With `persist`, the client forgets the offsets of queues not in the
/// map, so the map holds every held queue this member committed.)
async fn flush(s: &Shared, client: &DefaultLitePullConsumer) {
    let Ok(assigned) = client.assignment().await else {
        return;
    };
    let offsets: HashMap<_, _> = {
        let mine = s.committed.lock();
        assigned
            .into_iter()
            .filter_map(|mq| {
                let next = *mine.get(&(mq.queue_id().max(0) as u32))?;
                Some((mq, next))
            })
            .collect()
    };
    if !offsets.is_empty() {
        client.commit_with_map(offsets, true).await;
    }
}
