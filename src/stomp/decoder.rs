//! Incremental STOMP frame decoder.
//!
//! The decoder is fed raw bytes (e.g. WebSocket message payloads) with
//! [`Decoder::feed`] and yields frames and heart-beats with [`Decoder::next`].
//! Frames may be split arbitrarily across feeds and one feed may contain many
//! frames.
//!
//! Parsing is incremental: complete command/header lines are parsed and
//! dropped from the buffer as soon as they arrive, and the search for the
//! end of the current line or body resumes where the previous call stopped,
//! so a large frame arriving in many small pieces costs linear time. Limits
//! are checked as early as possible so a peer cannot make the decoder buffer
//! more than [`Limits::max_frame_bytes`] (plus whatever a single `feed`
//! hands over).

use bytes::{Buf, BytesMut};

use super::error::DecodeError;
use super::escape::{unescape, Escaping};
use super::frame::{snippet, Command, Frame, StompVersion};

/// Decoder limits. All limits are inclusive maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size of one frame: command line, header lines (with their
    /// EOLs), the blank line and the body; the terminating NUL is not
    /// counted. Default 2 MiB.
    pub max_frame_bytes: usize,
    /// Maximum number of header lines per frame. Default 64.
    pub max_headers: usize,
    /// Maximum length of the command line or of one header line, excluding
    /// its EOL. Default 8 KiB.
    pub max_header_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame_bytes: 2 * 1024 * 1024,
            max_headers: 64,
            max_header_line_bytes: 8 * 1024,
        }
    }
}

/// One item decoded from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame.
    Frame(Frame),
    /// A bare EOL (`"\n"` or `"\r\n"`) between frames: a heart-beat.
    HeartBeat,
}

/// Where we are in the current frame.
#[derive(Debug, Default)]
enum State {
    /// Between frames: expecting heart-beat EOLs or a command line.
    #[default]
    Idle,
    /// Command line parsed; reading header lines up to the blank line.
    Headers {
        command: Command,
        headers: Vec<(String, String)>,
    },
    /// Headers parsed; reading the body up to the NUL.
    Body {
        command: Command,
        headers: Vec<(String, String)>,
        content_length: Option<usize>,
    },
}

/// Result of trying to start a frame in the `Idle` state.
enum Start {
    NeedMore,
    HeartBeat,
    Begun,
}

/// Buffers above this capacity are released as soon as they become empty.
const RELEASE_CAPACITY: usize = 8 * 1024;

/// Incremental STOMP decoder for one connection.
///
/// A fresh decoder holds no heap memory; the buffer grows only with
/// unconsumed input (and [`Decoder::shrink_if_idle`] releases it).
///
/// Every error is fatal: after `next` returns `Err`, the buffered data is
/// dropped, further input is ignored and every later call to `next` returns
/// the same error. The connection should be closed.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    limits: Limits,
    version: StompVersion,
    state: State,
    /// Bytes of the current frame already consumed from `buf`.
    consumed: usize,
    /// Bytes at the front of `buf` already searched for the current
    /// delimiter (LF while reading lines, NUL while reading a body).
    scanned: usize,
    failed: Option<DecodeError>,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new(Limits::default())
    }
}

impl Decoder {
    /// A decoder using STOMP 1.2 header escaping until
    /// [`Decoder::set_version`] is called. Does not allocate.
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            limits,
            version: StompVersion::V1_2,
            state: State::Idle,
            consumed: 0,
            scanned: 0,
            failed: None,
        }
    }

    /// Selects the header escaping rules for subsequent frames (call it once
    /// the version has been negotiated). CONNECT and CONNECTED frames are
    /// never unescaped, whatever the version.
    pub fn set_version(&mut self, version: StompVersion) {
        self.version = version;
    }

    /// The escaping version in use.
    pub fn version(&self) -> StompVersion {
        self.version
    }

    /// The limits in use.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Appends received bytes. Call [`Decoder::next`] until it returns
    /// `Ok(None)` after each feed, so that limits are enforced promptly.
    pub fn feed(&mut self, data: &[u8]) {
        if self.failed.is_none() && !data.is_empty() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Number of bytes buffered and not yet consumed.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Whether part of a frame has been received but not the whole frame.
    pub fn is_mid_frame(&self) -> bool {
        !matches!(self.state, State::Idle) || !self.buf.is_empty()
    }

    /// Releases the buffer's memory if it holds no data (e.g. when the
    /// connection goes idle). Cheap; safe to call at any time.
    pub fn shrink_if_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
            self.scanned = 0;
        }
    }

    /// Decodes the next frame or heart-beat. Returns `Ok(None)` when more
    /// bytes are needed.
    #[allow(clippy::should_implement_trait)] // fallible, so not an Iterator
    pub fn next(&mut self) -> Result<Option<Decoded>, DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.step() {
            Ok(item) => Ok(item),
            Err(err) => {
                self.failed = Some(err.clone());
                self.buf = BytesMut::new();
                self.state = State::Idle;
                self.consumed = 0;
                self.scanned = 0;
                Err(err)
            }
        }
    }

    fn step(&mut self) -> Result<Option<Decoded>, DecodeError> {
        loop {
            match self.state {
                State::Idle => match self.start_frame()? {
                    Start::NeedMore => return Ok(None),
                    Start::HeartBeat => return Ok(Some(Decoded::HeartBeat)),
                    Start::Begun => {}
                },
                State::Headers { .. } => {
                    if !self.read_header_line()? {
                        return Ok(None);
                    }
                }
                State::Body { .. } => return self.read_body(),
            }
        }
    }

    /// Idle state: consumes one heart-beat EOL or the command line.
    fn start_frame(&mut self) -> Result<Start, DecodeError> {
        match self.buf.first() {
            None => return Ok(Start::NeedMore),
            Some(b'\n') => {
                self.buf.advance(1);
                return Ok(Start::HeartBeat);
            }
            Some(b'\r') => match self.buf.get(1) {
                None => return Ok(Start::NeedMore),
                Some(b'\n') => {
                    self.buf.advance(2);
                    return Ok(Start::HeartBeat);
                }
                // A stray CR: let command parsing reject the line.
                Some(_) => {}
            },
            Some(_) => {}
        }
        let Some((line_end, next)) = self.find_line()? else {
            return Ok(Start::NeedMore);
        };
        let command = Command::parse(self.buf.get(..line_end).unwrap_or_default())?;
        self.buf.advance(next);
        self.consumed = next;
        self.state = State::Headers {
            command,
            headers: Vec::new(),
        };
        Ok(Start::Begun)
    }

    /// Headers state: consumes one header line (or the blank line ending
    /// the headers). Returns `false` if more bytes are needed.
    fn read_header_line(&mut self) -> Result<bool, DecodeError> {
        let Some((line_end, next)) = self.find_line()? else {
            return Ok(false);
        };
        let State::Headers { command, headers } = &mut self.state else {
            return Ok(false);
        };
        let command = *command;
        if line_end == 0 {
            // Blank line: end of headers.
            let headers = std::mem::take(headers);
            let content_length = content_length(&headers)?;
            self.buf.advance(next);
            self.consumed += next;
            if let Some(len) = content_length {
                if self.consumed.saturating_add(len) > self.limits.max_frame_bytes {
                    return Err(self.too_large());
                }
            }
            self.state = State::Body {
                command,
                headers,
                content_length,
            };
            return Ok(true);
        }
        if headers.len() >= self.limits.max_headers {
            return Err(DecodeError::TooManyHeaders {
                limit: self.limits.max_headers,
            });
        }
        let line = self.buf.get(..line_end).unwrap_or_default();
        let header = parse_header(line, Escaping::for_frame(self.version, command))?;
        headers.push(header);
        self.buf.advance(next);
        self.consumed += next;
        Ok(true)
    }

    /// Body state: waits for the whole body and its NUL, then emits the frame.
    fn read_body(&mut self) -> Result<Option<Decoded>, DecodeError> {
        let State::Body { content_length, .. } = self.state else {
            return Ok(None);
        };
        let body_len = match content_length {
            Some(len) => {
                // Size was checked against the limit when headers ended.
                match self.buf.get(len) {
                    None => return Ok(None),
                    Some(0) => len,
                    Some(_) => return Err(DecodeError::MissingNul),
                }
            }
            None => {
                let from = self.scanned.min(self.buf.len());
                match find_byte(self.buf.get(from..).unwrap_or_default(), 0) {
                    Some(pos) => from + pos,
                    None => {
                        self.scanned = self.buf.len();
                        if self.consumed.saturating_add(self.buf.len())
                            > self.limits.max_frame_bytes
                        {
                            return Err(self.too_large());
                        }
                        return Ok(None);
                    }
                }
            }
        };
        if self.consumed.saturating_add(body_len) > self.limits.max_frame_bytes {
            return Err(self.too_large());
        }
        let body = self.buf.split_to(body_len).freeze();
        self.buf.advance(1); // the NUL
        self.consumed = 0;
        self.scanned = 0;
        if self.buf.is_empty() && self.buf.capacity() > RELEASE_CAPACITY {
            self.buf = BytesMut::new();
        }
        let State::Body {
            command, headers, ..
        } = std::mem::take(&mut self.state)
        else {
            return Ok(None);
        };
        Ok(Some(Decoded::Frame(Frame {
            command,
            headers,
            body,
        })))
    }

    /// Looks for the end of the current line (command or header line).
    /// Returns `(content_end, next_line_start)` with any CR before the LF
    /// excluded from the content, or `None` if the line is incomplete.
    /// Enforces the line and frame size limits.
    fn find_line(&mut self) -> Result<Option<(usize, usize)>, DecodeError> {
        let max_line = self.limits.max_header_line_bytes;
        let from = self.scanned.min(self.buf.len());
        match find_byte(self.buf.get(from..).unwrap_or_default(), b'\n') {
            Some(pos) => {
                let lf = from + pos;
                let end = if lf > 0 && self.buf.get(lf - 1) == Some(&b'\r') {
                    lf - 1
                } else {
                    lf
                };
                if end > max_line {
                    return Err(DecodeError::HeaderTooLong { limit: max_line });
                }
                let next = lf + 1;
                if self.consumed.saturating_add(next) > self.limits.max_frame_bytes {
                    return Err(self.too_large());
                }
                self.scanned = 0;
                Ok(Some((end, next)))
            }
            None => {
                self.scanned = self.buf.len();
                // One extra byte: the line may end with a CR awaiting its LF.
                if self.buf.len() > max_line.saturating_add(1) {
                    return Err(DecodeError::HeaderTooLong { limit: max_line });
                }
                if self.consumed.saturating_add(self.buf.len()) > self.limits.max_frame_bytes {
                    return Err(self.too_large());
                }
                Ok(None)
            }
        }
    }

    fn too_large(&self) -> DecodeError {
        DecodeError::FrameTooLarge {
            limit: self.limits.max_frame_bytes,
        }
    }
}

fn find_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// Parses one header line (EOL already stripped).
fn parse_header(line: &[u8], mode: Escaping) -> Result<(String, String), DecodeError> {
    let line = std::str::from_utf8(line).map_err(|_| DecodeError::InvalidUtf8)?;
    let Some((name, value)) = line.split_once(':') else {
        return Err(DecodeError::MalformedHeader(format!(
            "missing ':' in header line '{}'",
            snippet(line.as_bytes())
        )));
    };
    if name.is_empty() {
        return Err(DecodeError::MalformedHeader("empty header name".to_owned()));
    }
    Ok((unescape(name, mode)?, unescape(value, mode)?))
}

/// The value of the first `content-length` header, validated.
fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, DecodeError> {
    let Some((_, raw)) = headers.iter().find(|(n, _)| n == "content-length") else {
        return Ok(None);
    };
    let v = raw.trim_matches(|c| c == ' ' || c == '\t');
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecodeError::InvalidContentLength(snippet(raw.as_bytes())));
    }
    v.parse::<usize>()
        .map(Some)
        .map_err(|_| DecodeError::InvalidContentLength(snippet(raw.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::super::encoder::encode_to_vec;
    use super::*;

    /// Decodes everything in `input` (one feed), stopping at the first error.
    fn decode_all(input: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
        decode_all_with(Decoder::default(), &[input])
    }

    fn decode_all_with(mut d: Decoder, chunks: &[&[u8]]) -> Result<Vec<Decoded>, DecodeError> {
        let mut out = Vec::new();
        for chunk in chunks {
            d.feed(chunk);
            while let Some(item) = d.next()? {
                out.push(item);
            }
        }
        Ok(out)
    }

    fn frames(items: Vec<Decoded>) -> Vec<Frame> {
        items
            .into_iter()
            .filter_map(|i| match i {
                Decoded::Frame(f) => Some(f),
                Decoded::HeartBeat => None,
            })
            .collect()
    }

    fn one_frame(input: &[u8]) -> Frame {
        let mut f = frames(decode_all(input).unwrap());
        assert_eq!(f.len(), 1, "expected exactly one frame");
        f.remove(0)
    }

    fn small_limits() -> Limits {
        Limits {
            max_frame_bytes: 100,
            max_headers: 3,
            max_header_line_bytes: 20,
        }
    }

    #[test]
    fn empty_buffer_needs_more() {
        let mut d = Decoder::default();
        assert_eq!(d.next(), Ok(None));
        d.feed(b"");
        assert_eq!(d.next(), Ok(None));
        assert_eq!(d.buffered_len(), 0);
        assert!(!d.is_mid_frame());
    }

    #[test]
    fn spec_connect_example() {
        let f = one_frame(b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n\x00");
        assert_eq!(f.command, Command::Connect);
        assert_eq!(
            f.headers,
            vec![
                ("accept-version".to_string(), "1.2".to_string()),
                ("host".to_string(), "stomp.github.org".to_string()),
            ]
        );
        assert!(f.body.is_empty());
    }

    #[test]
    fn spec_send_example() {
        let f =
            one_frame(b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\x00");
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.header("destination"), Some("/queue/a"));
        assert_eq!(f.header("content-type"), Some("text/plain"));
        assert_eq!(f.body_str(), Some("hello queue a"));
    }

    #[test]
    fn spec_message_example_with_escaping() {
        let f = one_frame(
            b"MESSAGE\nsubscription:0\nmessage-id:007\ndestination:/queue/a\n\
              content-type:text/plain\nfoo\\cbar:a\\\\b\\nc\\rd\n\nhello queue a\x00",
        );
        assert_eq!(f.command, Command::Message);
        assert_eq!(f.header("message-id"), Some("007"));
        assert_eq!(f.header("foo:bar"), Some("a\\b\nc\rd"));
        assert_eq!(f.body_str(), Some("hello queue a"));
    }

    #[test]
    fn value_may_contain_raw_colons() {
        // Splitting happens on the first colon only.
        let f = one_frame(b"SEND\ndestination:/a:b:c\nempty:\n\n\x00");
        assert_eq!(f.header("destination"), Some("/a:b:c"));
        assert_eq!(f.header("empty"), Some(""));
    }

    #[test]
    fn undefined_escape_is_error() {
        assert_eq!(
            decode_all(b"SEND\ndestination:/a\\tb\n\n\x00"),
            Err(DecodeError::InvalidEscape("\\t".into()))
        );
        assert_eq!(
            decode_all(b"SEND\nx:trailing\\\n\n\x00"),
            Err(DecodeError::InvalidEscape("\\".into()))
        );
    }

    #[test]
    fn escaping_depends_on_version() {
        let input = b"SEND\na:x\\cy\\r\n\n\x00";
        let mut d11 = Decoder::default();
        d11.set_version(StompVersion::V1_1);
        assert_eq!(d11.version(), StompVersion::V1_1);
        assert_eq!(
            decode_all_with(d11, &[input]),
            Err(DecodeError::InvalidEscape("\\r".into()))
        );
        let mut d11 = Decoder::default();
        d11.set_version(StompVersion::V1_1);
        let f = frames(decode_all_with(d11, &[b"SEND\na:x\\cy\\n\n\n\x00"]).unwrap());
        assert_eq!(f[0].header("a"), Some("x:y\n"));

        let mut d10 = Decoder::default();
        d10.set_version(StompVersion::V1_0);
        let f = frames(decode_all_with(d10, &[input]).unwrap());
        assert_eq!(f[0].header("a"), Some("x\\cy\\r"));
    }

    #[test]
    fn connect_and_connected_headers_are_not_unescaped() {
        let f = one_frame(b"CONNECT\nlogin:a\\cb\npasscode:p\\tq:r\n\n\x00");
        assert_eq!(f.header("login"), Some("a\\cb"));
        assert_eq!(f.header("passcode"), Some("p\\tq:r"));
        let f = one_frame(b"CONNECTED\nserver:x\\ny\n\n\x00");
        assert_eq!(f.header("server"), Some("x\\ny"));
        // STOMP (1.1+) frames are escaped like any other.
        let f = one_frame(b"STOMP\nlogin:a\\cb\n\n\x00");
        assert_eq!(f.header("login"), Some("a:b"));
    }

    #[test]
    fn repeated_header_first_wins() {
        let f = one_frame(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\x00");
        assert_eq!(f.header("foo"), Some("World"));
        assert_eq!(f.headers.len(), 2);
        // Also for content-length: the first one decides the body length.
        let f = one_frame(b"SEND\ncontent-length:2\ncontent-length:5\n\nab\x00");
        assert_eq!(&f.body[..], b"ab");
    }

    #[test]
    fn content_length_body_may_contain_nul() {
        let f = one_frame(b"SEND\ndestination:/q\ncontent-length:5\n\na\x00b\x00c\x00");
        assert_eq!(&f.body[..], b"a\x00b\x00c");
        let f = one_frame(b"SEND\ncontent-length: 3 \n\n\x00\x00\x00\x00");
        assert_eq!(&f.body[..], b"\x00\x00\x00");
        let f = one_frame(b"SEND\ncontent-length:0\n\n\x00");
        assert!(f.body.is_empty());
    }

    #[test]
    fn missing_nul_after_content_length() {
        assert_eq!(
            decode_all(b"SEND\ncontent-length:3\n\nabcd\x00"),
            Err(DecodeError::MissingNul)
        );
        // Detected as soon as the octet after the body arrives.
        let mut d = Decoder::default();
        d.feed(b"SEND\ncontent-length:3\n\nabc");
        assert_eq!(d.next(), Ok(None));
        d.feed(b"X");
        assert_eq!(d.next(), Err(DecodeError::MissingNul));
    }

    #[test]
    fn invalid_content_length() {
        for bad in ["abc", "-1", "", "1.5", "+3", "99999999999999999999999999"] {
            let input = format!("SEND\ncontent-length:{bad}\n\n\x00");
            assert!(
                matches!(
                    decode_all(input.as_bytes()),
                    Err(DecodeError::InvalidContentLength(_))
                ),
                "content-length {bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn body_without_content_length_ends_at_first_nul() {
        let items = decode_all(b"SEND\ndestination:/q\n\nhello\nworld\x00").unwrap();
        let f = frames(items);
        assert_eq!(f[0].body_str(), Some("hello\nworld"));
    }

    #[test]
    fn crlf_line_endings() {
        let f = one_frame(b"SEND\r\ndestination:/q\r\nx:a\rb\r\n\r\nbody\r\n\x00\r\n");
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.header("destination"), Some("/q"));
        // A CR not followed by LF is data.
        assert_eq!(f.header("x"), Some("a\rb"));
        assert_eq!(f.body_str(), Some("body\r\n"));
        let items = decode_all(b"SEND\r\n\r\n\x00\r\n").unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1], Decoded::HeartBeat);
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let items = decode_all(
            b"SEND\ndestination:/a\n\none\x00SEND\ndestination:/b\ncontent-length:3\n\ntwo\x00\
              DISCONNECT\nreceipt:77\n\n\x00",
        )
        .unwrap();
        let f = frames(items);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].body_str(), Some("one"));
        assert_eq!(f[1].header("destination"), Some("/b"));
        assert_eq!(f[1].body_str(), Some("two"));
        assert_eq!(f[2].command, Command::Disconnect);
        assert_eq!(f[2].header("receipt"), Some("77"));
    }

    #[test]
    fn frame_split_byte_by_byte() {
        let input: &[u8] = b"\r\nSEND\r\ndestination:/q\r\ncontent-length:4\r\n\r\na\x00b\n\x00\n\
                             MESSAGE\nm:x\\cy\n\nbody\x00";
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for &b in input {
            d.feed(&[b]);
            while let Some(item) = d.next().unwrap() {
                out.push(item);
            }
        }
        assert_eq!(out.len(), 4);
        assert_eq!(out[0], Decoded::HeartBeat);
        assert_eq!(out[2], Decoded::HeartBeat);
        let f = frames(out);
        assert_eq!(&f[0].body[..], b"a\x00b\n");
        assert_eq!(f[1].header("m"), Some("x:y"));
        assert_eq!(f[1].body_str(), Some("body"));
        assert_eq!(d.buffered_len(), 0);
        assert!(!d.is_mid_frame());
    }

    #[test]
    fn large_body_in_many_chunks_is_scanned_incrementally() {
        let mut d = Decoder::default();
        d.feed(b"SEND\ndestination:/q\n\n");
        assert_eq!(d.next(), Ok(None));
        let chunk = [b'x'; 1000];
        for i in 1..=500 {
            d.feed(&chunk);
            assert_eq!(d.next(), Ok(None));
            // The NUL search resumes where it stopped.
            assert_eq!(d.scanned, i * 1000);
            assert!(d.is_mid_frame());
        }
        d.feed(b"\x00");
        let Some(Decoded::Frame(f)) = d.next().unwrap() else {
            panic!("expected a frame");
        };
        assert_eq!(f.body.len(), 500_000);
        assert_eq!(d.next(), Ok(None));
    }

    #[test]
    fn heart_beats_between_frames() {
        let items = decode_all(b"\n\r\n\nSEND\n\n\x00\n\n\r\nSEND\n\nb\x00\n").unwrap();
        let hb = Decoded::HeartBeat;
        assert_eq!(items.len(), 9);
        assert_eq!(&items[..3], &[hb.clone(), hb.clone(), hb.clone()]);
        assert!(matches!(items[3], Decoded::Frame(_)));
        assert_eq!(&items[4..7], &[hb.clone(), hb.clone(), hb.clone()]);
        assert_eq!(
            items[7],
            Decoded::Frame(Frame::new(Command::Send).with_body("b"))
        );
        assert_eq!(items[8], hb);

        // "\r" and "\n" of one heart-beat in separate feeds.
        let mut d = Decoder::default();
        d.feed(b"\r");
        assert_eq!(d.next(), Ok(None));
        d.feed(b"\n");
        assert_eq!(d.next(), Ok(Some(Decoded::HeartBeat)));
        assert_eq!(d.next(), Ok(None));
    }

    #[test]
    fn stray_cr_between_frames_is_error() {
        assert!(matches!(
            decode_all(b"\rSEND\n\n\x00"),
            Err(DecodeError::UnknownCommand(_))
        ));
    }

    #[test]
    fn declared_content_length_too_large() {
        let mut d = Decoder::new(small_limits());
        d.feed(b"SEND\ncontent-length:1000\n\n");
        assert_eq!(d.next(), Err(DecodeError::FrameTooLarge { limit: 100 }));
        // Default limit: 2 MiB.
        let input = format!("SEND\ncontent-length:{}\n\n", 2 * 1024 * 1024);
        assert_eq!(
            decode_all(input.as_bytes()),
            Err(DecodeError::FrameTooLarge {
                limit: 2 * 1024 * 1024
            })
        );
    }

    #[test]
    fn unterminated_body_rejected_when_past_limit() {
        let mut d = Decoder::new(small_limits());
        d.feed(b"SEND\n\n"); // 6 bytes
        assert_eq!(d.next(), Ok(None));
        d.feed(&[b'x'; 94]); // exactly 100: still acceptable
        assert_eq!(d.next(), Ok(None));
        d.feed(b"y");
        assert_eq!(d.next(), Err(DecodeError::FrameTooLarge { limit: 100 }));
        // Sticky: the buffer is released and later calls fail the same way.
        assert_eq!(d.buffered_len(), 0);
        d.feed(b"\x00");
        assert_eq!(d.buffered_len(), 0);
        assert_eq!(d.next(), Err(DecodeError::FrameTooLarge { limit: 100 }));

        // A frame of exactly the limit is accepted.
        let mut d = Decoder::new(small_limits());
        let mut input = b"SEND\n\n".to_vec();
        input.extend_from_slice(&[b'x'; 94]);
        input.push(0);
        let f = frames(decode_all_with(d, &[&input]).unwrap());
        assert_eq!(f[0].body.len(), 94);

        // Endless headers also hit the frame limit.
        d = Decoder::new(Limits {
            max_headers: 1000,
            ..small_limits()
        });
        d.feed(b"SEND\n");
        let mut res = Ok(None);
        for _ in 0..20 {
            d.feed(b"abcdefgh:ijk\n");
            res = d.next();
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res, Err(DecodeError::FrameTooLarge { limit: 100 }));
    }

    #[test]
    fn too_many_headers() {
        assert_eq!(
            decode_all_with(
                Decoder::new(small_limits()),
                &[b"SEND\na:1\nb:2\nc:3\nd:4\n\n\x00"]
            ),
            Err(DecodeError::TooManyHeaders { limit: 3 })
        );
        let ok = decode_all_with(
            Decoder::new(small_limits()),
            &[b"SEND\na:1\nb:2\nc:3\n\n\x00"],
        );
        assert_eq!(frames(ok.unwrap())[0].headers.len(), 3);
    }

    #[test]
    fn too_long_header_line() {
        let limit = DecodeError::HeaderTooLong { limit: 20 };
        // Complete line over the limit.
        assert_eq!(
            decode_all_with(
                Decoder::new(small_limits()),
                &[b"SEND\nabcdefghij:0123456789\n\n\x00"]
            ),
            Err(limit.clone())
        );
        // Exactly at the limit (CR not counted) is fine.
        let ok = decode_all_with(
            Decoder::new(small_limits()),
            &[b"SEND\nabcdefghi:0123456789\r\n\n\x00"],
        );
        assert!(ok.is_ok());
        // Partial line: rejected before the LF arrives.
        let mut d = Decoder::new(small_limits());
        d.feed(b"SEND\n");
        assert_eq!(d.next(), Ok(None));
        d.feed(&[b'a'; 21]);
        assert_eq!(d.next(), Ok(None)); // may still be 20 bytes + CR
        d.feed(b"a");
        assert_eq!(d.next(), Err(limit.clone()));
        // Command line is limited too.
        let mut d = Decoder::new(small_limits());
        d.feed(&[b'A'; 30]);
        assert_eq!(d.next(), Err(limit));
    }

    #[test]
    fn unknown_command() {
        assert_eq!(
            decode_all(b"FOO\n\n\x00"),
            Err(DecodeError::UnknownCommand("FOO".into()))
        );
        assert_eq!(
            decode_all(b"send\n\n\x00"),
            Err(DecodeError::UnknownCommand("send".into()))
        );
        // Rejected as soon as the command line is complete.
        let mut d = Decoder::default();
        d.feed(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            d.next(),
            Err(DecodeError::UnknownCommand("GET / HTTP/1.1".into()))
        );
    }

    #[test]
    fn invalid_utf8_header() {
        assert_eq!(
            decode_all(b"SEND\ndestination:/q\xff\xfe\n\n\x00"),
            Err(DecodeError::InvalidUtf8)
        );
        // The body may be binary.
        let f = one_frame(b"SEND\n\n\xff\xfe\x00");
        assert_eq!(&f.body[..], b"\xff\xfe");
    }

    #[test]
    fn malformed_header_lines() {
        assert!(matches!(
            decode_all(b"SEND\nno-colon-here\n\n\x00"),
            Err(DecodeError::MalformedHeader(_))
        ));
        assert_eq!(
            decode_all(b"SEND\n:value\n\n\x00"),
            Err(DecodeError::MalformedHeader("empty header name".into()))
        );
    }

    #[test]
    fn shrink_if_idle_releases_memory() {
        let mut d = Decoder::default();
        assert_eq!(d.buf.capacity(), 0);
        d.feed(b"SEND\n\nabc");
        assert_eq!(d.next(), Ok(None));
        d.shrink_if_idle(); // data pending: keeps it
        assert_eq!(d.buffered_len(), 3);
        d.feed(b"\x00");
        assert!(matches!(d.next(), Ok(Some(Decoded::Frame(_)))));
        d.shrink_if_idle();
        assert_eq!(d.buf.capacity(), 0);
        assert_eq!(d.buffered_len(), 0);
        // Still works afterwards.
        d.feed(b"\n");
        assert_eq!(d.next(), Ok(Some(Decoded::HeartBeat)));
        // The decoder itself is small.
        assert!(std::mem::size_of::<Decoder>() < 256);
    }

    #[test]
    fn round_trip_through_encoder_in_chunks() {
        let frames_in = vec![
            Frame::new(Command::Connect)
                .with_header("accept-version", "1.1,1.2")
                .with_header("host", "h"),
            Frame::new(Command::Send)
                .with_header("destination", "/queue/a:b")
                .with_header("weird\\name", "line1\nline2\r:\\end")
                .with_body(&b"binary\x00body\x00"[..]),
            Frame::new(Command::Message)
                .with_header("subscription", "0")
                .with_header("empty", ""),
            Frame::new(Command::Error)
                .with_header("message", "oops")
                .with_body("details"),
        ];
        let mut wire = Vec::new();
        for f in &frames_in {
            wire.extend(encode_to_vec(f, StompVersion::V1_2));
            wire.extend_from_slice(b"\n");
        }
        for chunk_size in [1, 2, 3, 7, 64, wire.len()] {
            let chunks: Vec<&[u8]> = wire.chunks(chunk_size).collect();
            let items = decode_all_with(Decoder::default(), &chunks).unwrap();
            assert_eq!(items.len(), frames_in.len() * 2);
            let got = frames(items);
            for (a, b) in frames_in.iter().zip(&got) {
                assert_eq!(a.command, b.command);
                assert_eq!(a.body, b.body);
                for (name, value) in &a.headers {
                    assert_eq!(b.header(name), Some(value.as_str()));
                }
            }
        }
    }

    /// Tiny deterministic PRNG (xorshift64*) so the test needs no extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Decodes `input` in random-sized chunks; collects items up to the first
    /// error.
    fn decode_chunked(input: &[u8], rng: &mut Rng) -> (Vec<Decoded>, Option<DecodeError>) {
        let mut d = Decoder::new(small_limits());
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(40));
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            d.feed(chunk);
            loop {
                match d.next() {
                    Ok(Some(item)) => out.push(item),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    #[test]
    fn random_input_never_panics_and_chunking_is_irrelevant() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut total_frames, mut total_errors) = (0usize, 0usize);
        let alphabet: &[u8] = b"SENDMAGCOTX:\\\nnrc\r\n\x00\x00\xffab-lengtcontent-length:5";
        for _ in 0..3000 {
            // Start from valid frames and mutate a few bytes, or pure noise.
            let mut input = Vec::new();
            if rng.below(4) == 0 {
                for _ in 0..rng.below(120) {
                    input.push(alphabet[rng.below(alphabet.len())]);
                }
            } else {
                for _ in 0..1 + rng.below(3) {
                    let mut f = Frame::new(Command::ALL[rng.below(Command::ALL.len())]);
                    for h in 0..rng.below(4) {
                        f.push_header(format!("h{h}"), "v:\\x\n");
                    }
                    let body: Vec<u8> = (0..rng.below(20)).map(|_| rng.next() as u8).collect();
                    f = f.with_body(body);
                    input.extend(encode_to_vec(&f, StompVersion::V1_2));
                    if rng.below(2) == 0 {
                        input.extend_from_slice(b"\r\n");
                    }
                }
                for _ in 0..rng.below(3) {
                    let i = rng.below(input.len());
                    input[i] = alphabet[rng.below(alphabet.len())];
                }
            }
            let (one_items, one_err) = decode_chunked(&input, &mut Rng(1)); // chunks <= 40
            let mut whole = Decoder::new(small_limits());
            whole.feed(&input);
            let mut whole_items = Vec::new();
            let whole_err = loop {
                match whole.next() {
                    Ok(Some(item)) => whole_items.push(item),
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            let (items, err) = decode_chunked(&input, &mut rng);
            total_frames += whole_items.len();
            total_errors += usize::from(whole_err.is_some());
            assert_eq!(items, whole_items, "input {input:?}");
            assert_eq!(one_items, whole_items, "input {input:?}");
            // The same error, except that a too-large frame may be noticed as
            // a different limit violation depending on how much is buffered.
            if !matches!(whole_err, Some(DecodeError::FrameTooLarge { .. }))
                && !matches!(err, Some(DecodeError::FrameTooLarge { .. }))
            {
                assert_eq!(err, whole_err, "input {input:?}");
                assert_eq!(one_err, whole_err, "input {input:?}");
            }
        }
        // The generator exercises both paths.
        assert!(total_frames > 1000, "{total_frames}");
        assert!(total_errors > 500, "{total_errors}");
    }
}
