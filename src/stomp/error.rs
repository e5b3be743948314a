//! Decoding errors.
//!
//! Every decode error is fatal for the connection: the server should reply
//! with an ERROR frame (using the error's `Display` text as the `message`
//! header) and close. The messages are short and never contain raw control
//! characters from the peer's input.

/// Why a byte stream is not valid STOMP.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame (command line + headers + body) exceeds the configured size.
    #[error("frame too large: the limit is {limit} bytes")]
    FrameTooLarge { limit: usize },
    /// More header lines than allowed.
    #[error("too many headers: the limit is {limit}")]
    TooManyHeaders { limit: usize },
    /// A command or header line is longer than allowed.
    #[error("header line too long: the limit is {limit} bytes")]
    HeaderTooLong { limit: usize },
    /// The command line is not a known STOMP command (case-sensitive).
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    /// A header line is not `name:value` or has an empty name.
    #[error("malformed header: {0}")]
    MalformedHeader(String),
    /// A header contains an escape sequence the protocol version does not
    /// define (e.g. `\t`), or ends with a lone backslash.
    #[error("invalid escape sequence '{0}' in header")]
    InvalidEscape(String),
    /// The `content-length` header is not a non-negative decimal integer.
    #[error("invalid content-length '{0}'")]
    InvalidContentLength(String),
    /// The octet after `content-length` body bytes is not NUL.
    #[error("frame body is not terminated by a NUL octet after content-length bytes")]
    MissingNul,
    /// A command or header line is not valid UTF-8.
    #[error("header is not valid UTF-8")]
    InvalidUtf8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_readable() {
        assert_eq!(
            DecodeError::FrameTooLarge { limit: 10 }.to_string(),
            "frame too large: the limit is 10 bytes"
        );
        assert_eq!(
            DecodeError::UnknownCommand("FOO".into()).to_string(),
            "unknown command 'FOO'"
        );
        assert_eq!(
            DecodeError::InvalidEscape("\\t".into()).to_string(),
            "invalid escape sequence '\\t' in header"
        );
    }
}
