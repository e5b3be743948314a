//! `Quotas` on Redis: one GCRA bucket per user, and the throttling
//! windows, shared by every node.

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use std::time::Duration;

use super::scripts::{TAKE_SEND, WINDOW_COUNT, WINDOW_PEEK, WINDOW_UNCOUNT};
use super::{redis_error, Names};
use crate::error::BackendResult;
use crate::service::backend::{Quotas, Tally, WindowCount};

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

    async fn count(&self, tally: &Tally, window: Duration) -> BackendResult<WindowCount> {
        let mut conn = self.conn.clone();
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let (count, left_ms): (u64, i64) = WINDOW_COUNT
            .key(self.names.tally(tally))
            .arg(window_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(window_count(count, left_ms))
    }

    async fn peek(&self, tally: &Tally) -> BackendResult<WindowCount> {
        let mut conn = self.conn.clone();
        let (count, left_ms): (u64, i64) = WINDOW_PEEK
            .key(self.names.tally(tally))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(window_count(count, left_ms))
    }

    async fn uncount(&self, tally: &Tally) -> BackendResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = WINDOW_UNCOUNT
            .key(self.names.tally(tally))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn clear(&self, tally: &Tally) -> BackendResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(self.names.tally(tally))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}

/// A window count as the scripts answer it: the count and the
/// milliseconds until the window resets (negative when it has no expiry).
fn window_count(count: u64, left_ms: i64) -> WindowCount {
    WindowCount {
        count,
        resets_in: Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)),
    }
}
