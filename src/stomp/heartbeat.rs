//! `heart-beat` header parsing and negotiation (STOMP 1.2 "Heart-beating").
//!
//! The header value is `cx,cy` (in CONNECT, from the client) or `sx,sy` (in
//! CONNECTED, from the server), in milliseconds:
//!
//! * the first number is the smallest interval at which the sender *can
//!   send* heart-beats (0: it cannot send any);
//! * the second is the interval at which the sender *wants to receive*
//!   heart-beats (0: it does not want any).

/// Parses a `heart-beat` header value such as `"10000,10000"`.
///
/// Both numbers must be non-negative decimal integers; whitespace around
/// them is tolerated. Returns `None` for anything else (a server should
/// answer an invalid value with an ERROR frame, or treat it as `0,0`).
pub fn parse_heart_beat(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.split_once(',')?;
    Some((parse_ms(a)?, parse_ms(b)?))
}

fn parse_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Negotiates heart-beat intervals, from the **server's** point of view.
///
/// `client` is the `(cx, cy)` pair from the client's CONNECT frame (absent
/// header: `(0, 0)`); `server` is the `(sx, sy)` pair the server puts in its
/// CONNECTED frame.
///
/// Returns `(send_interval_ms, expect_interval_ms)`:
///
/// * `send_interval_ms` — server → client: how often the **server must
///   send** something (a frame or a heart-beat EOL) to the client. 0 when
///   `sx == 0` or `cy == 0`, else `max(sx, cy)`.
/// * `expect_interval_ms` — client → server: how often the **server should
///   expect to receive** something from the client. 0 when `cx == 0` or
///   `sy == 0`, else `max(cx, sy)`. The spec recommends tolerating some
///   lateness before declaring the connection dead (e.g. allow 2x this).
///
/// 0 means no heart-beats in that direction.
pub fn negotiate_heart_beat(client: (u64, u64), server: (u64, u64)) -> (u64, u64) {
    let (cx, cy) = client;
    let (sx, sy) = server;
    (interval(sx, cy), interval(cx, sy))
}

/// Interval from a sender that can send every `can_send` ms to a receiver
/// that wants a beat every `wants` ms.
fn interval(can_send: u64, wants: u64) -> u64 {
    if can_send == 0 || wants == 0 {
        0
    } else {
        can_send.max(wants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_valid_and_invalid() {
        assert_eq!(parse_heart_beat("0,0"), Some((0, 0)));
        assert_eq!(parse_heart_beat("10000,5000"), Some((10000, 5000)));
        assert_eq!(parse_heart_beat(" 100 , 200 "), Some((100, 200)));
        for bad in [
            "", "100", "1,2,3", "-1,0", "+1,0", "a,b", ",", "1,", "1.5,2",
        ] {
            assert_eq!(parse_heart_beat(bad), None, "{bad:?}");
        }
        assert_eq!(parse_heart_beat("99999999999999999999999,1"), None);
    }

    #[test]
    fn negotiate_cases() {
        // Spec-style example: client can send every 4s and wants every 6s;
        // server can send every 5s and wants every 3s.
        assert_eq!(
            negotiate_heart_beat((4000, 6000), (5000, 3000)),
            (6000, 4000)
        );
        // Client cannot send: nothing expected from it.
        assert_eq!(negotiate_heart_beat((0, 1000), (5000, 3000)), (5000, 0));
        // Client does not want any: server sends none.
        assert_eq!(negotiate_heart_beat((1000, 0), (5000, 3000)), (0, 3000));
        // Server does not want / cannot send.
        assert_eq!(negotiate_heart_beat((1000, 1000), (0, 0)), (0, 0));
        assert_eq!(negotiate_heart_beat((0, 0), (10000, 10000)), (0, 0));
        // Max of the two.
        assert_eq!(negotiate_heart_beat((100, 200), (300, 50)), (300, 100));
    }
}
