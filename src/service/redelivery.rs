//! Which client-ack pushes await an ack, and when each is due again.
//! The ack-cycle consumer drives it: it takes what is due, redelivers or
//! dead-letters it, and resolves what was acked.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// (user id, message id)
pub type Key = (u64, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub user_id: u64,
    pub message_id: u64,
    /// Redeliveries already made.
    pub redeliveries: u32,
}

struct Entry {
    due: Instant,
    redeliveries: u32,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    timeline: BTreeSet<(Instant, Key)>,
}

pub struct RedeliveryTracker {
    state: Mutex<State>,
    ack_timeout: Duration,
    max_wait: Duration,
    max_redeliveries: u32,
    /// Woken when an earlier deadline appears.
    pub changed: Notify,
}

/// What to do with a due entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Redeliver,
    DeadLetter,
}

impl RedeliveryTracker {
    pub fn new(ack_timeout: Duration, max_wait: Duration, max_redeliveries: u32) -> Self {
        RedeliveryTracker {
            state: Mutex::new(State::default()),
            ack_timeout,
            max_wait,
            max_redeliveries,
            changed: Notify::new(),
        }
    }

    /// The wait before redelivery number `k + 1`, after `k` redeliveries:
    /// ackTimeout x 2^k, capped.
    pub fn wait_after(&self, redeliveries: u32) -> Duration {
        let factor = 1u32.checked_shl(redeliveries.min(30)).unwrap_or(u32::MAX);
        self.ack_timeout.saturating_mul(factor).min(self.max_wait)
    }

    /// A first push of `key` went out on a client-ack subscription; later
    /// pushes of a tracked key (other devices, redeliveries) change nothing.
    pub fn track(&self, user_id: u64, message_id: u64) {
        let key = (user_id, message_id);
        let due = Instant::now() + self.ack_timeout;
        let mut s = self.state.lock();
        if s.entries.contains_key(&key) {
            return;
        }
        let earliest = s.timeline.first().map(|(t, _)| *t);
        s.entries.insert(
            key,
            Entry {
                due,
                redeliveries: 0,
            },
        );
        s.timeline.insert((due, key));
        drop(s);
        if earliest.is_none_or(|t| due < t) {
            self.changed.notify_one();
        }
    }

    pub fn resolve(&self, user_id: u64, message_ids: &[u64]) {
        let mut s = self.state.lock();
        for &mid in message_ids {
            if let Some(e) = s.entries.remove(&(user_id, mid)) {
                s.timeline.remove(&(e.due, (user_id, mid)));
            }
        }
    }

    #[cfg(test)]
    fn is_tracked(&self, user_id: u64, message_id: u64) -> bool {
        self.state
            .lock()
            .entries
            .contains_key(&(user_id, message_id))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The earliest deadline, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.state.lock().timeline.first().map(|(t, _)| *t)
    }

    /// Removes and returns up to `max` entries due at `now`.
    pub fn take_due(&self, now: Instant, max: usize) -> Vec<Due> {
        let mut s = self.state.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(due, key)) = s.timeline.first() else {
                break;
            };
            if due > now {
                break;
            }
            s.timeline.pop_first();
            if let Some(e) = s.entries.remove(&key) {
                out.push(Due {
                    user_id: key.0,
                    message_id: key.1,
                    redeliveries: e.redeliveries,
                });
            }
        }
        out
    }

    /// Decides a due entry's fate; a redelivered one is tracked again with
    /// the next, doubled wait.
    pub fn judge(&self, due: Due) -> Verdict {
        if due.redeliveries >= self.max_redeliveries {
            return Verdict::DeadLetter;
        }
        self.reschedule(due.user_id, due.message_id, due.redeliveries + 1);
        Verdict::Redeliver
    }

    /// A NACK: counts as one redelivery, made right now.
    pub fn nack(&self, user_id: u64, message_id: u64) -> Verdict {
        let key = (user_id, message_id);
        let done = {
            let mut s = self.state.lock();
            match s.entries.remove(&key) {
                Some(e) => {
                    s.timeline.remove(&(e.due, key));
                    e.redeliveries
                }
                None => 0,
            }
        };
        self.judge(Due {
            user_id,
            message_id,
            redeliveries: done,
        })
    }

    fn reschedule(&self, user_id: u64, message_id: u64, redeliveries: u32) {
        let key = (user_id, message_id);
        let due = Instant::now() + self.wait_after(redeliveries);
        let mut s = self.state.lock();
        s.entries.insert(key, Entry { due, redeliveries });
        s.timeline.insert((due, key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> RedeliveryTracker {
        RedeliveryTracker::new(Duration::from_millis(10), Duration::from_millis(35), 2)
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let t = tracker();
        assert_eq!(t.wait_after(0), Duration::from_millis(10));
        assert_eq!(t.wait_after(1), Duration::from_millis(20));
        assert_eq!(t.wait_after(2), Duration::from_millis(35));
        assert_eq!(t.wait_after(200), Duration::from_millis(35));
    }

    #[test]
    fn due_entries_are_redelivered_then_dead_lettered() {
        let t = tracker();
        t.track(1, 100);
        t.track(1, 100);
        assert_eq!(t.len(), 1);
        assert!(t.take_due(Instant::now(), 10).is_empty());
        let later = Instant::now() + Duration::from_secs(1);
        let due = t.take_due(later, 10);
        assert_eq!(
            due,
            vec![Due {
                user_id: 1,
                message_id: 100,
                redeliveries: 0
            }]
        );
        assert_eq!(t.judge(due[0]), Verdict::Redeliver);
        let due = t.take_due(later, 10);
        assert_eq!(due[0].redeliveries, 1);
        assert_eq!(t.judge(due[0]), Verdict::Redeliver);
        let due = t.take_due(later, 10);
        assert_eq!(t.judge(due[0]), Verdict::DeadLetter);
        assert!(t.is_empty());
    }

    #[test]
    fn resolve_and_nack() {
        let t = tracker();
        t.track(1, 1);
        t.track(1, 2);
        t.resolve(1, &[1]);
        assert!(!t.is_tracked(1, 1));
        assert_eq!(t.nack(1, 2), Verdict::Redeliver);
        assert_eq!(t.nack(1, 2), Verdict::Redeliver);
        assert_eq!(t.nack(1, 2), Verdict::DeadLetter);
        assert!(t.is_empty());
    }
}
