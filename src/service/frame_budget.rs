//! Memory held by unfinished STOMP frames, per user and per node.
//!
//! A frame may be up to `maxFrameBytes`, and a client may send it slowly or
//! never finish it. Without a budget, a few accounts each holding many
//! half-sent frames hold the node's memory. It is node-local by nature: it
//! counts this process's memory.

use std::collections::HashMap;

use parking_lot::Mutex;

#[derive(Default)]
struct Held {
    total: usize,
    per_user: HashMap<u64, usize>,
}

pub struct FrameBudget {
    per_user: usize,
    total: usize,
    held: Mutex<Held>,
}

/// Why more partial frame data may not be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverBudget {
    User,
    Node,
}

impl FrameBudget {
    pub fn new(per_user: usize, total: usize) -> FrameBudget {
        FrameBudget {
            per_user,
            total,
            held: Mutex::new(Held::default()),
        }
    }

    /// Moves what `user` holds from `from` to `to` bytes; refused (and
    /// nothing changed) if that would pass a budget.
    pub fn update(&self, user: u64, from: usize, to: usize) -> Result<(), OverBudget> {
        if from == to {
            return Ok(());
        }
        let mut held = self.held.lock();
        let mine = held.per_user.get(&user).copied().unwrap_or(0);
        let mine_after = (mine.saturating_sub(from)).saturating_add(to);
        let total_after = held.total.saturating_sub(from).saturating_add(to);
        if to > from {
            if mine_after > self.per_user {
                return Err(OverBudget::User);
            }
            if total_after > self.total {
                return Err(OverBudget::Node);
            }
        }
        held.total = total_after;
        if mine_after == 0 {
            held.per_user.remove(&user);
        } else {
            held.per_user.insert(user, mine_after);
        }
        metrics::gauge!("herald_partial_frame_bytes").set(total_after as f64);
        Ok(())
    }
}

impl OverBudget {
    pub fn message(self) -> &'static str {
        match self {
            OverBudget::User => {
                "too many unfinished frames on your connections: finish one before starting another"
            }
            OverBudget::Node => "the server holds too many unfinished frames: retry later",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_and_node_budgets_hold() {
        let b = FrameBudget::new(10, 15);
        assert_eq!(b.update(1, 0, 8), Ok(()));
        assert_eq!(b.update(1, 0, 3), Err(OverBudget::User));
        assert_eq!(b.update(2, 0, 8), Err(OverBudget::Node));
        assert_eq!(b.update(2, 0, 7), Ok(()));
        // Shrinking is always allowed and frees room for others.
        assert_eq!(b.update(1, 8, 0), Ok(()));
        assert_eq!(b.update(2, 7, 10), Ok(()));
        assert!(!b.held.lock().per_user.contains_key(&1));
    }
}
