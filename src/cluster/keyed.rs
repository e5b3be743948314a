//! A topic with idempotency keys in Redis in front of it. Redis answers
//! most repeats at once; should it be unreachable, sends go on without it
//! and the store's unique index on (`senderId`, `clientMessageId`) answers
//! repeats through the session consumer (`StoredBatch::known`).

use std::sync::Arc;

use async_trait::async_trait;

use super::redis::{Claim, SendKeys};
use crate::error::BackendResult;
use crate::service::backend::{Durable, DurableTopic, PublishOnce, TopicConsumer};

pub struct KeyedTopic {
    inner: Arc<dyn DurableTopic>,
    keys: Arc<SendKeys>,
}

impl KeyedTopic {
    pub fn new(inner: Arc<dyn DurableTopic>, keys: Arc<SendKeys>) -> KeyedTopic {
        KeyedTopic { inner, keys }
    }
}

#[async_trait]
impl DurableTopic for KeyedTopic {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn publish(
        &self,
        route: u64,
        payload: Vec<u8>,
    ) -> BackendResult<Durable<crate::service::backend::Position>> {
        self.inner.publish(route, payload).await
    }

    async fn publish_once(
        &self,
        route: u64,
        key: String,
        payload: Vec<u8>,
        receipt: Vec<u8>,
    ) -> BackendResult<Durable<PublishOnce>> {
        let keyed = match self.keys.claim(&key, &receipt).await {
            Ok(Claim::Done(original)) => {
                return Ok(Box::pin(
                    async move { Ok(PublishOnce::Duplicate(original)) },
                ))
            }
            Ok(Claim::Mine) => true,
            Err(e) => {
                metrics::counter!("herald_idempotency_key_misses_total").increment(1);
                tracing::warn!(error = %e, "idempotency keys unreachable; the store's index answers repeats");
                false
            }
        };
        let published = self.inner.publish(route, payload).await;
        let keys = self.keys.clone();
        let durable = match published {
            Ok(d) => d,
            Err(e) => {
                if keyed {
                    release(&keys, &key, &receipt).await;
                }
                return Err(e);
            }
        };
        Ok(Box::pin(async move {
            match durable.await {
                Ok(position) => {
                    if keyed {
                        if let Err(e) = keys.done(&key, &receipt).await {
                            // A repeat then waits for the key, takes it
                            // over, and the store's index answers it.
                            tracing::warn!(error = %e, "an idempotency key stayed pending");
                        }
                    }
                    Ok(PublishOnce::Published(position))
                }
                Err(e) => {
                    if keyed {
                        release(&keys, &key, &receipt).await;
                    }
                    Err(e)
                }
            }
        }))
    }

    async fn consumer(&self, group: &'static str) -> BackendResult<Box<dyn TopicConsumer>> {
        self.inner.consumer(group).await
    }

    async fn ping(&self) -> BackendResult<()> {
        self.inner.ping().await
    }

    async fn close(&self) -> BackendResult<()> {
        self.inner.close().await
    }
}

/// Frees the key of a send that was not published, so its retry can be.
async fn release(keys: &SendKeys, key: &str, receipt: &[u8]) {
    if let Err(e) = keys.release(key, receipt).await {
        // A retry waits for the pending key, then takes it over.
        tracing::warn!(error = %e, "an idempotency key was not released");
    }
}
