//! A minimal STOMP 1.2 client over WebSocket for the benchmark: connect,
//! subscribe with receipts, then split into a sink and a stream for the
//! writer and reader tasks.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use herald::stomp::{encode_to_vec, Command, Decoded, Decoder, Frame, Limits, StompVersion};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type WsSink = SplitSink<Ws, Message>;
pub type WsStream = SplitStream<Ws>;

/// A connected (CONNECTED received) STOMP session.
pub struct Conn {
    ws: Ws,
    decoder: Decoder,
    /// Frames other than RECEIPT received while waiting for receipts (e.g.
    /// messages a broker pushes as soon as a subscription exists).
    backlog: Vec<Frame>,
}

/// The parts a connection is split into once set up.
pub struct Parts {
    pub sink: WsSink,
    pub stream: WsStream,
    pub decoder: Decoder,
    pub backlog: Vec<Frame>,
}

/// Encodes a frame as one WebSocket text message (binary if, unexpectedly,
/// the frame is not UTF-8).
pub fn to_message(frame: &Frame) -> Message {
    let bytes = encode_to_vec(frame, StompVersion::V1_2);
    match String::from_utf8(bytes) {
        Ok(text) => Message::Text(text.into()),
        Err(e) => Message::Binary(e.into_bytes().into()),
    }
}

/// The text of an ERROR frame, for error messages.
pub fn error_text(frame: &Frame) -> String {
    let message = frame.header("message").unwrap_or("");
    let body = String::from_utf8_lossy(&frame.body);
    let body: String = body.chars().take(300).collect();
    format!("ERROR frame: {message} {body}").trim().to_string()
}

/// Decoder limits generous enough for any broker's frames.
fn limits() -> Limits {
    Limits {
        max_frame_bytes: 8 * 1024 * 1024,
        ..Limits::default()
    }
}

impl Conn {
    /// Opens the WebSocket (subprotocol `v12.stomp`), sends CONNECT with
    /// `headers` (plus `accept-version:1.2` and `heart-beat:0,0`) and waits
    /// for CONNECTED. `read_buffer` is tungstenite's read chunk size.
    pub async fn connect(
        url: &str,
        headers: &[(String, String)],
        read_buffer: usize,
    ) -> Result<Conn> {
        let mut request = url
            .into_client_request()
            .with_context(|| format!("invalid WebSocket URL {url}"))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("v12.stomp"),
        );
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .max_message_size(Some(16 * 1024 * 1024));
        let (ws, _response) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true)
                .await
                .with_context(|| format!("WebSocket connection to {url} failed"))?;
        let mut conn = Conn {
            ws,
            decoder: Decoder::new(limits()),
            backlog: Vec::new(),
        };
        let mut connect = Frame::new(Command::Connect)
            .with_header("accept-version", "1.2")
            .with_header("heart-beat", "0,0");
        for (k, v) in headers {
            connect.push_header(k.clone(), v.clone());
        }
        conn.send(&connect).await?;
        loop {
            let frame = conn.next_frame().await?;
            match frame.command {
                Command::Connected => {
                    let version = frame
                        .header("version")
                        .and_then(StompVersion::parse)
                        .unwrap_or(StompVersion::V1_2);
                    conn.decoder.set_version(version);
                    return Ok(conn);
                }
                Command::Error => bail!("CONNECT refused: {}", error_text(&frame)),
                _ => conn.backlog.push(frame),
            }
        }
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<()> {
        self.ws
            .send(to_message(frame))
            .await
            .context("WebSocket send failed")
    }

    /// The next frame (heart-beats skipped).
    pub async fn next_frame(&mut self) -> Result<Frame> {
        loop {
            match self.decoder.next() {
                Ok(Some(Decoded::Frame(f))) => return Ok(f),
                Ok(Some(Decoded::HeartBeat)) => continue,
                Ok(None) => {}
                Err(e) => bail!("undecodable STOMP from the server: {e}"),
            }
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => self.decoder.feed(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => self.decoder.feed(&b),
                Some(Ok(Message::Close(c))) => {
                    bail!("connection {}", closed_by_server(c.as_ref()))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow!(e).context("WebSocket receive failed")),
                None => bail!("connection {}", closed_by_server(None)),
            }
        }
    }

    /// Sends the SUBSCRIBE frames, each with a `receipt` header, and waits
    /// for every RECEIPT (the caller bounds the wait with a timeout).
    pub async fn subscribe(&mut self, subscriptions: Vec<Frame>) -> Result<()> {
        let mut pending = HashSet::new();
        for (i, mut frame) in subscriptions.into_iter().enumerate() {
            let receipt = format!("sub-{i}");
            frame.set_header("receipt", receipt.clone());
            pending.insert(receipt);
            self.send(&frame).await?;
        }
        while !pending.is_empty() {
            let frame = self.next_frame().await?;
            match frame.command {
                Command::Receipt => {
                    if let Some(id) = frame.header("receipt-id") {
                        pending.remove(id);
                    }
                }
                Command::Error => bail!("SUBSCRIBE refused: {}", error_text(&frame)),
                _ => self.backlog.push(frame),
            }
        }
        Ok(())
    }

    pub fn into_parts(self) -> Parts {
        let (sink, stream) = self.ws.split();
        Parts {
            sink,
            stream,
            decoder: self.decoder,
            backlog: self.backlog,
        }
    }
}

/// Runs `fut` with a timeout, turning the elapsed case into an error.
pub async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => bail!("no answer within {:.1} s", limit.as_secs_f64()),
    }
}

/// "closed by the server", with the code and reason of its close frame.
pub fn closed_by_server(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!("closed by the server ({})", u16::from(f.code)),
        Some(f) => format!("closed by the server ({}: {})", u16::from(f.code), f.reason),
        None => "closed by the server".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    #[test]
    fn a_close_is_told_by_its_code_and_reason() {
        let away = CloseFrame {
            code: CloseCode::Away,
            reason: "server shutting down".into(),
        };
        assert_eq!(
            closed_by_server(Some(&away)),
            "closed by the server (1001: server shutting down)"
        );
        let bare = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        assert_eq!(closed_by_server(Some(&bare)), "closed by the server (1000)");
        assert_eq!(closed_by_server(None), "closed by the server");
    }
}
