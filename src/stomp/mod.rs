//! Pure STOMP 1.2 frame codec (no I/O): frame model, incremental decoder,
//! encoder and heart-beat negotiation helpers. STOMP 1.0 and 1.1 header
//! escaping rules are supported via [`StompVersion`].
//!
//! Typical use per connection:
//!
//! 1. create a [`Decoder`] (it holds no heap memory until data arrives);
//! 2. for each received WebSocket message, [`Decoder::feed`] its payload and
//!    call [`Decoder::next`] until it returns `Ok(None)`; any `Err` is fatal
//!    (send an ERROR frame with the error text and close);
//! 3. once the version is negotiated (see [`StompVersion::negotiate`]), call
//!    [`Decoder::set_version`] and encode outgoing frames with [`encode`] for
//!    that version; send [`HEARTBEAT`] per [`negotiate_heart_beat`];
//! 4. call [`Decoder::shrink_if_idle`] when the connection goes quiet.
//!
//! The codec does not enforce per-command rules (required headers, which
//! frames may carry a body); that is the server's job.

mod decoder;
mod encoder;
mod error;
mod escape;
mod frame;
mod heartbeat;

pub use decoder::{Decoded, Decoder, Limits};
pub use encoder::{encode, encode_to_bytes, encode_to_vec, HEARTBEAT};
pub use error::DecodeError;
pub use frame::{Command, Frame, StompVersion};
pub use heartbeat::{negotiate_heart_beat, parse_heart_beat};
