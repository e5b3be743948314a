//! The node's live client connections, so that stopping can ask them to
//! leave and wait until they did. poem's graceful shutdown waits for HTTP
//! requests only: a WebSocket is detached from its HTTP connection once
//! upgraded, so without this a stopping node drained its consumers while
//! clients were still sending, and dropped the sockets mid-frame at exit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Every connection of the node; cheap to clone.
#[derive(Clone, Default)]
pub struct LiveConnections {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken when the last connection left.
    emptied: Notify,
}

#[derive(Default)]
struct State {
    stopping: bool,
    next_id: u64,
    /// The signal that asks each live connection to leave. One `Notify`
    /// per connection: its loop polls it at every turn, and one shared by
    /// all would be a lock every connection takes at every frame.
    live: HashMap<u64, Arc<Notify>>,
}

impl LiveConnections {
    /// Counts a new connection in; `None` once the node is stopping.
    pub fn enter(&self) -> Option<LiveConnection> {
        let mut state = self.inner.state.lock();
        if state.stopping {
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        let leave = Arc::new(Notify::new());
        state.live.insert(id, leave.clone());
        Some(LiveConnection {
            shared: self.inner.clone(),
            id,
            leave,
        })
    }

    /// Asks every live connection to leave, and lets no new one in.
    pub fn ask_to_leave(&self) {
        let mut state = self.inner.state.lock();
        state.stopping = true;
        for leave in state.live.values() {
            // Kept as a permit if the connection is not waiting right now.
            leave.notify_one();
        }
    }

    /// Whether the node is stopping (connections were asked to leave).
    pub fn stopping(&self) -> bool {
        self.inner.state.lock().stopping
    }

    /// How many connections are live.
    pub fn count(&self) -> usize {
        self.inner.state.lock().live.len()
    }

    /// Waits until no connection is live; false if some still were after
    /// `within`.
    pub async fn all_left(&self, within: Duration) -> bool {
        let emptied = async {
            loop {
                let notified = self.inner.emptied.notified();
                tokio::pin!(notified);
                // Registered before the check: a leave between the two wakes it.
                notified.as_mut().enable();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(within, emptied).await.is_ok()
    }
}

/// One live connection; dropping it counts it out.
pub struct LiveConnection {
    shared: Arc<Shared>,
    id: u64,
    leave: Arc<Notify>,
}

impl LiveConnection {
    /// Resolves once the node asks connections to leave (once: poll it
    /// again only while not asked yet).
    pub async fn asked_to_leave(&self) {
        self.leave.notified().await;
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        let emptied = {
            let mut state = self.shared.state.lock();
            state.live.remove(&self.id);
            state.live.is_empty()
        };
        if emptied {
            self.shared.emptied.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn connections_are_asked_to_leave_and_counted_out() {
        let live = LiveConnections::default();
        assert!(!live.stopping());
        let first = live.enter().expect("a running node lets connections in");
        let second = live.enter().expect("a running node lets connections in");
        assert_eq!(live.count(), 2);
        assert!(
            !live.all_left(SHORT).await,
            "two connections are still live"
        );

        let asked = tokio::time::timeout(SHORT, first.asked_to_leave()).await;
        assert!(asked.is_err(), "nobody asked to leave yet");
        live.ask_to_leave();
        tokio::time::timeout(SHORT, first.asked_to_leave())
            .await
            .expect("asked to leave");
        tokio::time::timeout(SHORT, second.asked_to_leave())
            .await
            .expect("every live connection is asked");
        assert!(live.stopping());
        assert!(live.enter().is_none(), "a stopping node lets nobody in");

        drop(first);
        assert_eq!(live.count(), 1);
        let waiting = tokio::spawn({
            let live = live.clone();
            async move { live.all_left(Duration::from_secs(5)).await }
        });
        drop(second);
        assert!(waiting.await.expect("the wait runs"), "the last one left");
        assert_eq!(live.count(), 0);
    }
}
