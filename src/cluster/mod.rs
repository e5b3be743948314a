//! The cluster bundle: documents in MongoDB, the session and ack topics in
//! RocketMQ, presence, push routing, idempotency keys and cluster-wide
//! quotas in Redis. Every node of a cluster runs the same bundle on the
//! same three services; `HERALD_NODE_ID` tells them apart.

mod keyed;
pub mod mongo;
pub mod redis;
pub mod rocketmq;

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::service::backend::{Backends, DurableTopic};
use keyed::KeyedTopic;
use mongo::MongoStore;
use redis::{RedisPresence, RedisQuotas, SendKeys};
use rocketmq::RocketClient;

/// Opens the cluster backends. A service that cannot be reached fails the
/// start with its name: a node must not serve half connected.
pub async fn open_backends(cfg: &Config) -> anyhow::Result<Backends> {
    let cluster = &cfg.cluster_name;
    let presence = RedisPresence::open(&cfg.redis_url, cluster, cfg.node_id)
        .await
        .with_context(|| format!("cannot use Redis at {}", cfg.redis_url))?;
    let (_, conn) = redis::connect(&cfg.redis_url).await?;
    let quotas = RedisQuotas::new(conn.clone(), cluster, cfg.send_rate_per_sec, cfg.send_burst);
    let keys = Arc::new(SendKeys::new(conn, cluster));
    let database = mongo::database_name(&cfg.mongodb_uri, cluster);
    let store = MongoStore::open(&cfg.mongodb_uri, &database)
        .await
        .with_context(|| format!("cannot use MongoDB database {database}"))?;
    let jwt_secret = if cfg.jwt_secret.is_empty() {
        let candidate: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        store.shared_secret(&candidate).await?
    } else {
        cfg.jwt_secret.as_bytes().to_vec()
    };
    let rocket = RocketClient::start(
        &cfg.rocketmq_namesrv,
        cluster,
        &cfg.rocketmq_broker_cluster,
        cfg.rocketmq_queues,
    )
    .await
    .with_context(|| format!("cannot use RocketMQ at {}", cfg.rocketmq_namesrv))?;
    let sessions: Arc<dyn DurableTopic> = Arc::new(rocket.topic("session").await?);
    let ack_topic = Arc::new(rocket.topic("ack").await?);
    Ok(Backends {
        mode: "cluster",
        store: Arc::new(store),
        session_topic: Arc::new(KeyedTopic::new(sessions, keys)),
        ack_topic,
        presence: Arc::new(presence),
        quotas: Arc::new(quotas),
        jwt_secret,
        // A pair's session is created in MongoDB when its id is asked for.
        replay_before_serving: false,
    })
}
