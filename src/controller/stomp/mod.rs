//! STOMP 1.2 over WebSocket (`GET /ws`).

mod connection;
mod destination;
mod frames;

use std::sync::Arc;
use std::time::Duration;

use poem::web::websocket::{WebSocket, WebSocketConfig};
use poem::web::Data;
use poem::{handler, FromRequest, IntoResponse, Request, Response};

use super::admission::Ticket;
use crate::error::AppError;
use crate::service::Services;

/// WebSocket subprotocols offered, best first.
pub const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// A client must CONNECT within this time.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a client may send before its CONNECT is accepted: a CONNECT is a
/// few headers, and an anonymous client must not make the server buffer
/// megabytes.
pub const PRE_CONNECT_READ_BUDGET: u64 = 64 * 1024;

#[handler]
pub async fn ws_endpoint(req: &Request, services: Data<&Services>) -> poem::Result<Response> {
    let services = services.0.clone();
    // Before the upgrade is even looked at: a stopping node takes nobody.
    let Some(live) = services.connections.enter() else {
        return Err(AppError::Unavailable("the server is stopping".into()).into());
    };
    let ws = WebSocket::from_request_without_body(req).await?;
    // Absent only when the endpoint is served without our listener (tests).
    let ticket = req.extensions().get::<Arc<Ticket>>().cloned();
    if let Some(t) = &ticket {
        t.limit_reads(PRE_CONNECT_READ_BUDGET);
    }
    let max_frame = services.config.max_frame_bytes;
    // Small buffers: an idle connection should cost a few KiB, not the
    // library defaults' hundreds. Messages may carry up to a whole frame
    // (plus a frame split across messages is reassembled by our decoder);
    // the margin lets a message a little over the frame limit reach the
    // decoder, whose ERROR names the limit, and a larger one is refused
    // by the WebSocket layer as soon as its header arrives.
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(max_frame.saturating_mul(4).max(1 << 20))
        .max_message_size(Some(max_frame + 64 * 1024))
        .max_frame_size(Some(max_frame + 64 * 1024));
    Ok(ws
        .protocols(SUBPROTOCOLS)
        .config(config)
        .on_upgrade(move |socket| connection::serve(socket, services, live, ticket))
        .into_response())
}
