//! A monotonic counter others can wait on: how far something numbered in
//! order got (the ack batches applied, a topic's durable head).

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

pub struct Watermark {
    offset: watch::Sender<u64>,
    /// `wait_for` callers by the offset they wait for. Each advance wakes
    /// only those it satisfies: a watch receiver per waiter would wake every
    /// in-flight send at every advance (quadratic under load).
    waiters: Mutex<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
}

impl Watermark {
    pub fn new(start: u64) -> Watermark {
        Watermark {
            offset: watch::channel(start).0,
            waiters: Mutex::new(BTreeMap::new()),
        }
    }

    /// Everything up to `offset` is done; going back is ignored.
    pub fn advance(&self, offset: u64) {
        let forward = self.offset.send_if_modified(|o| {
            let forward = offset > *o;
            if forward {
                *o = offset;
            }
            forward
        });
        if !forward {
            return;
        }
        let reached = {
            let mut waiters = self.waiters.lock();
            let later = match offset.checked_add(1) {
                Some(next) => waiters.split_off(&next),
                None => BTreeMap::new(),
            };
            std::mem::replace(&mut *waiters, later)
        };
        for tx in reached.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    pub fn get(&self) -> u64 {
        *self.offset.borrow()
    }

    /// A receiver woken at every advance.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.offset.subscribe()
    }

    /// Waits until `offset` is reached; `false` if `timeout` passed first.
    pub async fn wait_for(&self, offset: u64, timeout: Duration) -> bool {
        Self::reached(self.wait(offset), timeout).await
    }

    /// What `reached` waits on for `offset` (`None`: reached already).
    /// Taken without waiting, so a caller may hold a lock meanwhile.
    pub fn wait(&self, offset: u64) -> Option<oneshot::Receiver<()>> {
        let mut waiters = self.waiters.lock();
        // Checked under the lock: an advance that raced past this check
        // drains the map after it, and so sees the entry added here.
        if self.get() >= offset {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        waiters.entry(offset).or_default().push(tx);
        Some(rx)
    }

    /// Waits for what `wait` gave; `false` if `timeout` passed first.
    pub async fn reached(wait: Option<oneshot::Receiver<()>>, timeout: Duration) -> bool {
        let Some(rx) = wait else { return true };
        // A waiter that timed out stays queued until an advance passes it.
        tokio::time::timeout(timeout, rx)
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark::new(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn waits_until_advanced_and_never_goes_back() {
        let w = Arc::new(Watermark::default());
        assert!(!w.wait_for(3, Duration::from_millis(20)).await);
        let w2 = w.clone();
        let waiter = tokio::spawn(async move { w2.wait_for(3, Duration::from_secs(5)).await });
        w.advance(2);
        w.advance(3);
        assert!(waiter.await.unwrap());
        w.advance(1);
        assert_eq!(w.get(), 3);
        assert!(w.wait_for(1, Duration::from_millis(1)).await);
    }
}
