//! STOMP frame model: commands, protocol versions and the [`Frame`] type.

use std::fmt;

use bytes::Bytes;

use super::error::DecodeError;

/// A STOMP command (the first line of a frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    // Client commands.
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    // Server commands.
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    /// Every command, in no particular order.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as it appears on the wire (upper case).
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command line (without its EOL). Matching is case-sensitive,
    /// as required by the spec; anything else is
    /// [`DecodeError::UnknownCommand`].
    pub fn parse(bytes: &[u8]) -> Result<Command, DecodeError> {
        Ok(match bytes {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"CONNECTED" => Command::Connected,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            other => return Err(DecodeError::UnknownCommand(snippet(other))),
        })
    }

    /// True for commands a client sends to the server (CONNECT, STOMP, SEND,
    /// SUBSCRIBE, UNSUBSCRIBE, ACK, NACK, BEGIN, COMMIT, ABORT, DISCONNECT).
    pub fn is_client_command(self) -> bool {
        !matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }

    /// CONNECT and CONNECTED frames never escape header octets (for
    /// backward compatibility with STOMP 1.0). Note: STOMP is a synonym of
    /// CONNECT but was introduced in 1.1, so its headers *are* escaped.
    pub(crate) fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A short, lossy, printable rendering of untrusted bytes for error messages.
pub(crate) fn snippet(bytes: &[u8]) -> String {
    const MAX: usize = 32;
    let cut = bytes.len().min(MAX);
    let mut s: String = String::from_utf8_lossy(bytes.get(..cut).unwrap_or(bytes))
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if bytes.len() > MAX {
        s.push_str("...");
    }
    s
}

/// STOMP protocol version; selects the header escaping rules.
///
/// * 1.0: no escaping at all.
/// * 1.1: `\n`, `\c` and `\\` (no `\r`).
/// * 1.2: `\r`, `\n`, `\c` and `\\`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum StompVersion {
    V1_0,
    V1_1,
    #[default]
    V1_2,
}

impl StompVersion {
    /// The version as used in `accept-version` / `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            StompVersion::V1_0 => "1.0",
            StompVersion::V1_1 => "1.1",
            StompVersion::V1_2 => "1.2",
        }
    }

    /// Parses `"1.0"`, `"1.1"` or `"1.2"` (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Option<StompVersion> {
        match s.trim() {
            "1.0" => Some(StompVersion::V1_0),
            "1.1" => Some(StompVersion::V1_1),
            "1.2" => Some(StompVersion::V1_2),
            _ => None,
        }
    }

    /// Picks the highest supported version from a CONNECT frame's
    /// `accept-version` header value (comma separated list). A missing
    /// header means the client speaks 1.0 only. Returns `None` when there is
    /// no version in common (the server should then send an ERROR frame).
    pub fn negotiate(accept_version: Option<&str>) -> Option<StompVersion> {
        match accept_version {
            None => Some(StompVersion::V1_0),
            Some(list) => list.split(',').filter_map(StompVersion::parse).max(),
        }
    }
}

impl fmt::Display for StompVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame.
///
/// Headers keep their wire order and may repeat; per the spec only the first
/// occurrence of a repeated header is significant (see [`Frame::header`]).
/// Header names and values are stored *unescaped*.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and an empty body (does not allocate).
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Value of the first header called `name` (case-sensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Builder: appends a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.push_header(name, value);
        self
    }

    /// Appends a header (an existing header of the same name keeps
    /// precedence, since the first occurrence wins).
    pub fn push_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.push((name.into(), value.into()));
    }

    /// Sets a header: replaces the value of its first occurrence and removes
    /// any later ones, or appends it if absent.
    pub fn set_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.headers.iter().position(|(n, _)| *n == name) {
            Some(i) => {
                let mut seen = 0usize;
                self.headers.retain(|(n, _)| {
                    let keep = *n != name || seen == 0;
                    if *n == name {
                        seen += 1;
                    }
                    keep
                });
                if let Some(slot) = self.headers.get_mut(i) {
                    slot.1 = value;
                }
            }
            None => self.headers.push((name, value)),
        }
    }

    /// Removes every occurrence of header `name`; returns the first value.
    pub fn remove_header(&mut self, name: &str) -> Option<String> {
        let mut first = None;
        let mut kept = Vec::with_capacity(self.headers.len());
        for (n, v) in self.headers.drain(..) {
            if n == name {
                if first.is_none() {
                    first = Some(v);
                }
            } else {
                kept.push((n, v));
            }
        }
        self.headers = kept;
        first
    }

    /// Builder: sets the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The body as UTF-8 text, if it is valid UTF-8.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_as_str_parse_roundtrip() {
        for c in Command::ALL {
            assert_eq!(Command::parse(c.as_str().as_bytes()), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
        }
    }

    #[test]
    fn command_parse_is_case_sensitive() {
        assert_eq!(
            Command::parse(b"send"),
            Err(DecodeError::UnknownCommand("send".into()))
        );
        assert!(Command::parse(b"SEND ").is_err());
        assert!(Command::parse(b"").is_err());
        assert!(Command::parse(b"FOO\x00\xff").is_err());
        assert!(Command::Send.is_client_command());
        assert!(!Command::Message.is_client_command());
        assert!(Command::Stomp.escapes_headers());
        assert!(!Command::Connect.escapes_headers());
    }

    #[test]
    fn frame_helpers() {
        let mut f = Frame::new(Command::Send)
            .with_header("destination", "/queue/a")
            .with_header("x", "1")
            .with_header("x", "2")
            .with_body("héllo");
        assert_eq!(f.header("x"), Some("1"));
        assert_eq!(f.header("X"), None);
        assert_eq!(f.header("destination"), Some("/queue/a"));
        assert_eq!(f.body_str(), Some("héllo"));
        f.push_header("y", "3");
        assert_eq!(f.header("y"), Some("3"));
        f.set_header("x", "9");
        assert_eq!(f.header("x"), Some("9"));
        assert_eq!(f.headers.iter().filter(|(n, _)| n == "x").count(), 1);
        assert_eq!(f.headers[1], ("x".to_string(), "9".to_string()));
        f.set_header("z", "new");
        assert_eq!(f.headers.last().map(|h| h.1.as_str()), Some("new"));
        assert_eq!(f.remove_header("y"), Some("3".to_string()));
        assert_eq!(f.header("y"), None);
        assert_eq!(f.remove_header("nope"), None);
        let bin = Frame::new(Command::Message).with_body(vec![0xffu8, 0xfe]);
        assert_eq!(bin.body_str(), None);
    }

    #[test]
    fn version_parse_and_negotiate() {
        assert_eq!(StompVersion::default(), StompVersion::V1_2);
        assert_eq!(StompVersion::parse(" 1.1 "), Some(StompVersion::V1_1));
        assert_eq!(StompVersion::parse("2.0"), None);
        assert_eq!(StompVersion::negotiate(None), Some(StompVersion::V1_0));
        assert_eq!(
            StompVersion::negotiate(Some("1.0,1.1,1.2")),
            Some(StompVersion::V1_2)
        );
        assert_eq!(
            StompVersion::negotiate(Some("1.1, 1.0")),
            Some(StompVersion::V1_1)
        );
        assert_eq!(StompVersion::negotiate(Some("2.0,3.1")), None);
        assert_eq!(StompVersion::negotiate(Some("")), None);
        assert_eq!(StompVersion::V1_2.to_string(), "1.2");
    }

    #[test]
    fn snippet_is_bounded_and_printable() {
        let s = snippet(&[b'A'; 100]);
        assert_eq!(s.len(), 35);
        assert_eq!(snippet(b"a\nb\x00"), "a?b?");
    }
}
