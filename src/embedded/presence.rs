//! Presence and quotas of a node that is the whole deployment: every
//! device is here, so this process's memory is the truth.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::error::{BackendError, BackendResult};
use crate::model::dto::PresenceVo;
use crate::model::ids::now_ms;
use crate::service::backend::{Locations, NodeMail, Presence, Quotas};
use crate::service::notices::Notice;
use crate::service::rate_limit::RateLimiter;

pub struct LocalPresence {
    node: u16,
    state: Mutex<Devices>,
}

#[derive(Default)]
struct Devices {
    /// Devices connected per online user.
    online: HashMap<u64, usize>,
    /// When each user's last device left (ms).
    last_seen: HashMap<u64, i64>,
}

impl LocalPresence {
    pub fn new(node: u16) -> LocalPresence {
        LocalPresence {
            node,
            state: Mutex::default(),
        }
    }
}

#[async_trait]
impl Presence for LocalPresence {
    fn node(&self) -> u16 {
        self.node
    }

    async fn device_connected(&self, user_id: u64, max_devices: usize) -> BackendResult<bool> {
        let mut st = self.state.lock();
        let n = st.online.entry(user_id).or_default();
        if *n >= max_devices {
            if *n == 0 {
                st.online.remove(&user_id);
            }
            return Ok(false);
        }
        *n += 1;
        Ok(true)
    }

    async fn device_disconnected(&self, user_id: u64) -> BackendResult<()> {
        let mut st = self.state.lock();
        let Some(n) = st.online.get_mut(&user_id) else {
            return Ok(());
        };
        *n -= 1;
        if *n == 0 {
            st.online.remove(&user_id);
            st.last_seen.insert(user_id, now_ms());
        }
        Ok(())
    }

    async fn presence(&self, user_ids: &[u64]) -> BackendResult<Vec<PresenceVo>> {
        let st = self.state.lock();
        Ok(user_ids
            .iter()
            .map(|id| PresenceVo {
                user_id: id.to_string(),
                online: st.online.contains_key(id),
                last_seen_at: st.last_seen.get(id).copied(),
            })
            .collect())
    }

    async fn locate(&self, _user_ids: &[u64]) -> BackendResult<Locations> {
        Ok(Locations::AllHere)
    }

    async fn tell(&self, node: u16, _notice: Notice) -> BackendResult<()> {
        Err(BackendError::Other(format!(
            "node {node} is not this node, and there is no other"
        )))
    }

    async fn tell_all(&self, _notice: Notice) -> BackendResult<()> {
        Ok(())
    }

    fn attach(&self, _mail: Arc<dyn NodeMail>) {}

    async fn ping(&self) -> BackendResult<()> {
        Ok(())
    }

    async fn close(&self) -> BackendResult<()> {
        Ok(())
    }
}

/// Quotas counted in this process.
pub struct LocalQuotas {
    sends: RateLimiter<u64>,
}

impl LocalQuotas {
    pub fn new(rate: u32, burst: u32) -> LocalQuotas {
        LocalQuotas {
            sends: RateLimiter::new(rate, burst),
        }
    }
}

#[async_trait]
impl Quotas for LocalQuotas {
    async fn take_send(&self, user_id: u64) -> BackendResult<bool> {
        Ok(self.sends.try_acquire(user_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn devices_are_capped_and_last_seen_is_kept() {
        let p = LocalPresence::new(0);
        assert!(p.device_connected(7, 2).await.unwrap());
        assert!(p.device_connected(7, 2).await.unwrap());
        assert!(!p.device_connected(7, 2).await.unwrap(), "a third is over");
        assert!(!p.device_connected(8, 0).await.unwrap());
        let seen = p.presence(&[7, 8]).await.unwrap();
        assert!(seen[0].online && !seen[1].online && seen[1].last_seen_at.is_none());
        p.device_disconnected(7).await.unwrap();
        assert!(p.presence(&[7]).await.unwrap()[0].online);
        p.device_disconnected(7).await.unwrap();
        let seen = p.presence(&[7]).await.unwrap();
        assert!(!seen[0].online && seen[0].last_seen_at.is_some());
        assert_eq!(p.locate(&[7]).await.unwrap(), Locations::AllHere);
    }
}
