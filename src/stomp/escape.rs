//! Header value escaping (STOMP 1.1 / 1.2 "Value Encoding").

use bytes::BufMut;

use super::error::DecodeError;
use super::frame::{snippet, Command, StompVersion};

/// Which escape sequences apply to a frame's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escaping {
    /// No escaping (STOMP 1.0, and CONNECT/CONNECTED frames in any version).
    Raw,
    /// `\n`, `\c`, `\\`.
    V1_1,
    /// `\r`, `\n`, `\c`, `\\`.
    V1_2,
}

impl Escaping {
    pub(crate) fn for_frame(version: StompVersion, command: Command) -> Escaping {
        if !command.escapes_headers() {
            return Escaping::Raw;
        }
        match version {
            StompVersion::V1_0 => Escaping::Raw,
            StompVersion::V1_1 => Escaping::V1_1,
            StompVersion::V1_2 => Escaping::V1_2,
        }
    }
}

/// Decodes escape sequences in a header name or value.
pub(crate) fn unescape(s: &str, mode: Escaping) -> Result<String, DecodeError> {
    if mode == Escaping::Raw || !s.contains('\\') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let decoded = match chars.next() {
            Some('n') => '\n',
            Some('c') => ':',
            Some('\\') => '\\',
            Some('r') if mode == Escaping::V1_2 => '\r',
            Some(other) => {
                let mut buf = [0u8; 4];
                let seq = format!("\\{}", snippet(other.encode_utf8(&mut buf).as_bytes()));
                return Err(DecodeError::InvalidEscape(seq));
            }
            None => return Err(DecodeError::InvalidEscape("\\".to_owned())),
        };
        out.push(decoded);
    }
    Ok(out)
}

/// Writes a header name or value, escaped for `mode`.
///
/// The encoder never emits a raw CR or LF inside a header (that would break
/// framing or allow header injection): where the mode has no escape for them
/// (CR in 1.1; CR and LF in raw mode) they are replaced by a space.
pub(crate) fn write_escaped<B: BufMut>(out: &mut B, s: &str, mode: Escaping) {
    let bytes = s.as_bytes();
    let special = |b: u8| match mode {
        Escaping::Raw => b == b'\r' || b == b'\n',
        Escaping::V1_1 | Escaping::V1_2 => matches!(b, b'\r' | b'\n' | b':' | b'\\'),
    };
    if !bytes.iter().any(|&b| special(b)) {
        out.put_slice(bytes);
        return;
    }
    for &b in bytes {
        match (b, mode) {
            (b'\r' | b'\n', Escaping::Raw) | (b'\r', Escaping::V1_1) => out.put_u8(b' '),
            (b'\r', Escaping::V1_2) => out.put_slice(b"\\r"),
            (b'\n', _) => out.put_slice(b"\\n"),
            (b':', Escaping::V1_1 | Escaping::V1_2) => out.put_slice(b"\\c"),
            (b'\\', Escaping::V1_1 | Escaping::V1_2) => out.put_slice(b"\\\\"),
            _ => out.put_u8(b),
        }
    }
}

/// Upper bound of the escaped length of `s` (for buffer reservation).
pub(crate) fn escaped_len_upper_bound(s: &str) -> usize {
    s.len()
        + s.bytes()
            .filter(|b| matches!(b, b'\r' | b'\n' | b':' | b'\\'))
            .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str, mode: Escaping) -> String {
        let mut v = Vec::new();
        write_escaped(&mut v, s, mode);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn escape_and_unescape_each_mode() {
        let s = "a:b\\c\nd\re";
        assert_eq!(esc(s, Escaping::V1_2), "a\\cb\\\\c\\nd\\re");
        assert_eq!(esc(s, Escaping::V1_1), "a\\cb\\\\c\\nd e");
        assert_eq!(esc(s, Escaping::Raw), "a:b\\c d e");
        assert_eq!(
            unescape(&esc(s, Escaping::V1_2), Escaping::V1_2).unwrap(),
            s
        );
        assert_eq!(
            unescape(&esc(s, Escaping::V1_1), Escaping::V1_1).unwrap(),
            "a:b\\c\nd e"
        );
        assert_eq!(unescape("a\\cb", Escaping::Raw).unwrap(), "a\\cb");
        assert_eq!(esc("plain", Escaping::V1_2), "plain");
        assert!(escaped_len_upper_bound(s) >= esc(s, Escaping::V1_2).len());
    }

    #[test]
    fn undefined_escapes_are_errors() {
        assert_eq!(
            unescape("a\\tb", Escaping::V1_2),
            Err(DecodeError::InvalidEscape("\\t".into()))
        );
        assert_eq!(
            unescape("a\\rb", Escaping::V1_1),
            Err(DecodeError::InvalidEscape("\\r".into()))
        );
        assert_eq!(unescape("a\\rb", Escaping::V1_2).unwrap(), "a\rb");
        assert_eq!(
            unescape("trailing\\", Escaping::V1_2),
            Err(DecodeError::InvalidEscape("\\".into()))
        );
        assert!(unescape("\\é", Escaping::V1_2).is_err());
    }

    #[test]
    fn mode_selection() {
        assert_eq!(
            Escaping::for_frame(StompVersion::V1_2, Command::Connect),
            Escaping::Raw
        );
        assert_eq!(
            Escaping::for_frame(StompVersion::V1_2, Command::Connected),
            Escaping::Raw
        );
        assert_eq!(
            Escaping::for_frame(StompVersion::V1_2, Command::Stomp),
            Escaping::V1_2
        );
        assert_eq!(
            Escaping::for_frame(StompVersion::V1_1, Command::Send),
            Escaping::V1_1
        );
        assert_eq!(
            Escaping::for_frame(StompVersion::V1_0, Command::Message),
            Escaping::Raw
        );
    }
}
