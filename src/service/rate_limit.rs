//! Per-key token buckets (sends per user, requests per address).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The longest wait reported (a zero rate would be an infinite one).
const MAX_WAIT: Duration = Duration::from_secs(3600);

use parking_lot::Mutex;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A token bucket per key: `rate` tokens per second, at most `burst`.
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Copy> RateLimiter<K> {
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; `false` when the bucket is empty.
    pub fn try_acquire(&self, key: K) -> bool {
        self.try_acquire_at(key, Instant::now()).is_ok()
    }

    /// Takes one token for `key`, or says how long until the bucket holds
    /// one (for `Retry-After`).
    pub fn try_acquire_or_wait(&self, key: K) -> Result<(), Duration> {
        self.try_acquire_at(key, Instant::now())
    }

    fn try_acquire_at(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock();
        if buckets.len() > 100_000 {
            // Forget buckets that have refilled completely: they hold nothing.
            let full_after = self.burst / self.rate.max(f64::MIN_POSITIVE);
            buckets.retain(|_, b| now.duration_since(b.updated).as_secs_f64() < full_after);
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - b.tokens;
            Err(Duration::from_secs_f64(missing / self.rate.max(f64::MIN_POSITIVE)).min(MAX_WAIT))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let l = RateLimiter::new(10, 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.try_acquire_at(1u64, t0).is_ok());
        }
        let wait = l.try_acquire_at(1, t0).unwrap_err();
        assert!(wait > Duration::from_millis(99) && wait <= Duration::from_millis(100));
        assert!(l.try_acquire_at(2, t0).is_ok(), "buckets are per key");
        assert!(l.try_acquire_at(1, t0 + Duration::from_millis(100)).is_ok());
        assert!(l
            .try_acquire_at(1, t0 + Duration::from_millis(100))
            .is_err());
    }
}
