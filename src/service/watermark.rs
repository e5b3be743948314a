//! A monotonic offset others can wait on: how far a topic is committed
//! (its head), stored (session consumer) or applied (ack consumer).
//!
//! Sends are answered once their record is durable *and* stored, and REST
//! reads wait for acks queued before them, so a client reads back what it
//! was told had happened.

use std::time::Duration;

use tokio::sync::watch;

pub struct Watermark {
    offset: watch::Sender<u64>,
}

impl Watermark {
    pub fn new(start: u64) -> Watermark {
        Watermark {
            offset: watch::channel(start).0,
        }
    }

    /// Everything up to `offset` is done; going back is ignored.
    pub fn advance(&self, offset: u64) {
        self.offset.send_if_modified(|o| {
            let forward = offset > *o;
            if forward {
                *o = offset;
            }
            forward
        });
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
        let mut rx = self.offset.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|o| *o >= offset))
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
