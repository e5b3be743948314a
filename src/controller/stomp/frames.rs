//! Builders of the frames the server sends.

use bytes::Bytes;

use crate::stomp::{Command, Frame};

pub fn error(message: &str, detail: &str, receipt: Option<&str>) -> Frame {
    let mut f = Frame::new(Command::Error)
        .with_header("message", message)
        .with_header("content-type", "text/plain");
    if let Some(r) = receipt {
        f.push_header("receipt-id", r);
    }
    f.with_body(Bytes::copy_from_slice(detail.as_bytes()))
}

pub fn receipt(id: &str) -> Frame {
    Frame::new(Command::Receipt).with_header("receipt-id", id)
}

/// A JSON `MESSAGE` for one subscription.
pub fn json_message(
    destination: &str,
    subscription: &str,
    message_id: &str,
    ack: Option<&str>,
    body: Bytes,
) -> Frame {
    let mut f = Frame::new(Command::Message)
        .with_header("destination", destination)
        .with_header("content-type", "application/json")
        .with_header("subscription", subscription)
        .with_header("message-id", message_id);
    if let Some(a) = ack {
        f.push_header("ack", a);
    }
    f.with_body(body)
}
