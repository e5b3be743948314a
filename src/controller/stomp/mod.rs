//! STOMP 1.2 over WebSocket (`GET /ws`).

mod connection;
mod destination;
mod frames;

use std::time::Duration;

use poem::web::websocket::{WebSocket, WebSocketConfig};
use poem::web::Data;
use poem::{handler, IntoResponse};

use crate::service::Services;

/// WebSocket subprotocols offered, best first.
pub const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// A client must CONNECT within this time.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[handler]
pub async fn ws_endpoint(ws: WebSocket, services: Data<&Services>) -> impl IntoResponse {
    let services = services.0.clone();
    let max_frame = services.config.max_frame_bytes;
    // Small buffers: an idle connection should cost a few KiB, not the
    // library defaults' hundreds. Messages may carry up to a whole frame
    // (plus a frame split across messages is reassembled by our decoder).
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(max_frame.saturating_mul(4).max(1 << 20))
        .max_message_size(Some(max_frame + 64 * 1024))
        .max_frame_size(Some(max_frame + 64 * 1024));
    ws.protocols(SUBPROTOCOLS)
        .config(config)
        .on_upgrade(move |socket| connection::serve(socket, services))
}
