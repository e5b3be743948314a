//! Fuzz target: the STOMP codec (`src/stomp`), through its public API.
//!
//! * `stomp_decoder_fuzz`: arbitrary bytes (mutated corpus entries, noise,
//!   and inputs built to sit just around each limit) split into arbitrary
//!   chunks and fed to a `Decoder` with the server's limits (or small
//!   arbitrary ones, which make the limit paths cheap to reach), switching
//!   the escaping version on CONNECT/STOMP as the server does. It must never
//!   panic; never hold more than `max_frame_bytes` between feeds; yield only
//!   frames within the limits whose `content-length` matches their body; give
//!   the same frames and error however the input is chunked; fail with a
//!   short printable message, sticky, with its buffer released; and every
//!   frame it yields must encode to bytes that decode back to it.
//! * `stomp_round_trip_fuzz`: decode(encode(frame)) == frame for arbitrary
//!   frames of every command, in every version, with headers that need
//!   escaping, repeated headers, binary bodies, heart-beats between frames
//!   and arbitrary splits. The few things the encoder changes on purpose
//!   (CR/LF where the frame cannot escape them, `content-length`) are
//!   predicted by [`after_round_trip`].
//! * `stomp_corpus_replays`: every file of `tests/fuzz/corpus/stomp/` through
//!   the decoder checks in several chunkings.
//!
//! The unit tests in `src/stomp` pin the codec's behaviour on chosen
//! examples; this target checks properties on inputs nobody chose.

mod fuzz;

use std::cell::Cell;

use herald::config::Config as HeraldConfig;
use herald::stomp::{
    encode_to_vec, Command, DecodeError, Decoded, Decoder, Frame, Limits, StompVersion,
};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestCaseError;

use fuzz::Tally;

const CORPUS: &str = "stomp";

/// Tokens the mutator inserts: the grammar's delimiters and keywords.
const DICTIONARY: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\r",
    b"\0",
    b":",
    b"\\",
    b"\\c",
    b"\\n",
    b"\\r",
    b"\\\\",
    b"\\t",
    b" ",
    b"\t",
    b"\n\n",
    b"\xff",
    b"\xc3\xa9",
    b"\xe2\x82",
    b"content-length:",
    b"content-length:0\n",
    b"content-length:5\n",
    b"content-length: 7\t\n",
    b"content-length:1\n\nxy\0",
    b"content-length:0\n\nx",
    b"content-length:x\n",
    b"content-length:-1\n",
    b"content-length:18446744073709551616\n",
    b"accept-version:1.0\n",
    b"accept-version:1.1\n",
    b"accept-version:1.2\n",
    b"CONNECT\n",
    b"STOMP\n",
    b"SEND\n",
    b"MESSAGE\n",
    b"CONNECTED\n",
    b"ERROR\n",
    b"destination:/app/send\n",
    b"receipt:r-1\n",
];

/// Header lines, most of them broken in one way.
const HEADER_LINES: &[&[u8]] = &[
    b"content-length:x\n",
    b"content-length:-1\n",
    b"content-length: 2\t\n",
    b"content-length:99999999999999999999999\n",
    b"content-length:\n",
    b"content-length:0\n",
    b"bad\\qname:1\n",
    b"value:ends\\\n",
    b"no-colon\n",
    b":no-name\n",
    b"x:\xff\xfe\n",
    b"x:\\c\\n\\r\\\\\n",
    b"x:a\rb\r\n",
];

/// The limits the server's decoder gets with the default configuration
/// (as `Connection::new` builds them).
fn server_limits() -> Limits {
    let c = HeraldConfig::default();
    Limits {
        max_frame_bytes: c.max_frame_bytes,
        max_headers: c.max_frame_headers,
        max_header_line_bytes: c.max_header_bytes,
    }
}

/// Limits that decode anything the tests build (for re-decoding).
fn no_limits() -> Limits {
    Limits {
        max_frame_bytes: usize::MAX,
        max_headers: usize::MAX,
        max_header_line_bytes: usize::MAX,
    }
}

// ---------------------------------------------------------------------------
// The model of what a round trip changes
// ---------------------------------------------------------------------------

/// How a frame's headers are escaped on the wire (STOMP 1.2 "Value
/// Encoding": CONNECT and CONNECTED never escape; 1.0 has no escapes; 1.1
/// has no `\r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    V1_1,
    V1_2,
}

fn mode(version: StompVersion, command: Command) -> Mode {
    match (command, version) {
        (Command::Connect | Command::Connected, _) | (_, StompVersion::V1_0) => Mode::Raw,
        (_, StompVersion::V1_1) => Mode::V1_1,
        (_, StompVersion::V1_2) => Mode::V1_2,
    }
}

/// The frame that decoding `encode(frame, version)` must give: the encoder
/// turns CR and LF it cannot escape into spaces (a header never breaks the
/// framing), writes the first `content-length` with the body's real length
/// (appending one for a non-empty body) and drops any later one.
fn after_round_trip(frame: &Frame, version: StompVersion) -> Frame {
    let m = mode(version, frame.command);
    let fix = |s: &str| match m {
        Mode::Raw => s.replace(['\r', '\n'], " "),
        Mode::V1_1 => s.replace('\r', " "),
        Mode::V1_2 => s.to_owned(),
    };
    let has_length = frame.headers.iter().any(|(n, _)| n == "content-length");
    let mut length_due = !frame.body.is_empty() || has_length;
    let mut headers = Vec::new();
    for (name, value) in &frame.headers {
        if name == "content-length" {
            if length_due {
                headers.push((name.clone(), frame.body.len().to_string()));
                length_due = false;
            }
            continue;
        }
        headers.push((fix(name), fix(value)));
    }
    if length_due {
        headers.push(("content-length".into(), frame.body.len().to_string()));
    }
    Frame {
        command: frame.command,
        headers,
        body: frame.body.clone(),
    }
}

// ---------------------------------------------------------------------------
// Decoding with every check
// ---------------------------------------------------------------------------

/// What one decoding of an input gave.
#[derive(Debug, PartialEq)]
struct Outcome {
    items: Vec<Decoded>,
    error: Option<DecodeError>,
}

fn is_limit(e: &DecodeError) -> bool {
    matches!(
        e,
        DecodeError::FrameTooLarge { .. }
            | DecodeError::TooManyHeaders { .. }
            | DecodeError::HeaderTooLong { .. }
    )
}

/// What decoding an input can end in: each must be reached.
const OUTCOMES: &[&str] = &[
    "frame",
    "heart-beat",
    "no error",
    "error: frame too large",
    "error: too many headers",
    "error: header too long",
    "error: unknown command",
    "error: malformed header",
    "error: invalid escape",
    "error: invalid content-length",
    "error: missing NUL",
    "error: invalid UTF-8",
];

fn error_key(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::FrameTooLarge { .. } => "error: frame too large",
        DecodeError::TooManyHeaders { .. } => "error: too many headers",
        DecodeError::HeaderTooLong { .. } => "error: header too long",
        DecodeError::UnknownCommand(_) => "error: unknown command",
        DecodeError::MalformedHeader(_) => "error: malformed header",
        DecodeError::InvalidEscape(_) => "error: invalid escape",
        DecodeError::InvalidContentLength(_) => "error: invalid content-length",
        DecodeError::MissingNul => "error: missing NUL",
        DecodeError::InvalidUtf8 => "error: invalid UTF-8",
    }
}

/// Decodes `input` cut at `cuts` (sorted offsets) with `limits`, checking
/// every item and the decoder's state on the way. Like the server it
/// releases the decoder's memory after each chunk (`shrink`) and, with
/// `follow_connect`, adopts the version a CONNECT or STOMP frame negotiates
/// (1.0 too, so that every escaping mode is reached).
fn decode_checked(
    input: &[u8],
    cuts: &[usize],
    limits: Limits,
    version: StompVersion,
    follow_connect: bool,
    shrink: bool,
) -> Result<Outcome, TestCaseError> {
    let mut d = Decoder::new(limits);
    d.set_version(version);
    let mut items = Vec::new();
    let mut from = 0;
    for end in cuts.iter().copied().chain([input.len()]) {
        let end = end.clamp(from, input.len());
        d.feed(&input[from..end]);
        from = end;
        loop {
            let version = d.version();
            match d.next() {
                Ok(Some(item)) => {
                    if let Decoded::Frame(f) = &item {
                        check_frame(f, version, limits)?;
                        if follow_connect && matches!(f.command, Command::Connect | Command::Stomp)
                        {
                            if let Some(v) = StompVersion::negotiate(f.header("accept-version")) {
                                d.set_version(v);
                            }
                        }
                    }
                    items.push(item);
                }
                Ok(None) => break,
                Err(e) => {
                    check_error(&e)?;
                    // Fatal and sticky, with the memory released.
                    prop_assert_eq!(d.buffered_len(), 0, "buffer kept after {:?}", e);
                    d.feed(b"SEND\n\n\0\n");
                    prop_assert_eq!(d.buffered_len(), 0, "input taken after {:?}", e);
                    prop_assert_eq!(d.next(), Err(e.clone()), "error not sticky");
                    return Ok(Outcome {
                        items,
                        error: Some(e),
                    });
                }
            }
        }
        // Between feeds the decoder holds at most one frame's worth (a
        // lone CR awaiting its LF is the one byte over a zero limit).
        prop_assert!(
            d.buffered_len() <= limits.max_frame_bytes.max(1),
            "{} bytes buffered, limit {}",
            d.buffered_len(),
            limits.max_frame_bytes
        );
        if shrink {
            d.shrink_if_idle();
        }
    }
    Ok(Outcome { items, error: None })
}

/// A decoded frame respects the limits, its `content-length` (the first
/// one) is its body's length, and it survives a round trip.
fn check_frame(f: &Frame, version: StompVersion, limits: Limits) -> Result<(), TestCaseError> {
    prop_assert!(f.headers.len() <= limits.max_headers);
    // Unescaping only shortens, so the wire sizes bound the decoded ones.
    let mut size = f.command.as_str().len() + 1;
    for (name, value) in &f.headers {
        prop_assert!(!name.is_empty());
        prop_assert!(name.len() + 1 + value.len() <= limits.max_header_line_bytes);
        if mode(version, f.command) == Mode::Raw {
            prop_assert!(!name.contains(':'), "raw header name {:?}", name);
        }
        size += name.len() + value.len() + 2;
    }
    size += 1 + f.body.len();
    prop_assert!(size <= limits.max_frame_bytes, "{} bytes decoded", size);
    match f.header("content-length") {
        Some(raw) => {
            let n = raw.trim_matches([' ', '\t']).parse::<usize>();
            prop_assert_eq!(n, Ok(f.body.len()), "content-length {:?}", raw);
        }
        None => prop_assert!(!f.body.contains(&0), "NUL in a body without content-length"),
    }
    let wire = encode_to_vec(f, version);
    let mut d = Decoder::new(no_limits());
    d.set_version(version);
    d.feed(&wire);
    let again = d.next();
    prop_assert_eq!(
        again,
        Ok(Some(Decoded::Frame(after_round_trip(f, version)))),
        "re-encoded as {:?}",
        fuzz::escape_bytes(&wire)
    );
    prop_assert_eq!(d.next(), Ok(None));
    prop_assert_eq!(d.buffered_len(), 0);
    Ok(())
}

/// An error's text goes into an ERROR frame's `message` header: short,
/// printable, and carried intact.
fn check_error(e: &DecodeError) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(text.len() <= 256, "long error: {}", text);
    prop_assert!(!text.chars().any(char::is_control), "{:?}", text);
    let error = Frame::new(Command::Error).with_header("message", text.clone());
    let mut d = Decoder::new(server_limits());
    d.feed(&encode_to_vec(&error, StompVersion::V1_2));
    match d.next() {
        Ok(Some(Decoded::Frame(f))) => prop_assert_eq!(f.header("message"), Some(text.as_str())),
        other => prop_assert!(false, "ERROR frame for {:?} decodes as {:?}", text, other),
    }
    Ok(())
}

/// Decodes `input` whole and as `cuts` say (and byte by byte when small)
/// and checks that the chunking changed nothing.
fn check_input(
    input: &[u8],
    cuts: &[usize],
    limits: Limits,
    tally: Option<&Tally>,
) -> Result<(), TestCaseError> {
    let whole = decode_checked(input, &[], limits, StompVersion::V1_2, true, false)?;
    let mut splits = vec![cuts.to_vec()];
    if input.len() <= 4096 {
        splits.push((1..input.len()).collect());
    }
    for split in &splits {
        let chunked = decode_checked(input, split, limits, StompVersion::V1_2, true, true)?;
        prop_assert_eq!(&chunked.items, &whole.items, "cut at {:?}", split);
        match (&chunked.error, &whole.error) {
            (a, b) if a == b => {}
            // How much is buffered decides which limit is seen first when
            // a frame breaks several; too large it is, either way.
            (Some(a), Some(b))
                if is_limit(a)
                    && is_limit(b)
                    && (matches!(a, DecodeError::FrameTooLarge { .. })
                        || matches!(b, DecodeError::FrameTooLarge { .. })) => {}
            (a, b) => prop_assert!(false, "cut at {:?}: {:?}, whole: {:?}", split, a, b),
        }
    }
    if let Some(t) = tally {
        for item in &whole.items {
            t.hit(match item {
                Decoded::Frame(_) => "frame",
                Decoded::HeartBeat => "heart-beat",
            });
        }
        t.hit(whole.error.as_ref().map_or("no error", error_key));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct DecodeCase {
    input: Vec<u8>,
    cuts: Vec<Index>,
    limits: Limits,
}

impl DecodeCase {
    fn cuts(&self) -> Vec<usize> {
        let mut cuts: Vec<usize> = self
            .cuts
            .iter()
            .map(|i| i.index(self.input.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts
    }
}

fn small_limits() -> impl Strategy<Value = Limits> {
    (1..400usize, 0..8usize, 0..48usize).prop_map(|(f, h, l)| Limits {
        max_frame_bytes: f,
        max_headers: h,
        max_header_line_bytes: l,
    })
}

/// Inputs just below, at and above one of `limits`: a long header line,
/// many headers, or a big body with or without `content-length`, after a
/// frame start taken from the corpus.
fn near_limits(limits: Limits, seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (select(seeds), 0..4u8, -3..=3i64, any::<bool>()).prop_map(move |(seed, kind, delta, nul)| {
        let around = |n: usize| (n as i64 + delta).max(0) as usize;
        // A command line from the seed, else SEND.
        let mut out = match seed.iter().position(|&b| b == b'\n') {
            Some(i) if Command::parse(&seed[..i]).is_ok() => seed[..=i].to_vec(),
            _ => b"SEND\n".to_vec(),
        };
        match kind {
            0 => {
                out.extend_from_slice(b"x:");
                let len = around(limits.max_header_line_bytes).saturating_sub(2);
                out.resize(out.len() + len, b'v');
                out.extend_from_slice(b"\n\n");
            }
            1 => {
                for i in 0..around(limits.max_headers) {
                    out.extend_from_slice(format!("h{i}:v\n").as_bytes());
                }
                out.push(b'\n');
            }
            2 => {
                out.push(b'\n');
                let len = around(limits.max_frame_bytes).saturating_sub(out.len());
                out.resize(out.len() + len, b'b');
            }
            _ => {
                let head = out.len() + "content-length:\n\n".len() + 7;
                let len = around(limits.max_frame_bytes).saturating_sub(head);
                out.extend_from_slice(format!("content-length:{len:07}\n\n").as_bytes());
                out.resize(out.len() + len, 0);
            }
        }
        if nul {
            out.push(0);
        }
        out
    })
}

fn decode_cases(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = DecodeCase> {
    let server = server_limits();
    // Inputs up to a little over the frame limit: a piece of at most 64
    // bytes repeated this often.
    let max_repeat = (server.max_frame_bytes / 32) as u32;
    let interesting = prop_oneof![
        3 => select(DICTIONARY.iter().flat_map(|t| t.iter().copied()).collect::<Vec<u8>>()),
        1 => any::<u8>(),
    ];
    // Encoded frames edited a little: broken where it matters (escapes,
    // lengths, EOLs) more often than corpus entries are.
    let frames = fuzz::mutate(
        streams().prop_map(|s| s.wire()),
        std::sync::Arc::new(seeds.clone()),
        DICTIONARY,
        64,
    );
    // Encoded frames given one more header line, often a broken one.
    let extra_header =
        (streams(), select(HEADER_LINES), any::<Index>()).prop_map(|(s, line, at)| {
            let mut wire = s.wire();
            let ends: Vec<usize> = (0..wire.len()).filter(|&i| wire[i] == b'\n').collect();
            let at = if ends.is_empty() {
                0
            } else {
                ends[at.index(ends.len())] + 1
            };
            wire.splice(at..at, line.iter().copied());
            wire
        });
    let input = prop_oneof![
        6 => fuzz::mutated(seeds.clone(), DICTIONARY, max_repeat),
        3 => frames,
        3 => extra_header,
        2 => prop::collection::vec(interesting, 0..300),
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ];
    let cuts = prop::collection::vec(any::<Index>(), 0..24);
    prop_oneof![
        6 => (input.clone(), cuts.clone(), Just(server)),
        4 => (input, cuts.clone(), small_limits()),
        1 => (near_limits(server, seeds.clone()), cuts.clone(), Just(server)),
        1 => small_limits().prop_flat_map(move |l| (near_limits(l, seeds.clone()), cuts.clone(), Just(l))),
    ]
    .prop_map(|(input, cuts, limits)| DecodeCase {
        input,
        cuts,
        limits,
    })
}

/// Header text: mostly letters, often the characters escaping is about.
fn text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> + Clone {
    let c = prop_oneof![
        6 => select(('a'..='z').chain('0'..='9').collect::<Vec<char>>()),
        4 => select(vec![':', '\n', '\r', '\\', 'c', 'n', 'r', 't', ' ', '\t', '\0', '-']),
        1 => any::<char>(),
    ];
    prop::collection::vec(c, len).prop_map(|cs| cs.into_iter().collect())
}

fn header_name() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => select(vec![
            "destination", "content-length", "content-type", "receipt", "id", "ack",
            "subscription", "message-id", "accept-version", "heart-beat", "x", "dup",
        ])
        .prop_map(String::from),
        2 => text(1..12),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..32),
        2 => prop::collection::vec(prop_oneof![Just(0u8), Just(b'\n'), any::<u8>()], 0..64),
        1 => prop::collection::vec(any::<u8>(), 0..5000),
    ]
}

fn frame(version: StompVersion) -> impl Strategy<Value = Frame> + Clone {
    (
        select(Command::ALL.to_vec()),
        prop::collection::vec((header_name(), text(0..16)), 0..8),
        body(),
    )
        .prop_map(move |(command, mut headers, body)| {
            // CONNECT and CONNECTED cannot escape anything, and a colon in
            // a header name would end the name early: such a header cannot
            // be written at all, by anyone.
            if mode(version, command) == Mode::Raw {
                for (name, _) in &mut headers {
                    *name = name.replace(':', "-");
                }
            }
            Frame {
                command,
                headers,
                body: body.into(),
            }
        })
}

/// A heart-beat EOL.
fn eol() -> impl Strategy<Value = &'static [u8]> + Clone {
    select(vec![&b"\n"[..], &b"\r\n"[..]])
}

#[derive(Debug, Clone)]
struct Stream {
    version: StompVersion,
    leading: Vec<&'static [u8]>,
    frames: Vec<(Frame, Vec<&'static [u8]>)>,
    cuts: Vec<Index>,
}

impl Stream {
    fn wire(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.leading.concat();
        for (f, eols) in &self.frames {
            out.extend(encode_to_vec(f, self.version));
            out.extend(eols.concat());
        }
        out
    }

    fn expected(&self) -> Vec<Decoded> {
        let mut out = vec![Decoded::HeartBeat; self.leading.len()];
        for (f, eols) in &self.frames {
            out.push(Decoded::Frame(after_round_trip(f, self.version)));
            out.extend(eols.iter().map(|_| Decoded::HeartBeat));
        }
        out
    }
}

fn streams() -> impl Strategy<Value = Stream> + Clone {
    select(vec![
        StompVersion::V1_0,
        StompVersion::V1_1,
        StompVersion::V1_2,
    ])
    .prop_flat_map(|v| {
        (
            prop::collection::vec(eol(), 0..3),
            prop::collection::vec((frame(v), prop::collection::vec(eol(), 0..3)), 1..5),
            prop::collection::vec(any::<Index>(), 0..16),
        )
            .prop_map(move |(leading, frames, cuts)| Stream {
                version: v,
                leading,
                frames,
                cuts,
            })
    })
}

fn seeds() -> Vec<Vec<u8>> {
    fuzz::corpus(CORPUS).into_iter().map(|(_, b)| b).collect()
}

// ---------------------------------------------------------------------------
// The targets
// ---------------------------------------------------------------------------

#[test]
fn stomp_corpus_replays() {
    let tally = Tally::new(OUTCOMES);
    for (name, bytes) in fuzz::corpus(CORPUS) {
        // The server's limits, and small ones that most entries break.
        let small = Limits {
            max_frame_bytes: 64,
            max_headers: 2,
            max_header_line_bytes: 24,
        };
        for limits in [server_limits(), small] {
            for size in [1, 2, 3, 7, 64, 4096] {
                let cuts: Vec<usize> = (size..bytes.len()).step_by(size).collect();
                if let Err(e) = check_input(&bytes, &cuts, limits, Some(&tally)) {
                    panic!("corpus {CORPUS}/{name}, chunks of {size}: {e}");
                }
            }
        }
    }
    tally.assert_each_at_least("stomp corpus", 1);
}

#[test]
fn stomp_decoder_fuzz() {
    let tally = Tally::new(OUTCOMES);
    let server_too_large = Cell::new(0u64);
    let server = server_limits();
    fuzz::fuzz(
        "stomp decoder",
        CORPUS,
        0.6,
        512,
        decode_cases(seeds()),
        |case| case.input.clone(),
        |case| {
            check_input(&case.input, &case.cuts(), case.limits, Some(&tally))?;
            if case.limits == server && case.input.len() > server.max_frame_bytes {
                server_too_large.set(server_too_large.get() + 1);
            }
            Ok(())
        },
    );
    tally.assert_each_at_least("stomp decoder", 1);
    assert!(
        server_too_large.get() > 0,
        "no input went past the server's frame limit"
    );
}

#[test]
fn stomp_round_trip_fuzz() {
    let tally = Tally::new(&[
        "1.0",
        "1.1",
        "1.2",
        "unescaped frame",
        "escaped character",
        "repeated header",
        "NUL in body",
        "content-length given",
        "heart-beat",
        "split",
    ]);
    fuzz::fuzz(
        "stomp round trip",
        CORPUS,
        0.4,
        256,
        streams(),
        Stream::wire,
        |stream| {
            let wire = stream.wire();
            let mut cuts: Vec<usize> = stream
                .cuts
                .iter()
                .map(|i| i.index(wire.len() + 1))
                .collect();
            cuts.sort_unstable();
            let got = decode_checked(&wire, &cuts, server_limits(), stream.version, false, true)?;
            prop_assert_eq!(got.error, None);
            prop_assert_eq!(got.items, stream.expected());

            tally.hit(stream.version.as_str());
            tally.hit("split");
            if !stream.leading.is_empty() || stream.frames.iter().any(|(_, e)| !e.is_empty()) {
                tally.hit("heart-beat");
            }
            for (f, _) in &stream.frames {
                let m = mode(stream.version, f.command);
                if m == Mode::Raw {
                    tally.hit("unescaped frame");
                } else if f
                    .headers
                    .iter()
                    .any(|(n, v)| n.contains([':', '\n', '\\']) || v.contains([':', '\n', '\\']))
                {
                    tally.hit("escaped character");
                }
                let names: Vec<&str> = f.headers.iter().map(|(n, _)| n.as_str()).collect();
                if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
                    tally.hit("repeated header");
                }
                if f.body.contains(&0) {
                    tally.hit("NUL in body");
                }
                if f.header("content-length").is_some() {
                    tally.hit("content-length given");
                }
            }
            Ok(())
        },
    );
    tally.assert_each_at_least("stomp round trip", 1);
}

/// The model itself, on the cases the encoder's documentation names: a
/// wrong model would make the round-trip property vacuous or wrong.
#[test]
fn round_trip_model_matches_the_encoder_contract() {
    let f = Frame::new(Command::Send)
        .with_header("content-length", "999")
        .with_header("a:b", "c\r\nd")
        .with_header("content-length", "1")
        .with_body("xyz");
    let expected = Frame::new(Command::Send)
        .with_header("content-length", "3")
        .with_header("a:b", "c\r\nd")
        .with_body("xyz");
    assert_eq!(after_round_trip(&f, StompVersion::V1_2), expected);
    let expected_1_1 = Frame::new(Command::Send)
        .with_header("content-length", "3")
        .with_header("a:b", "c \nd")
        .with_body("xyz");
    assert_eq!(after_round_trip(&f, StompVersion::V1_1), expected_1_1);
    let connect = Frame::new(Command::Connect).with_header("login", "a\nb\rc");
    assert_eq!(
        after_round_trip(&connect, StompVersion::V1_2),
        Frame::new(Command::Connect).with_header("login", "a b c")
    );
    let empty = Frame::new(Command::Receipt).with_header("content-length", "7");
    assert_eq!(
        after_round_trip(&empty, StompVersion::V1_2),
        Frame::new(Command::Receipt).with_header("content-length", "0")
    );
}
