//! Topic consumers and the event listener:
//! - `session_consumer`: session topic -> `MessageDoc` + inbox entries -> event
//! - `message_listener`: event -> pushes to every online device
//! - `ack_cycle`: ack topic -> inbox status; redelivery and dead letters

pub mod ack_cycle;
pub mod message_listener;
pub mod session_consumer;

use std::time::Duration;

/// Records taken from a topic per poll.
pub const POLL_MAX: usize = 2048;

/// Waits before retrying after a backend failure (grows to one second).
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(10u64.saturating_mul(1 << attempt.min(7)).min(1000))
}
