//! STOMP frame encoder.

use bytes::{BufMut, Bytes, BytesMut};

use super::escape::{escaped_len_upper_bound, write_escaped, Escaping};
use super::frame::{Frame, StompVersion};

/// A heart-beat as sent on the wire (a single EOL).
pub const HEARTBEAT: &[u8] = b"\n";

const CONTENT_LENGTH: &str = "content-length";

/// Appends the wire form of `frame` to `out`.
///
/// * Header names and values are escaped according to `version`, except in
///   CONNECT and CONNECTED frames and in STOMP 1.0, which have no escaping.
///   Raw CR/LF octets that cannot be escaped in the selected mode are
///   replaced by spaces so a header can never break the framing.
/// * `content-length` is always correct: for a non-empty body it is written
///   with the body's actual length (at the position of the frame's first
///   `content-length` header if it has one, else after the other headers);
///   any other `content-length` headers in `frame` are dropped. A frame with
///   an empty body gets `content-length:0` only if it had a
///   `content-length` header.
/// * Lines end with `"\n"`; the frame ends with a NUL octet.
pub fn encode(frame: &Frame, version: StompVersion, out: &mut BytesMut) {
    out.reserve(encoded_len_upper_bound(frame));
    encode_into(frame, version, out);
}

/// Encodes `frame` into a new `Vec`.
pub fn encode_to_vec(frame: &Frame, version: StompVersion) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len_upper_bound(frame));
    encode_into(frame, version, &mut out);
    out
}

/// Encodes `frame` into a new `Bytes` (e.g. for a WebSocket binary/text
/// message).
pub fn encode_to_bytes(frame: &Frame, version: StompVersion) -> Bytes {
    let mut out = BytesMut::new();
    encode(frame, version, &mut out);
    out.freeze()
}

fn encoded_len_upper_bound(frame: &Frame) -> usize {
    let headers: usize = frame
        .headers
        .iter()
        .map(|(n, v)| escaped_len_upper_bound(n) + escaped_len_upper_bound(v) + 2)
        .sum();
    // command + EOL, headers, content-length line, blank line, body, NUL.
    frame.command.as_str().len()
        + 1
        + headers
        + CONTENT_LENGTH.len()
        + 22
        + 1
        + frame.body.len()
        + 1
}

fn encode_into<B: BufMut>(frame: &Frame, version: StompVersion, out: &mut B) {
    let mode = Escaping::for_frame(version, frame.command);
    out.put_slice(frame.command.as_str().as_bytes());
    out.put_u8(b'\n');
    let had_content_length = frame.headers.iter().any(|(n, _)| n == CONTENT_LENGTH);
    let mut need_content_length = !frame.body.is_empty() || had_content_length;
    for (name, value) in &frame.headers {
        if name == CONTENT_LENGTH {
            if need_content_length {
                put_content_length(out, frame.body.len());
                need_content_length = false;
            }
            continue;
        }
        write_escaped(out, name, mode);
        out.put_u8(b':');
        write_escaped(out, value, mode);
        out.put_u8(b'\n');
    }
    if need_content_length {
        put_content_length(out, frame.body.len());
    }
    out.put_u8(b'\n');
    out.put_slice(&frame.body);
    out.put_u8(0);
}

fn put_content_length<B: BufMut>(out: &mut B, len: usize) {
    out.put_slice(CONTENT_LENGTH.as_bytes());
    out.put_u8(b':');
    put_decimal(out, len);
    out.put_u8(b'\n');
}

fn put_decimal<B: BufMut>(out: &mut B, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            // `n % 10` is always < 10, so the cast cannot truncate.
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.put_slice(digits.get(i..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::super::decoder::{Decoded, Decoder};
    use super::super::frame::Command;
    use super::*;

    fn enc(frame: &Frame, version: StompVersion) -> String {
        String::from_utf8(encode_to_vec(frame, version)).unwrap()
    }

    #[test]
    fn heartbeat_constant() {
        assert_eq!(HEARTBEAT, b"\n");
    }

    #[test]
    fn encodes_spec_connect_and_connected_unescaped() {
        let f = Frame::new(Command::Connect)
            .with_header("accept-version", "1.2")
            .with_header("host", "stomp.github.org")
            .with_header("login", "a:b\\c");
        assert_eq!(
            enc(&f, StompVersion::V1_2),
            "CONNECT\naccept-version:1.2\nhost:stomp.github.org\nlogin:a:b\\c\n\n\0"
        );
        let f = Frame::new(Command::Connected)
            .with_header("version", "1.2")
            .with_header("server", "herald/0.1\ninjected:yes");
        assert_eq!(
            enc(&f, StompVersion::V1_2),
            "CONNECTED\nversion:1.2\nserver:herald/0.1 injected:yes\n\n\0"
        );
    }

    #[test]
    fn encodes_message_with_escaping_per_version() {
        let f = Frame::new(Command::Message)
            .with_header("a:b", "c\\d\ne\rf")
            .with_body("hi");
        assert_eq!(
            enc(&f, StompVersion::V1_2),
            "MESSAGE\na\\cb:c\\\\d\\ne\\rf\ncontent-length:2\n\nhi\0"
        );
        assert_eq!(
            enc(&f, StompVersion::V1_1),
            "MESSAGE\na\\cb:c\\\\d\\ne f\ncontent-length:2\n\nhi\0"
        );
        assert_eq!(
            enc(&f, StompVersion::V1_0),
            "MESSAGE\na:b:c\\d e f\ncontent-length:2\n\nhi\0"
        );
    }

    #[test]
    fn content_length_added_once_and_correct() {
        // Added for a non-empty body.
        let f = Frame::new(Command::Send).with_body("hello");
        assert_eq!(
            enc(&f, StompVersion::V1_2),
            "SEND\ncontent-length:5\n\nhello\0"
        );
        // Not added for an empty body.
        let f = Frame::new(Command::Send).with_header("destination", "/q");
        assert_eq!(enc(&f, StompVersion::V1_2), "SEND\ndestination:/q\n\n\0");
        // Existing header kept in place, never duplicated, value corrected.
        let f = Frame::new(Command::Message)
            .with_header("content-length", "999")
            .with_header("x", "1")
            .with_header("content-length", "5")
            .with_body("abc");
        assert_eq!(
            enc(&f, StompVersion::V1_2),
            "MESSAGE\ncontent-length:3\nx:1\n\nabc\0"
        );
        let f = Frame::new(Command::Receipt).with_header("content-length", "7");
        assert_eq!(
            enc(&f, StompVersion::V1_2),
            "RECEIPT\ncontent-length:0\n\n\0"
        );
        // Large length.
        let f = Frame::new(Command::Send).with_body(vec![b'x'; 1_234_567]);
        let wire = encode_to_vec(&f, StompVersion::V1_2);
        assert!(wire.starts_with(b"SEND\ncontent-length:1234567\n\n"));
        assert_eq!(wire.last(), Some(&0));
    }

    #[test]
    fn put_decimal_edge_cases() {
        for n in [0usize, 1, 9, 10, 99, 100, 4_294_967_296, usize::MAX] {
            let mut v = Vec::new();
            put_decimal(&mut v, n);
            assert_eq!(String::from_utf8(v).unwrap(), n.to_string());
        }
    }

    #[test]
    fn encode_appends_and_bytes_variant_matches() {
        let f = Frame::new(Command::Error)
            .with_header("message", "bad: frame\n")
            .with_body("x\0y");
        let mut out = BytesMut::from(&b"\n"[..]);
        encode(&f, StompVersion::V1_2, &mut out);
        assert_eq!(&out[..1], HEARTBEAT);
        assert_eq!(&out[1..], &encode_to_vec(&f, StompVersion::V1_2)[..]);
        assert_eq!(
            encode_to_bytes(&f, StompVersion::V1_2),
            Bytes::from(encode_to_vec(&f, StompVersion::V1_2))
        );
    }

    #[test]
    fn round_trip_all_versions() {
        let f = Frame::new(Command::Send)
            .with_header("destination", "/queue/é:1")
            .with_header("back\\slash", "new\nline")
            .with_header("dup", "first")
            .with_header("dup", "second")
            .with_body(&b"\x00\x01binary\x00"[..]);
        for version in [StompVersion::V1_0, StompVersion::V1_1, StompVersion::V1_2] {
            let wire = encode_to_vec(&f, version);
            let mut d = Decoder::default();
            d.set_version(version);
            d.feed(&wire);
            let Ok(Some(Decoded::Frame(got))) = d.next() else {
                panic!("no frame for {version}");
            };
            assert_eq!(got.command, f.command);
            assert_eq!(got.body, f.body);
            assert_eq!(got.header("dup"), Some("first"));
            assert_eq!(got.header("destination"), Some("/queue/é:1"));
            assert_eq!(got.header("content-length"), Some("9"));
            if version != StompVersion::V1_0 {
                assert_eq!(got.header("back\\slash"), Some("new\nline"));
                // Exact round trip apart from the added content-length.
                let mut expected = f.clone();
                expected.push_header("content-length", "9");
                assert_eq!(got, expected);
            } else {
                assert_eq!(got.header("back\\slash"), Some("new line"));
            }
            assert_eq!(d.next(), Ok(None));
        }
    }
}
