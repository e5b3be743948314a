//! Redis: which node holds each user's devices (refreshed by a node
//! heartbeat, so a dead node's entries stop counting), the channels that
//! carry notices between nodes, the lease that keeps a node id to one
//! process, idempotency keys in front of MongoDB's unique index, and
//! cluster-wide quotas.
//!
//! Keys, under `herald:<cluster>:`:
//! - `nodes` (sorted set): node id -> its last heartbeat (ms);
//! - `lease:<node>`: the token of the process holding the node id;
//! - `devices:<user>` (hash): node id -> devices the user has there;
//! - `users:<node>` (set): users with devices on the node (its sweep);
//! - `seen:<user>`: when the user's last device left (ms);
//! - `send:<sender>:<clientMessageId>`: a send's receipt (24 h);
//! - `quota:send:<user>`: the send bucket's theoretical arrival time;
//! - `tally:<kind>:<name>`: a throttling window's count, expiring with
//!   the window (failed logins per username and per address,
//!   registrations per address).
//!
//! Channels: `chan:<node>` (one node) and `chan:all` (every node).

mod keys;
mod presence;
mod quotas;
mod scripts;

pub use keys::{Claim, SendKeys};
pub use presence::RedisPresence;
pub use quotas::RedisQuotas;

use redis::aio::ConnectionManager;

use crate::error::BackendError;
use crate::service::backend::Tally;

/// A Redis error as a backend error.
pub fn redis_error(e: redis::RedisError) -> BackendError {
    BackendError::adapter("redis", e)
}

/// Key and channel names of one cluster.
#[derive(Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(cluster: &str) -> Names {
        Names {
            prefix: format!("herald:{cluster}:"),
        }
    }
    /// What every key of the cluster starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    fn key(&self, rest: std::fmt::Arguments) -> String {
        format!("{}{rest}", self.prefix)
    }
    pub fn nodes(&self) -> String {
        self.key(format_args!("nodes"))
    }
    pub fn lease(&self, node: u16) -> String {
        self.key(format_args!("lease:{node}"))
    }
    pub fn devices(&self, user: u64) -> String {
        self.key(format_args!("devices:{user}"))
    }
    pub fn users(&self, node: u16) -> String {
        self.key(format_args!("users:{node}"))
    }
    pub fn seen(&self, user: u64) -> String {
        self.key(format_args!("seen:{user}"))
    }
    pub fn send(&self, key: &str) -> String {
        self.key(format_args!("send:{key}"))
    }
    pub fn quota(&self, user: u64) -> String {
        self.key(format_args!("quota:send:{user}"))
    }
    pub fn tally(&self, tally: &Tally) -> String {
        match tally {
            Tally::LoginFailures(username) => self.key(format_args!("tally:login:{username}")),
            Tally::LoginFailuresFrom(ip) => self.key(format_args!("tally:login-from:{ip}")),
            Tally::Registrations(ip) => self.key(format_args!("tally:register:{ip}")),
        }
    }
    pub fn node_channel(&self, node: u16) -> String {
        self.key(format_args!("chan:{node}"))
    }
    pub fn all_channel(&self) -> String {
        self.key(format_args!("chan:all"))
    }
}

/// Opens a connection that reconnects by itself.
pub async fn connect(url: &str) -> Result<(redis::Client, ConnectionManager), BackendError> {
    let client = redis::Client::open(url).map_err(redis_error)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
        .set_response_timeout(Some(std::time::Duration::from_secs(2)))
        .set_number_of_retries(2);
    let conn = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(redis_error)?;
    Ok((client, conn))
}
