//! `Presence` on Redis: device counts per user and node, node heartbeats
//! with a lease on the node id, and notices over pub/sub channels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::RwLock;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::scripts::{CONNECT, DISCONNECT, HEARTBEAT, SWAP, SWEEP};
use super::{connect, redis_error, Names};
use crate::error::{BackendError, BackendResult};
use crate::model::dto::PresenceVo;
use crate::service::backend::{Locations, NodeMail, Presence};
use crate::service::notices::Notice;

/// How often a node beats.
const BEAT_EVERY: Duration = Duration::from_secs(2);
/// A node that has not beaten for this long is dead: its devices stop
/// counting and a live node sweeps them away.
const NODE_TTL: Duration = Duration::from_secs(10);
/// How long the node id lease lasts without renewal.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// Waits between attempts to (re)subscribe to the channels.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

/// What a channel message carries.
#[derive(Serialize, Deserialize)]
struct Envelope {
    from: u16,
    notice: Notice,
}

pub struct RedisPresence {
    node: u16,
    names: Names,
    conn: ConnectionManager,
    /// This process's lease token on the node id.
    token: String,
    /// The nodes that stopped beating, as the last heartbeat saw them
    /// (a node not seen yet counts as alive: it just started).
    dead: Arc<RwLock<Vec<u16>>>,
    mail: Arc<OnceLock<Arc<dyn NodeMail>>>,
    /// Whether this node listens to its channels now (it is then one of
    /// the receivers a `PUBLISH` to every node counts).
    listening: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
}

impl RedisPresence {
    /// Connects, takes the lease on `node` (failing if another process
    /// holds it), forgets the devices a previous process with this id
    /// left, and starts beating and listening.
    pub async fn open(url: &str, cluster: &str, node: u16) -> BackendResult<RedisPresence> {
        let (client, mut conn) = connect(url).await?;
        let names = Names::new(cluster);
        let token = format!("{:032x}", rand::random::<u128>());
        let taken: Option<String> = redis::cmd("SET")
            .arg(names.lease(node))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(LEASE_TTL.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        if taken.is_none() {
            return Err(BackendError::Other(format!(
                "node id {node} is held by another running node of cluster {cluster}: \
                 give each node its own HERALD_NODE_ID (a stopped node's id is free \
                 again {} s after it stopped)",
                LEASE_TTL.as_secs()
            )));
        }
        sweep(&mut conn, &names, node, true, &[]).await?;
        let first = heartbeat(&mut conn, &names, node, &token).await?;
        let (stop, stopped) = watch::channel(false);
        let presence = RedisPresence {
            node,
            names,
            conn,
            token,
            dead: Arc::new(RwLock::new(first.dead)),
            mail: Arc::new(OnceLock::new()),
            listening: Arc::default(),
            stop,
        };
        tokio::spawn(presence.beating(stopped.clone()));
        tokio::spawn(listen(
            client,
            presence.names.clone(),
            node,
            presence.mail.clone(),
            presence.listening.clone(),
            stopped,
        ));
        Ok(presence)
    }

    fn dead(&self) -> Vec<u16> {
        self.dead.read().clone()
    }

    /// The heartbeat task: beats, refreshes the dead nodes, sweeps dead
    /// ones.
    fn beating(
        &self,
        mut stopped: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (mut conn, names, node, token, dead) = (
            self.conn.clone(),
            self.names.clone(),
            self.node,
            self.token.clone(),
            self.dead.clone(),
        );
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(BEAT_EVERY) => {}
                    _ = stopped.changed() => return,
                }
                let beat = match heartbeat(&mut conn, &names, node, &token).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "presence heartbeat failed");
                        continue;
                    }
                };
                *dead.write() = beat.dead.clone();
                for &gone in &beat.dead {
                    if let Err(e) = sweep(&mut conn, &names, gone, false, &beat.dead).await {
                        tracing::warn!(error = %e, gone, "sweeping a dead node failed");
                    }
                }
            }
        }
    }

    async fn pipeline_query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> BackendResult<T> {
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn).await.map_err(redis_error)
    }
}

struct HeartbeatResult {
    dead: Vec<u16>,
}

/// One heartbeat; a lost lease ends the process: another process holds the
/// node id, and two must never mint ids with one.
async fn heartbeat(
    conn: &mut ConnectionManager,
    names: &Names,
    node: u16,
    token: &str,
) -> BackendResult<HeartbeatResult> {
    let (lease, now, nodes): (i64, i64, Vec<(u16, f64)>) = HEARTBEAT
        .key(names.nodes())
        .key(names.lease(node))
        .arg(node)
        .arg(token)
        .arg(LEASE_TTL.as_millis() as u64)
        .invoke_async(conn)
        .await
        .map_err(redis_error)?;
    match lease {
        0 => {
            tracing::error!(node, "another process holds this node id: stopping at once");
            std::process::exit(crate::app::LOST_NODE_ID_EXIT);
        }
        2 => tracing::warn!(node, "the node id lease had lapsed; taken again"),
        _ => {}
    }
    let since = now - NODE_TTL.as_millis() as i64;
    let dead = nodes
        .into_iter()
        .filter(|(_, beat)| (*beat as i64) < since)
        .map(|(n, _)| n)
        .collect();
    Ok(HeartbeatResult { dead })
}

/// Sweeps a node's devices away (`force`: even if it beats; a restarted
/// process clears what its predecessor left).
async fn sweep(
    conn: &mut ConnectionManager,
    names: &Names,
    node: u16,
    force: bool,
    dead: &[u16],
) -> BackendResult<()> {
    loop {
        let mut call = SWEEP.key(names.users(node));
        call.key(names.nodes())
            .arg(node)
            .arg(names.prefix())
            .arg(NODE_TTL.as_millis() as u64)
            .arg(u8::from(force));
        // The node swept is dead to the others' devices either way.
        call.arg(node);
        for n in dead {
            call.arg(*n);
        }
        let done: i64 = call.invoke_async(conn).await.map_err(redis_error)?;
        if done != 0 {
            if done == 1 && !force {
                tracing::info!(node, "swept the devices of a dead node");
            }
            return Ok(());
        }
    }
}

/// Receives the notices for this node (and for all) until stopped,
/// subscribing again whenever the connection drops.
async fn listen(
    client: redis::Client,
    names: Names,
    node: u16,
    mail: Arc<OnceLock<Arc<dyn NodeMail>>>,
    listening: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    let channels = [names.node_channel(node), names.all_channel()];
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channels[..]).await?;
            listening.store(true, Ordering::Release);
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                deliver(&mail, node, msg.get_payload_bytes());
            }
            Ok::<(), redis::RedisError>(())
        };
        let session = async {
            let ended = session.await;
            listening.store(false, Ordering::Release);
            ended
        };
        tokio::select! {
            ended = session => match ended {
                Ok(()) => tracing::warn!("the notice channels closed; subscribing again"),
                Err(e) => tracing::warn!(error = %e, "the notice channels failed; subscribing again"),
            },
            _ = stopped.changed() => return,
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}

fn deliver(mail: &OnceLock<Arc<dyn NodeMail>>, node: u16, payload: &[u8]) {
    let envelope: Envelope = match serde_json::from_slice(payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "an unreadable notice was dropped");
            return;
        }
    };
    if envelope.from == node {
        return;
    }
    match mail.get() {
        Some(mail) => mail.receive(envelope.notice),
        None => tracing::warn!("a notice before the node's mail was attached"),
    }
}

#[async_trait]
impl Presence for RedisPresence {
    fn node(&self) -> u16 {
        self.node
    }

    async fn device_connected(&self, user_id: u64, max_devices: usize) -> BackendResult<bool> {
        let mut conn = self.conn.clone();
        let mut call = CONNECT.key(self.names.devices(user_id));
        call.key(self.names.users(self.node))
            .arg(self.node)
            .arg(max_devices)
            .arg(user_id);
        for n in self.dead() {
            call.arg(n);
        }
        let counted: i64 = call.invoke_async(&mut conn).await.map_err(redis_error)?;
        Ok(counted == 1)
    }

    async fn device_disconnected(&self, user_id: u64) -> BackendResult<()> {
        let mut conn = self.conn.clone();
        let mut call = DISCONNECT.key(self.names.devices(user_id));
        call.key(self.names.users(self.node))
            .key(self.names.seen(user_id))
            .arg(self.node)
            .arg(user_id);
        for n in self.dead() {
            call.arg(n);
        }
        let _: i64 = call.invoke_async(&mut conn).await.map_err(redis_error)?;
        Ok(())
    }

    async fn presence(&self, user_ids: &[u64]) -> BackendResult<Vec<PresenceVo>> {
        let mut pipe = redis::pipe();
        for &u in user_ids {
            pipe.hgetall(self.names.devices(u)).get(self.names.seen(u));
        }
        let answers: Vec<(HashMap<u16, i64>, Option<i64>)> = pipe_pairs(self, &pipe).await?;
        let dead = self.dead();
        Ok(user_ids
            .iter()
            .zip(answers)
            .map(|(id, (devices, seen))| PresenceVo {
                user_id: id.to_string(),
                online: devices.iter().any(|(n, c)| *c > 0 && !dead.contains(n)),
                last_seen_at: seen,
            })
            .collect())
    }

    async fn locate(&self, user_ids: &[u64]) -> BackendResult<Locations> {
        let mut pipe = redis::pipe();
        for &u in user_ids {
            pipe.hkeys(self.names.devices(u));
        }
        let nodes_of: Vec<Vec<u16>> = self.pipeline_query(&pipe).await?;
        let dead = self.dead();
        let mut by_node: HashMap<u16, Vec<u64>> = HashMap::new();
        for (&user, nodes) in user_ids.iter().zip(nodes_of) {
            for n in nodes.into_iter().filter(|n| !dead.contains(n)) {
                by_node.entry(n).or_default().push(user);
            }
        }
        let mut nodes: Vec<(u16, Vec<u64>)> = by_node.into_iter().collect();
        for (_, users) in &mut nodes {
            users.sort_unstable();
        }
        Ok(Locations::Nodes(nodes))
    }

    async fn tell(&self, node: u16, notice: Notice) -> BackendResult<()> {
        let payload = serde_json::to_vec(&Envelope {
            from: self.node,
            notice,
        })?;
        let mut conn = self.conn.clone();
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(self.names.node_channel(node))
            .arg(payload)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        if receivers == 0 {
            return Err(BackendError::Other(format!("node {node} is not listening")));
        }
        Ok(())
    }

    async fn tell_all(&self, notice: Notice) -> BackendResult<()> {
        self.tell_all_counted(notice).await.map(|_| ())
    }

    async fn tell_all_counted(&self, notice: Notice) -> BackendResult<usize> {
        let payload = serde_json::to_vec(&Envelope {
            from: self.node,
            notice,
        })?;
        let mut conn = self.conn.clone();
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(self.names.all_channel())
            .arg(payload)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        // This node hears its own broadcasts too (and drops them).
        let me = i64::from(self.listening.load(Ordering::Acquire));
        Ok(usize::try_from(receivers - me).unwrap_or(0))
    }

    fn attach(&self, mail: Arc<dyn NodeMail>) {
        if self.mail.set(mail).is_err() {
            tracing::warn!("presence's mail was attached twice");
        }
    }

    async fn ping(&self) -> BackendResult<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    /// Leaves: the node's devices are swept and its lease released, so a
    /// successor may take the id at once.
    async fn close(&self) -> BackendResult<()> {
        let _ = self.stop.send(true);
        let mut conn = self.conn.clone();
        sweep(&mut conn, &self.names, self.node, true, &self.dead()).await?;
        let _: i64 = redis::cmd("ZREM")
            .arg(self.names.nodes())
            .arg(self.node)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let _: i64 = SWAP
            .key(self.names.lease(self.node))
            .arg(&self.token)
            .arg("")
            .arg(0)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}

/// Runs a pipeline of pairs of commands, answered as pairs.
async fn pipe_pairs<A, B>(p: &RedisPresence, pipe: &redis::Pipeline) -> BackendResult<Vec<(A, B)>>
where
    A: redis::FromRedisValue,
    B: redis::FromRedisValue,
{
    let flat: Vec<redis::Value> = p.pipeline_query(pipe).await?;
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        let a = A::from_redis_value(a).map_err(|e| BackendError::adapter("redis", e))?;
        let b = B::from_redis_value(b).map_err(|e| BackendError::adapter("redis", e))?;
        out.push((a, b));
    }
    Ok(out)
}
