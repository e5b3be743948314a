//! Presence and quotas of a node that is the whole deployment: every
//! device is here, so this process's memory is the truth.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::error::{BackendError, BackendResult};
use crate::model::dto::PresenceVo;
use crate::model::ids::now_ms;
use crate::service::backend::{Locations, NodeMail, Presence, Quotas, Tally, WindowCount};
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
    windows: Mutex<Windows>,
}

/// Windows of `Tally`s kept before the oldest are dropped: an attacker
/// who makes up usernames (or addresses) must not grow the map without
/// bound.
const MAX_WINDOWS: usize = 100_000;

/// The window counters, each until its end.
#[derive(Default)]
struct Windows {
    open: HashMap<Tally, Window>,
}

struct Window {
    count: u64,
    ends: Instant,
}

impl Windows {
    fn count(&mut self, tally: &Tally, length: Duration, now: Instant) -> WindowCount {
        if let Some(w) = self.open.get_mut(tally) {
            if w.ends > now {
                w.count += 1;
                return WindowCount {
                    count: w.count,
                    resets_in: w.ends - now,
                };
            }
        }
        self.make_room(now);
        let ends = now + length;
        self.open.insert(tally.clone(), Window { count: 1, ends });
        WindowCount {
            count: 1,
            resets_in: length,
        }
    }

    fn peek(&self, tally: &Tally, now: Instant) -> WindowCount {
        match self.open.get(tally) {
            Some(w) if w.ends > now => WindowCount {
                count: w.count,
                resets_in: w.ends - now,
            },
            _ => WindowCount {
                count: 0,
                resets_in: Duration::ZERO,
            },
        }
    }

    fn uncount(&mut self, tally: &Tally, now: Instant) {
        if let Some(w) = self.open.get_mut(tally) {
            if w.ends > now {
                w.count = w.count.saturating_sub(1);
            }
        }
    }

    /// Drops the windows that are over; if all are still open, the half
    /// that ends soonest (what they counted is forgotten early: the bound
    /// on memory wins over the count of a flood).
    fn make_room(&mut self, now: Instant) {
        if self.open.len() < MAX_WINDOWS {
            return;
        }
        self.open.retain(|_, w| w.ends > now);
        if self.open.len() >= MAX_WINDOWS {
            let mut ends: Vec<Instant> = self.open.values().map(|w| w.ends).collect();
            let (_, median, _) = ends.select_nth_unstable(MAX_WINDOWS / 2);
            let median = *median;
            self.open.retain(|_, w| w.ends > median);
            tracing::warn!(
                kept = self.open.len(),
                "too many throttling windows: dropped the half ending soonest"
            );
        }
    }
}

impl LocalQuotas {
    pub fn new(rate: u32, burst: u32) -> LocalQuotas {
        LocalQuotas {
            sends: RateLimiter::new(rate, burst),
            windows: Mutex::default(),
        }
    }
}

#[async_trait]
impl Quotas for LocalQuotas {
    async fn take_send(&self, user_id: u64) -> BackendResult<bool> {
        Ok(self.sends.try_acquire(user_id))
    }

    async fn count(&self, tally: &Tally, window: Duration) -> BackendResult<WindowCount> {
        Ok(self.windows.lock().count(tally, window, Instant::now()))
    }

    async fn peek(&self, tally: &Tally) -> BackendResult<WindowCount> {
        Ok(self.windows.lock().peek(tally, Instant::now()))
    }

    async fn uncount(&self, tally: &Tally) -> BackendResult<()> {
        self.windows.lock().uncount(tally, Instant::now());
        Ok(())
    }

    async fn clear(&self, tally: &Tally) -> BackendResult<()> {
        self.windows.lock().open.remove(tally);
        Ok(())
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

    #[tokio::test]
    async fn windows_count_from_their_first_event() {
        let q = LocalQuotas::new(1, 1);
        let a = Tally::LoginFailures("alice".into());
        let b = Tally::LoginFailures("bob".into());
        let minute = Duration::from_secs(60);
        assert_eq!(q.count(&a, minute).await.unwrap().count, 1);
        let second = q.count(&a, minute).await.unwrap();
        assert_eq!(second.count, 2);
        assert!(second.resets_in <= minute && second.resets_in > Duration::from_secs(59));
        assert_eq!(q.count(&b, minute).await.unwrap().count, 1, "per tally");
        q.uncount(&a).await.unwrap();
        assert_eq!(q.peek(&a).await.unwrap().count, 1);
        assert_eq!(q.count(&a, minute).await.unwrap().count, 2);
        let none = Tally::Registrations("192.0.2.1".parse().unwrap());
        assert_eq!(q.peek(&none).await.unwrap().count, 0);
        q.clear(&a).await.unwrap();
        assert_eq!(q.count(&a, minute).await.unwrap().count, 1);
        let short = Tally::LoginFailures("carol".into());
        q.count(&short, Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let again = q.count(&short, minute).await.unwrap();
        assert_eq!(again.count, 1, "an ended window starts over");
    }

    #[test]
    fn windows_stay_bounded() {
        let mut w = Windows::default();
        let now = Instant::now();
        for i in 0..MAX_WINDOWS + 10 {
            let end = Duration::from_secs(60 + i as u64);
            w.count(&Tally::LoginFailures(i.to_string()), end, now);
        }
        assert!(w.open.len() <= MAX_WINDOWS);
        assert!(w.open.len() > MAX_WINDOWS / 3, "only the soonest ending go");
        let last = Tally::LoginFailures((MAX_WINDOWS + 9).to_string());
        assert!(w.open.contains_key(&last), "the newest is kept");
    }
}
