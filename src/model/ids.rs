//! 64-bit Snowflake-style identifiers, exchanged as decimal strings.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// What an id looks like on the wire: a positive 64-bit integer as a JSON
/// string of 1-19 decimal digits without leading zeros (every id the
/// server issues has 63 bits). The OpenAPI spec states it as this pattern,
/// and [`decimal_id`] accepts exactly the strings it matches.
pub const ID_PATTERN: &str = "^[1-9][0-9]{0,18}$";

/// [`ID_PATTERN`] in words, for error messages.
pub const ID_RULE: &str =
    "a positive 64-bit decimal id without leading zeros: a string of 1-19 digits";

/// The id `raw` spells, if it matches [`ID_PATTERN`].
pub fn decimal_id(raw: &str) -> Option<u64> {
    let bytes = raw.as_bytes();
    let well_formed =
        (1..=19).contains(&bytes.len()) && bytes[0] != b'0' && bytes.iter().all(u8::is_ascii_digit);
    // 19 digits always fit in a u64.
    well_formed.then(|| raw.parse().ok()).flatten()
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
    fn decimal_ids_are_digits_without_leading_zeros() {
        assert_eq!(decimal_id("42"), Some(42));
        assert_eq!(
            decimal_id("9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            "",
            "-1",
            "+1",
            "0",
            "12a",
            "0123",
            " 1",
            "10000000000000000000",
        ] {
            assert_eq!(decimal_id(bad), None, "{bad:?}");
        }
    }
}
