//! The producer: one client shared by every publisher (its requests are
//! pipelined on one connection per broker), replaced by a fresh one when a
//! restarted broker is back but the transport still refuses to connect.
//!
//! The transport keeps a circuit breaker per broker address that is not
//! configurable: five failed connects shut it for 30 s. After a broker
//! restart, publishing would stall that long; instead, once the name
//! server lists the topic's route again (a killed broker leaves it at
//! once and comes back when it registered again), a new client (with a
//! breaker of its own) takes over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::RwLock;
use rocketmq_client_rust::{ClientRuntime, DefaultMQProducer};
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_model::result::SendStatus;

use super::client::{cannot_connect, rocket_error, rocket_failure};
use crate::error::BackendResult;

/// How long a send may take before it fails (the broker may still have
/// stored it: a retry can then store it twice, which consumers absorb).
const SEND_TIMEOUT_MS: u32 = 3000;
/// How often the healer looks for the broker's route, and how long it
/// waits before replacing a client whose broker never left the route.
const HEAL_POLL: Duration = Duration::from_millis(500);
const HEAL_ANYWAY_AFTER: Duration = Duration::from_secs(5);
/// How long a replaced client lives on for the sends it still carries.
const RETIRE_AFTER: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct RocketProducer {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<ClientRuntime>,
    namesrv: String,
    group: String,
    current: RwLock<DefaultMQProducer>,
    healing: AtomicBool,
}

async fn start_client(
    runtime: &Arc<ClientRuntime>,
    namesrv: &str,
    group: &str,
) -> BackendResult<DefaultMQProducer> {
    let mut p = DefaultMQProducer::builder(runtime.clone())
        .producer_group(group.to_string())
        .name_server_addr(namesrv.to_string())
        .send_msg_timeout(SEND_TIMEOUT_MS)
        // Sends to a chosen queue are never retried by the client anyway;
        // Herald's callers decide.
        .retry_times_when_send_failed(0)
        .build();
    p.start().await.map_err(rocket_error)?;
    Ok(p)
}

impl RocketProducer {
    pub async fn start(
        runtime: Arc<ClientRuntime>,
        namesrv: &str,
        group: &str,
    ) -> BackendResult<RocketProducer> {
        let client = start_client(&runtime, namesrv, group).await?;
        Ok(RocketProducer {
            inner: Arc::new(Inner {
                runtime,
                namesrv: namesrv.to_string(),
                group: group.to_string(),
                current: RwLock::new(client),
                healing: AtomicBool::new(false),
            }),
        })
    }

    fn client(&self) -> DefaultMQProducer {
        self.inner.current.read().clone()
    }

    /// Creates `topic` (or gives it `queues` queues) on the brokers of
    /// `broker_cluster`, and waits until the name server routes it.
    /// Idempotent. Created before any send: a topic a broker creates by
    /// itself on a first send gets its default queue count, and growing it
    /// later would move sessions to other queues.
    pub async fn create_topic(
        &self,
        broker_cluster: &str,
        topic: &str,
        queues: u32,
        within: Duration,
    ) -> BackendResult<Vec<MessageQueue>> {
        let mut client = self.client();
        client
            .create_topic(broker_cluster, topic, queues as i32, HashMap::new())
            .await
            .map_err(rocket_error)?;
        let deadline = Instant::now() + within;
        loop {
            let routed = self.queues(topic).await;
            match routed {
                Ok(mqs) if mqs.len() as u32 == queues => return Ok(mqs),
                _ if Instant::now() < deadline => tokio::time::sleep(HEAL_POLL).await,
                Ok(mqs) => {
                    return Err(rocket_failure(format!(
                        "topic {topic} is routed with {} queues, not {queues}",
                        mqs.len()
                    )))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The topic's writable queues as the name server routes them, by id.
    pub async fn queues(&self, topic: &str) -> BackendResult<Vec<MessageQueue>> {
        let mut client = self.client();
        let mut mqs = client
            .fetch_publish_message_queues(topic)
            .await
            .map_err(rocket_error)?;
        mqs.sort_by_key(|mq| mq.queue_id());
        Ok(mqs)
    }

    /// Stores `payloads`, in this order, in queue `mq`, once the broker has
    /// them (with the durability its flush mode gives); returns the offset
    /// of the first.
    pub async fn send_batch(
        &self,
        topic: &str,
        mq: &MessageQueue,
        payloads: Vec<Bytes>,
    ) -> BackendResult<u64> {
        let mut messages = Vec::with_capacity(payloads.len());
        for body in payloads {
            let m = Message::builder()
                .topic(topic)
                .body(body)
                .build()
                .map_err(|e| rocket_failure(format!("cannot build a message: {e}")))?;
            messages.push(m);
        }
        let sent = self
            .client()
            .send_batch_to_queue(messages, mq.clone())
            .await;
        let result = match sent {
            Ok(r) => r,
            Err(e) => {
                if cannot_connect(&e) {
                    self.heal(topic);
                }
                return Err(rocket_error(e));
            }
        };
        if result.send_status != SendStatus::SendOk {
            // Stored, but not as durably as the broker is configured to.
            return Err(rocket_failure(format!(
                "the broker answered {:?}",
                result.send_status
            )));
        }
        Ok(result.queue_offset)
    }

    /// Replaces the client once the broker is routed again (see the
    /// module's comment); one healer at a time.
    fn heal(&self, topic: &str) {
        if self.inner.healing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut left_route = false;
            loop {
                tokio::time::sleep(HEAL_POLL).await;
                match this.queues(&topic).await {
                    Ok(q) if !q.is_empty() => {}
                    _ => {
                        left_route = true;
                        continue;
                    }
                }
                if !left_route && started.elapsed() < HEAL_ANYWAY_AFTER {
                    continue;
                }
                let inner = &this.inner;
                if let Ok(fresh) = start_client(&inner.runtime, &inner.namesrv, &inner.group).await
                {
                    let old = std::mem::replace(&mut *inner.current.write(), fresh);
                    tracing::info!(
                        topic,
                        "the RocketMQ producer was replaced after a broker outage"
                    );
                    tokio::spawn(async move {
                        tokio::time::sleep(RETIRE_AFTER).await;
                        let mut old = old;
                        old.shutdown().await;
                    });
                    break;
                }
            }
            this.inner.healing.store(false, Ordering::Release);
        });
    }

    pub async fn shutdown(&self) {
        let mut client = self.client();
        client.shutdown().await;
    }
}
