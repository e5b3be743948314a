//! 64-bit Snowflake-style identifiers, exchanged as decimal strings.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::AppError;

/// Milliseconds between the Unix epoch and Herald's id epoch (2024-01-01).
const ID_EPOCH_MS: u64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;

/// Generates unique, roughly time-ordered ids: 41 bits of milliseconds,
/// 10 bits of node id, 12 bits of sequence. Lock-free.
pub struct IdGenerator {
    node: u64,
    /// Last issued (millis << SEQ_BITS | seq), so ids never repeat even if
    /// the wall clock steps back.
    state: AtomicU64,
}

impl IdGenerator {
    pub fn new(node: u16) -> Self {
        IdGenerator {
            node: u64::from(node) & ((1 << NODE_BITS) - 1),
            state: AtomicU64::new(0),
        }
    }

    pub fn next_id(&self) -> u64 {
        let now = now_ms().saturating_sub(ID_EPOCH_MS as i64) as u64;
        let candidate = now << SEQ_BITS;
        let mut prev = self.state.load(Ordering::Relaxed);
        loop {
            let next = if candidate > prev {
                candidate
            } else {
                prev + 1
            };
            match self
                .state
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let millis = next >> SEQ_BITS;
                    let seq = next & ((1 << SEQ_BITS) - 1);
                    return (millis << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | seq;
                }
                Err(actual) => prev = actual,
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses a decimal id string; `field` names it in the error.
pub fn parse_id(field: &str, value: &str) -> Result<u64, AppError> {
    let ok = !value.is_empty() && value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u64>() {
        Ok(id) if ok && id > 0 => Ok(id),
        _ => Err(AppError::invalid(format!(
            "{field} must be a string of decimal digits"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_increasing() {
        let g = IdGenerator::new(3);
        let mut last = 0;
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let id = g.next_id();
            assert!(id > last);
            assert!(seen.insert(id));
            last = id;
        }
        assert!(last < (1u64 << 63), "ids stay positive as i64");
    }

    #[test]
    fn parse_id_rejects_non_digits() {
        assert_eq!(parse_id("x", "42").unwrap(), 42);
        assert!(parse_id("x", "").is_err());
        assert!(parse_id("x", "-1").is_err());
        assert!(parse_id("x", "+1").is_err());
        assert!(parse_id("x", "0").is_err());
        assert!(parse_id("x", "12a").is_err());
        assert!(parse_id("x", "99999999999999999999999").is_err());
    }
}
