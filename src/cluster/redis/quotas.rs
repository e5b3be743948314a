//! `Quotas` on Redis: one GCRA bucket per user, shared by every node.

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::scripts::TAKE_SEND;
use super::{redis_error, Names};
use crate::error::BackendResult;
use crate::service::backend::Quotas;

pub struct RedisQuotas {
    names: Names,
    conn: ConnectionManager,
    /// Milliseconds one send takes from the bucket (1000 / rate).
    per_send_ms: f64,
    /// How far ahead of now a bucket may run: the burst.
    tolerance_ms: f64,
}

impl RedisQuotas {
    pub fn new(conn: ConnectionManager, cluster: &str, rate: u32, burst: u32) -> RedisQuotas {
        let per_send_ms = 1000.0 / f64::from(rate.max(1));
        RedisQuotas {
            names: Names::new(cluster),
            conn,
            per_send_ms,
            tolerance_ms: per_send_ms * f64::from(burst.max(1).saturating_sub(1)),
        }
    }
}

#[async_trait]
impl Quotas for RedisQuotas {
    async fn take_send(&self, user_id: u64) -> BackendResult<bool> {
        let mut conn = self.conn.clone();
        let allowed: i64 = TAKE_SEND
            .key(self.names.quota(user_id))
            .arg(self.per_send_ms)
            .arg(self.tolerance_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(allowed == 1)
    }
}
