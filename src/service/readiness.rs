//! Whether the node can serve: every backend answers, and every topic
//! consumer holds partitions to consume (a node that shares its consumer
//! groups gets them only at the next rebalance).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::backend::Backends;

#[derive(Default)]
pub struct Readiness {
    consumers: Mutex<Vec<(&'static str, Arc<ConsumerState>)>>,
}

/// What a consume loop reports of itself.
#[derive(Default)]
pub struct ConsumerState {
    assigned: AtomicBool,
    lag: AtomicU64,
    /// Set once the loop stopped.
    stopped: AtomicBool,
}

impl ConsumerState {
    pub fn report(&self, assigned: bool, lag: u64) {
        self.assigned.store(assigned, Ordering::Relaxed);
        self.lag.store(lag, Ordering::Relaxed);
    }

    pub fn stopped(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    pub fn is_assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
    }
}

impl Readiness {
    /// The state a consume loop named `name` reports to.
    pub fn consumer(&self, name: &'static str) -> Arc<ConsumerState> {
        let state = Arc::new(ConsumerState::default());
        self.consumers.lock().push((name, state.clone()));
        state
    }

    /// `Err` with the reason if the node cannot serve.
    pub async fn check(&self, backends: &Backends) -> Result<(), String> {
        backends.check().await.map_err(|e| e.to_string())?;
        let consumers = self.consumers.lock().clone();
        for (name, state) in consumers {
            if state.stopped.load(Ordering::Relaxed) {
                return Err(format!("the {name} consumer stopped"));
            }
            if !state.is_assigned() {
                return Err(format!("the {name} consumer has no partitions yet"));
            }
        }
        Ok(())
    }
}
