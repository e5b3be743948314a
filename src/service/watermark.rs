//! How far the session consumer has stored the session topic. A send is
//! answered once its record is durable *and* stored in the inboxes, so a
//! client that got its `SendAck` (or 202) reads its message back at once.

use std::time::Duration;

use tokio::sync::watch;

pub struct StoredWatermark {
    offset: watch::Sender<u64>,
}

impl Default for StoredWatermark {
    fn default() -> Self {
        StoredWatermark {
            offset: watch::channel(0).0,
        }
    }
}

impl StoredWatermark {
    /// Everything up to `offset` is stored.
    pub fn advance(&self, offset: u64) {
        self.offset.send_if_modified(|o| {
            if offset > *o {
                *o = offset;
                true
            } else {
                false
            }
        });
    }

    /// Waits until `offset` is stored; `false` if `timeout` passed first.
    pub async fn wait_for(&self, offset: u64, timeout: Duration) -> bool {
        let mut rx = self.offset.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|o| *o >= offset))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn waits_until_advanced() {
        let w = Arc::new(StoredWatermark::default());
        assert!(!w.wait_for(3, Duration::from_millis(20)).await);
        let w2 = w.clone();
        let waiter = tokio::spawn(async move { w2.wait_for(3, Duration::from_secs(5)).await });
        w.advance(2);
        w.advance(3);
        assert!(waiter.await.unwrap());
        assert!(w.wait_for(1, Duration::from_millis(1)).await);
    }
}
