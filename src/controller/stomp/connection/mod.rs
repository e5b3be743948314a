//! One STOMP connection: its state, its loop and frame dispatch. The
//! handlers live beside it: `connect` (CONNECT, heart-beats),
//! `subscriptions`, `sending` (the ordered pipeline of in-flight sends),
//! `acking`, `transactions` and `outbound` (what it writes).

use std::collections::HashMap;
use std::future::pending;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{CloseCode, Message, WebSocketStream};
use tokio::sync::{mpsc, Notify};

use super::super::admission::Ticket;
use super::destination::{self, SendTarget, SubscribeTarget, TopicName};
use super::frames;
use crate::error::{AppError, AppResult};
use crate::model::dto::{SendAck, SendErrorVo, SendReq, StompAckReq};
use crate::model::{AckCommand, InboxStatus};
use crate::service::connections::LiveConnection;
use crate::service::delivery::{Broadcast, Outbound, UserEvent};
use crate::service::redelivery::Verdict;
use crate::service::tokens::TokenWatch;
use crate::service::Services;
use crate::stomp::{
    encode_to_vec, negotiate_heart_beat, parse_heart_beat, Command, Decoded, Decoder, Frame,
    Limits, StompVersion,
};

mod acking;
mod connect;
mod limits;
mod outbound;
mod sending;
mod subscriptions;
mod transactions;

/// Sends awaiting durability per connection; beyond it the connection stops
/// reading (backpressure to that client only).
const MAX_IN_FLIGHT: usize = 256;
/// Unacked client-mode pushes remembered per connection.
const MAX_UNACKED: usize = 8192;
/// Frames buffered in one transaction.
const MAX_TX_FRAMES: usize = 1024;
/// Pushes written per flush.
const WRITE_BATCH: usize = 64;

type Sink = SplitSink<WebSocketStream, Message>;
type InFlight = BoxFuture<'static, (Option<String>, Option<String>, AppResult<SendAck>)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

struct Subscription {
    target: SubscribeTarget,
    ack: AckMode,
}

enum UnackedKind {
    /// A pushed message and the user's `inboxSeq` of it.
    Message {
        id: u64,
        inbox_seq: i64,
    },
    Other,
}

struct Unacked {
    subscription: String,
    kind: UnackedKind,
    order: u64,
}

/// The state of an authenticated connection.
struct Session {
    user_id: u64,
    conn_id: u64,
    subs: HashMap<String, Subscription>,
    unacked: HashMap<String, Unacked>,
    transactions: HashMap<String, Vec<Frame>>,
    counter: u64,
    send_every: Option<Duration>,
    expect_every: Option<Duration>,
    /// The token it connected with, watched for revocation.
    token: TokenWatch,
}

/// A fatal protocol error: sent as `ERROR`, then the connection closes.
struct Fatal {
    message: String,
    detail: String,
    receipt: Option<String>,
}

impl Fatal {
    fn new(message: impl Into<String>, frame: Option<&Frame>) -> Fatal {
        let message = message.into();
        Fatal {
            detail: message.clone(),
            message,
            receipt: frame.and_then(|f| f.header("receipt")).map(str::to_string),
        }
    }
}

type Step = Result<(), Fatal>;

struct Connection {
    services: Services,
    sink: Sink,
    decoder: Decoder,
    version: StompVersion,
    binary: bool,
    session: Option<Session>,
    in_flight: FuturesOrdered<InFlight>,
    outgoing: Vec<Frame>,
    last_read: Instant,
    last_write: Instant,
    disconnect_receipt: Option<String>,
    closing: bool,
    /// The node is stopping: read nothing more, finish the sends in
    /// flight, then close with 1001 (going away) so clients reconnect.
    leaving: bool,
    heartbeat_due: bool,
    /// Set by CONNECT, taken by the connection loop.
    pending_registration: Option<(mpsc::Receiver<Outbound>, Arc<Notify>)>,
    /// The socket's admission ticket (absent when served without our
    /// listener, in in-process tests).
    ticket: Option<Arc<Ticket>>,
    /// Socket bytes read when the last WebSocket message was complete.
    bytes_at_last_message: u64,
    partial: PartialFrame,
    /// The WebSocket layer failed: its stream must not be read again (it
    /// would go on buffering the refused message).
    stream_failed: bool,
    /// A write failed or never finished: the socket is dropped unclosed.
    write_failed: bool,
}

/// The unfinished frame the decoder holds, as charged to the budget.
#[derive(Default)]
struct PartialFrame {
    /// Bytes charged, and to whom (0 before CONNECT).
    held: usize,
    owner: u64,
    /// When the decoder started holding it.
    since: Option<Instant>,
}

/// Why a stopping node closes its connections (WebSocket close reason).
const LEAVING_REASON: &str = "server shutting down";
/// How long a closing connection waits for the client's close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);
/// How long a connection whose input is discarded reads on before closing.
const DISCARD_LINGER: Duration = Duration::from_secs(5);

pub async fn serve(
    socket: WebSocketStream,
    services: Services,
    live: LiveConnection,
    ticket: Option<Arc<Ticket>>,
) {
    let (sink, mut stream) = socket.split();
    let frame_timeout = Duration::from_millis(services.config.frame_timeout_ms);
    let mut conn = Connection::new(services, sink, ticket);
    let stall_check = tokio::time::sleep(frame_timeout);
    tokio::pin!(stall_check);
    let mut outbound: Option<mpsc::Receiver<Outbound>> = None;
    let mut kill: Arc<Notify> = Arc::new(Notify::new());
    // Fired when the connection's token is revoked (set at CONNECT).
    let mut revoked: Arc<Notify> = Arc::new(Notify::new());
    let connect_deadline = tokio::time::sleep(super::CONNECT_TIMEOUT);
    tokio::pin!(connect_deadline);
    let mut heartbeat: Option<tokio::time::Interval> = None;

    while !conn.closing {
        let connected = conn.session.is_some();
        let step = tokio::select! {
            _ = kill.notified() => Err(Fatal::new("slow consumer: too many undelivered messages", None)),
            _ = revoked.notified() => Err(Fatal::new("token revoked", None)),
            _ = &mut connect_deadline, if !connected => Err(Fatal::new("no CONNECT frame in time", None)),
            _ = live.asked_to_leave(), if !conn.leaving => {
                conn.leaving = true;
                Ok(())
            }
            msg = stream.next(), if conn.in_flight.len() < MAX_IN_FLIGHT && conn.disconnect_receipt.is_none() && !conn.leaving => {
                match msg {
                    Some(Ok(m)) => conn.on_ws_message(m).await,
                    Some(Err(e)) => {
                        conn.stream_failed = true;
                        match refused_message(&e, conn.services.config.max_frame_bytes) {
                            Some(fatal) => Err(fatal),
                            None => break,
                        }
                    }
                    None => break,
                }
            }
            _ = &mut stall_check => conn.check_stall(frame_timeout).map(|next| {
                stall_check.as_mut().reset(next.into());
            }),
            item = recv_opt(&mut outbound) => match item {
                Some(first) => conn.on_outbound(first, outbound.as_mut()),
                None => break,
            },
            Some((receipt, cmid, result)) = conn.in_flight.next(), if !conn.in_flight.is_empty() => {
                conn.on_send_done(receipt, cmid, result);
                Ok(())
            }
            _ = tick_opt(&mut heartbeat) => conn.on_heartbeat_tick(),
        };
        if let Err(fatal) = step {
            conn.outgoing.push(frames::error(
                &fatal.message,
                &fatal.detail,
                fatal.receipt.as_deref(),
            ));
            conn.closing = true;
        }
        // A DISCONNECT with receipt is answered once every earlier send is done.
        if conn.in_flight.is_empty() {
            if let Some(r) = conn.disconnect_receipt.take() {
                conn.outgoing.push(frames::receipt(&r));
                conn.closing = true;
            }
            // A leaving connection goes once every send it read is answered.
            conn.closing |= conn.leaving;
        }
        // A client that stops reading blocks the write: it is given up when
        // found slow (its queue filled meanwhile) or after `frame_timeout`.
        let flushed = tokio::select! {
            r = conn.flush() => r.is_ok(),
            _ = kill.notified() => false,
            _ = tokio::time::sleep(frame_timeout) => {
                metrics::counter!("herald_stalled_writes_total").increment(1);
                false
            }
        };
        if !flushed {
            conn.write_failed = true;
            break;
        }
        // Registration happens inside CONNECT handling; pick up its channels.
        if outbound.is_none() {
            if let Some((rx, k)) = conn.take_registration() {
                outbound = Some(rx);
                kill = k;
                if let Some(s) = &conn.session {
                    revoked = s.token.signal();
                }
                heartbeat = conn.heartbeat_interval();
            }
        }
    }
    conn.cleanup();
    if conn.write_failed {
        // Nothing more can be written; dropping the socket closes it.
        return;
    }
    let mut linger = CLOSE_HANDSHAKE;
    if conn.stream_failed {
        if let Some(t) = &conn.ticket {
            t.discard_input();
            // The client may still be sending what was refused.
            linger = DISCARD_LINGER;
        }
    }
    close(conn.sink, stream, conn.leaving, linger).await;
}

/// The ERROR for a message the WebSocket layer refused as too large (any
/// other failure of the stream just ends the connection).
fn refused_message(e: &std::io::Error, max_frame: usize) -> Option<Fatal> {
    // poem passes tungstenite's capacity errors on as text only.
    let text = e.to_string();
    text.contains("Message too long").then(|| {
        Fatal::new(
            format!("frame too large: at most {max_frame} bytes ({text})"),
            None,
        )
    })
}

/// Closes the WebSocket: with 1001 (going away) if the node is stopping;
/// all of it within `linger`, whatever the client does.
async fn close(
    mut sink: Sink,
    mut stream: SplitStream<WebSocketStream>,
    leaving: bool,
    linger: Duration,
) {
    let handshake = async {
        if leaving {
            let away = Message::Close(Some((CloseCode::Away, LEAVING_REASON.into())));
            let _ = sink.send(away).await;
        }
        let _ = sink.close().await;
        // Read (and drop) what the client still sends until it answers our
        // close: a socket closed with unread input is reset, and the reset
        // can destroy our close frame, or an ERROR, on its way to the client.
        while let Some(Ok(_)) = stream.next().await {}
    };
    let _ = tokio::time::timeout(linger, handshake).await;
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<Outbound>>) -> Option<Outbound> {
    match rx.as_mut() {
        Some(r) => r.recv().await,
        None => pending().await,
    }
}

async fn tick_opt(i: &mut Option<tokio::time::Interval>) {
    match i.as_mut() {
        Some(i) => {
            i.tick().await;
        }
        None => pending().await,
    }
}

impl Connection {
    fn new(services: Services, sink: Sink, ticket: Option<Arc<Ticket>>) -> Connection {
        let limits = Limits {
            max_frame_bytes: services.config.max_frame_bytes,
            max_headers: services.config.max_frame_headers,
            max_header_line_bytes: services.config.max_header_bytes,
        };
        let now = Instant::now();
        Connection {
            services,
            sink,
            decoder: Decoder::new(limits),
            version: StompVersion::V1_2,
            binary: false,
            session: None,
            in_flight: FuturesOrdered::new(),
            outgoing: Vec::new(),
            last_read: now,
            last_write: now,
            disconnect_receipt: None,
            closing: false,
            leaving: false,
            heartbeat_due: false,
            pending_registration: None,
            bytes_at_last_message: ticket.as_ref().map_or(0, |t| t.bytes_read()),
            ticket,
            partial: PartialFrame::default(),
            stream_failed: false,
            write_failed: false,
        }
    }

    async fn on_ws_message(&mut self, msg: Message) -> Step {
        self.last_read = Instant::now();
        if let Some(t) = &self.ticket {
            self.bytes_at_last_message = t.bytes_read();
        }
        match msg {
            Message::Text(t) => {
                self.binary = false;
                self.decoder.feed(t.as_bytes());
            }
            Message::Binary(b) => {
                self.binary = true;
                self.decoder.feed(&b);
            }
            Message::Close(_) => {
                self.closing = true;
                return Ok(());
            }
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        }
        loop {
            match self.decoder.next() {
                Ok(Some(Decoded::Frame(frame))) => self.on_frame(frame).await?,
                Ok(Some(Decoded::HeartBeat)) => {}
                Ok(None) => break,
                Err(e) => return Err(Fatal::new(e.to_string(), None)),
            }
            if self.closing {
                break;
            }
        }
        self.decoder.shrink_if_idle();
        self.charge_partial_frame()
    }

    async fn on_frame(&mut self, frame: Frame) -> Step {
        if self.session.is_none() {
            return match frame.command {
                Command::Connect | Command::Stomp => self.on_connect(&frame).await,
                _ => Err(Fatal::new("the first frame must be CONNECT", Some(&frame))),
            };
        }
        let in_tx = matches!(frame.command, Command::Send | Command::Ack | Command::Nack)
            && frame.header("transaction").is_some();
        if in_tx {
            return self.buffer_in_transaction(frame);
        }
        self.dispatch(frame).await
    }

    async fn dispatch(&mut self, frame: Frame) -> Step {
        match frame.command {
            Command::Connect | Command::Stomp => Err(Fatal::new("already connected", Some(&frame))),
            Command::Send => self.on_send(frame).await,
            Command::Subscribe => self
                .on_subscribe(&frame)
                .await
                .map(|_| self.receipt_for(&frame)),
            Command::Unsubscribe => self
                .on_unsubscribe(&frame)
                .map(|_| self.receipt_for(&frame)),
            Command::Ack => {
                let acked = self.on_ack(&frame, true)?;
                // With a receipt, the ack is applied before the RECEIPT.
                self.ack_messages(acked, frame.header("receipt").is_some())
                    .await;
                self.receipt_for(&frame);
                Ok(())
            }
            Command::Nack => self.on_ack(&frame, false).map(|_| self.receipt_for(&frame)),
            Command::Begin => self.on_begin(&frame).map(|_| self.receipt_for(&frame)),
            Command::Commit => self.on_commit(&frame).await,
            Command::Abort => self.on_abort(&frame).map(|_| self.receipt_for(&frame)),
            Command::Disconnect => {
                match frame.header("receipt") {
                    Some(r) => self.disconnect_receipt = Some(r.to_string()),
                    None => self.closing = true,
                }
                Ok(())
            }
            _ => Err(Fatal::new(
                format!("{} is a server frame", frame.command.as_str()),
                Some(&frame),
            )),
        }
    }

    fn receipt_for(&mut self, frame: &Frame) {
        if let Some(r) = frame.header("receipt") {
            self.outgoing.push(frames::receipt(r));
        }
    }

    fn session(&mut self) -> Result<&mut Session, Fatal> {
        self.session
            .as_mut()
            .ok_or_else(|| Fatal::new("not connected", None))
    }

    fn next_id(&mut self) -> String {
        match self.session.as_mut() {
            Some(s) => {
                s.counter += 1;
                format!("{}-{}", s.conn_id, s.counter)
            }
            None => "0".into(),
        }
    }

    // ----- CONNECT -----

    fn cleanup(&mut self) {
        self.release_partial_frame();
        if let Some(s) = self.session.take() {
            for sub in s.subs.values() {
                if let SubscribeTarget::Topic(t) = &sub.target {
                    self.services
                        .delivery
                        .unsubscribe_topic(&t.destination, s.conn_id);
                }
            }
            self.services.delivery.unregister(s.user_id, s.conn_id);
            let presence = self.services.presence.clone();
            let user_id = s.user_id;
            tokio::spawn(async move {
                if let Err(e) = presence.device_disconnected(user_id).await {
                    tracing::warn!(error = %e, user_id, "presence missed a disconnect");
                }
            });
            tracing::debug!(
                user_id = s.user_id,
                conn_id = s.conn_id,
                "stomp disconnected"
            );
        }
    }
}
