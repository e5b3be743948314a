//! One STOMP connection: frame dispatch, subscriptions, acks, transactions,
//! heart-beats and the ordered pipeline of in-flight sends.

use std::collections::HashMap;
use std::future::pending;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, SplitSink};
use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{CloseCode, Message, WebSocketStream};
use tokio::sync::{mpsc, Notify};

use super::destination::{self, SendTarget, SubscribeTarget, TopicName};
use super::frames;
use crate::error::{AppError, AppResult};
use crate::model::dto::{SendAck, SendErrorVo, SendReq, StompAckReq};
use crate::model::{parse_id, AckCommand, InboxStatus};
use crate::service::acks::{parse_ack_type, parse_message_ids};
use crate::service::connections::LiveConnection;
use crate::service::delivery::{Broadcast, Outbound, UserEvent};
use crate::service::redelivery::Verdict;
use crate::service::Services;
use crate::stomp::{
    encode_to_vec, negotiate_heart_beat, parse_heart_beat, Command, Decoded, Decoder, Frame,
    Limits, StompVersion,
};

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
type InFlight = BoxFuture<'static, (Option<String>, String, AppResult<SendAck>)>;

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
}

/// Why a stopping node closes its connections (WebSocket close reason).
const LEAVING_REASON: &str = "server shutting down";
/// How long a closing connection waits for the client's close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

pub async fn serve(socket: WebSocketStream, services: Services, live: LiveConnection) {
    let (sink, mut stream) = socket.split();
    let limits = Limits {
        max_frame_bytes: services.config.max_frame_bytes,
        max_headers: services.config.max_frame_headers,
        max_header_line_bytes: services.config.max_header_bytes,
    };
    let now = Instant::now();
    let mut conn = Connection {
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
    };
    let mut outbound: Option<mpsc::Receiver<Outbound>> = None;
    let mut kill: Arc<Notify> = Arc::new(Notify::new());
    let connect_deadline = tokio::time::sleep(super::CONNECT_TIMEOUT);
    tokio::pin!(connect_deadline);
    let mut heartbeat: Option<tokio::time::Interval> = None;

    while !conn.closing {
        let connected = conn.session.is_some();
        let step = tokio::select! {
            _ = kill.notified() => Err(Fatal::new("slow consumer: too many undelivered messages", None)),
            _ = &mut connect_deadline, if !connected => Err(Fatal::new("no CONNECT frame in time", None)),
            _ = live.asked_to_leave(), if !conn.leaving => {
                conn.leaving = true;
                Ok(())
            }
            msg = stream.next(), if conn.in_flight.len() < MAX_IN_FLIGHT && conn.disconnect_receipt.is_none() && !conn.leaving => {
                match msg {
                    Some(Ok(m)) => conn.on_ws_message(m).await,
                    _ => break,
                }
            }
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
        if conn.flush().await.is_err() {
            break;
        }
        // Registration happens inside CONNECT handling; pick up its channels.
        if outbound.is_none() {
            if let Some((rx, k)) = conn.take_registration() {
                outbound = Some(rx);
                kill = k;
                heartbeat = conn.heartbeat_interval();
            }
        }
    }
    conn.cleanup();
    if conn.leaving {
        let away = Message::Close(Some((CloseCode::Away, LEAVING_REASON.into())));
        let _ = conn.sink.send(away).await;
    }
    let _ = conn.sink.close().await;
    // Read (and drop) what the client still sends until it answers our
    // close: a socket closed with unread input is reset, and the reset can
    // destroy our close frame, or an ERROR, on its way to the client.
    let answered = async { while let Some(Ok(_)) = stream.next().await {} };
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, answered).await;
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
    async fn on_ws_message(&mut self, msg: Message) -> Step {
        self.last_read = Instant::now();
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
        Ok(())
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

    async fn on_connect(&mut self, frame: &Frame) -> Step {
        let version = StompVersion::negotiate(frame.header("accept-version"));
        let version = match version {
            Some(v) if v >= StompVersion::V1_1 => v,
            _ => {
                return Err(Fatal::new(
                    "supported STOMP versions are 1.1 and 1.2",
                    Some(frame),
                ));
            }
        };
        self.version = version;
        self.decoder.set_version(version);
        let auth = &self.services.auth;
        let user = match (
            frame
                .header("Authorization")
                .or(frame.header("authorization")),
            frame.header("passcode"),
        ) {
            (Some(h), _) => auth.verify_bearer(Some(h)),
            (None, Some(p)) => auth.verify(p.strip_prefix("Bearer ").unwrap_or(p)),
            (None, None) => Err(AppError::Unauthenticated("missing token".into())),
        };
        let user_id =
            user.map_err(|e| Fatal::new(format!("authentication failed: {e}"), Some(frame)))?;
        let registration = self
            .services
            .delivery
            .register(user_id)
            .map_err(|e| Fatal::new(e.to_string(), Some(frame)))?;
        let client = frame
            .header("heart-beat")
            .and_then(parse_heart_beat)
            .unwrap_or((0, 0));
        let hb = self.services.config.heartbeat_ms;
        let (send_ms, expect_ms) = negotiate_heart_beat(client, (hb, hb));
        let conn_id = registration.conn_id;
        self.session = Some(Session {
            user_id,
            conn_id,
            subs: HashMap::new(),
            unacked: HashMap::new(),
            transactions: HashMap::new(),
            counter: 0,
            send_every: (send_ms > 0).then(|| Duration::from_millis(send_ms)),
            expect_every: (expect_ms > 0).then(|| Duration::from_millis(expect_ms)),
        });
        self.pending_registration = Some((registration.rx, registration.kill));
        let connected = Frame::new(Command::Connected)
            .with_header("version", version.as_str())
            .with_header("heart-beat", format!("{send_ms},{expect_ms}"))
            .with_header("session", conn_id.to_string())
            .with_header("server", concat!("herald/", env!("CARGO_PKG_VERSION")))
            .with_header("user-name", user_id.to_string());
        self.outgoing.push(connected);
        self.receipt_for(frame);
        tracing::debug!(user_id, conn_id, "stomp connected");
        Ok(())
    }

    // ----- SUBSCRIBE / UNSUBSCRIBE -----

    async fn on_subscribe(&mut self, frame: &Frame) -> Step {
        let id = frame
            .header("id")
            .ok_or_else(|| Fatal::new("SUBSCRIBE needs an id header", Some(frame)))?
            .to_string();
        let dest = frame
            .header("destination")
            .ok_or_else(|| Fatal::new("SUBSCRIBE needs a destination header", Some(frame)))?;
        let target = destination::parse_subscribe(dest)
            .ok_or_else(|| Fatal::new(format!("unknown destination {dest}"), Some(frame)))?;
        let ack = match frame.header("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => return Err(Fatal::new(format!("unknown ack mode {other}"), Some(frame))),
        };
        let (user_id, conn_id) = {
            let s = self.session()?;
            if s.subs.contains_key(&id) {
                return Err(Fatal::new(
                    format!("subscription id {id} is in use"),
                    Some(frame),
                ));
            }
            (s.user_id, s.conn_id)
        };
        if let SubscribeTarget::Topic(topic) = &target {
            Self::authorize_topic(&self.services, user_id, topic, frame).await?;
            self.services
                .delivery
                .subscribe_topic(&topic.destination, user_id, conn_id);
        }
        self.session()?
            .subs
            .insert(id, Subscription { target, ack });
        Ok(())
    }

    /// Session topics are for the session's members only.
    async fn authorize_topic(
        services: &Services,
        user_id: u64,
        topic: &TopicName,
        frame: &Frame,
    ) -> Step {
        if let Some(session_id) = topic.session {
            services
                .directory
                .member_session(user_id, session_id)
                .await
                .map_err(|e| Fatal::new(e.to_string(), Some(frame)))?;
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, frame: &Frame) -> Step {
        let id = frame
            .header("id")
            .ok_or_else(|| Fatal::new("UNSUBSCRIBE needs an id header", Some(frame)))?;
        let s = self.session()?;
        let Some(sub) = s.subs.remove(id) else {
            return Err(Fatal::new(
                format!("no subscription with id {id}"),
                Some(frame),
            ));
        };
        s.unacked.retain(|_, u| u.subscription != id);
        if let SubscribeTarget::Topic(topic) = sub.target {
            let still = s
                .subs
                .values()
                .any(|o| o.target == SubscribeTarget::Topic(topic.clone()));
            if !still {
                let conn_id = s.conn_id;
                self.services
                    .delivery
                    .unsubscribe_topic(&topic.destination, conn_id);
            }
        }
        Ok(())
    }

    // ----- SEND -----

    async fn on_send(&mut self, frame: Frame) -> Step {
        let dest = frame
            .header("destination")
            .ok_or_else(|| Fatal::new("SEND needs a destination header", Some(&frame)))?;
        let target = destination::parse_send(dest)
            .ok_or_else(|| Fatal::new(format!("unknown destination {dest}"), Some(&frame)))?;
        match target {
            SendTarget::AppSend => self.on_app_send(&frame).await,
            SendTarget::AppAck => self.on_app_ack(&frame).await,
            SendTarget::Topic(topic) => self.on_topic_send(&frame, &topic).await,
        }
    }

    async fn on_app_send(&mut self, frame: &Frame) -> Step {
        let (user_id, conn_id) = {
            let s = self.session()?;
            (s.user_id, s.conn_id)
        };
        let receipt = frame.header("receipt").map(str::to_string);
        let req: SendReq = match serde_json::from_slice(&frame.body) {
            Ok(r) => r,
            Err(e) => {
                let cmid = client_message_id_of(&frame.body);
                self.reject(AppError::invalid(format!("malformed SendReq: {e}")), cmid);
                return Ok(());
            }
        };
        let cmid = req.client_message_id.clone();
        match self
            .services
            .messages
            .send(user_id, req, Some(conn_id))
            .await
        {
            Ok(pending) => {
                self.in_flight
                    .push_back(Box::pin(async move { (receipt, cmid, pending.await) }));
            }
            Err(e) => self.reject(e, Some(cmid)),
        }
        Ok(())
    }

    fn on_send_done(&mut self, receipt: Option<String>, cmid: String, result: AppResult<SendAck>) {
        match result {
            Ok(ack) => {
                if let Ok(body) = serde_json::to_vec(&ack) {
                    self.write_own_queue(
                        &SubscribeTarget::SendAcks,
                        destination::SEND_ACKS,
                        Bytes::from(body),
                    );
                }
                if let Some(r) = receipt {
                    self.outgoing.push(frames::receipt(&r));
                }
            }
            Err(e) => self.reject(e, Some(cmid)),
        }
    }

    /// A rejected SEND: an error on `/user/queue/errors`, the connection stays.
    fn reject(&mut self, e: AppError, client_message_id: Option<String>) {
        metrics::counter!("herald_rejected_sends_total", "code" => e.code()).increment(1);
        let vo = SendErrorVo {
            code: e.code().into(),
            message: e.to_string(),
            client_message_id,
        };
        if let Ok(body) = serde_json::to_vec(&vo) {
            self.write_own_queue(
                &SubscribeTarget::Errors,
                destination::ERRORS,
                Bytes::from(body),
            );
        }
    }

    /// Writes a JSON MESSAGE to every subscription of this connection to `target`.
    fn write_own_queue(&mut self, target: &SubscribeTarget, dest: &str, body: Bytes) {
        let subs = self.subscriptions(|t| t == target);
        for (sub_id, mode) in subs {
            let message_id = self.next_id();
            let ack = self.remember(&sub_id, mode, &message_id, UnackedKind::Other);
            self.outgoing.push(frames::json_message(
                dest,
                &sub_id,
                &message_id,
                ack.as_deref(),
                body.clone(),
            ));
        }
    }

    async fn on_app_ack(&mut self, frame: &Frame) -> Step {
        let user_id = self.session()?.user_id;
        let parsed = serde_json::from_slice::<StompAckReq>(&frame.body)
            .map_err(|e| AppError::invalid(format!("malformed ack: {e}")))
            .and_then(ack_command);
        let command = match parsed {
            Ok(c) => c,
            Err(e) => {
                self.reject(e, None);
                return Ok(());
            }
        };
        if let AckCommand::Messages { message_ids, .. } = &command {
            if let Some(s) = self.session.as_mut() {
                s.unacked.retain(
                    |_, u| !matches!(u.kind, UnackedKind::Message { id, .. } if message_ids.contains(&id)),
                );
            }
        }
        // Applied before answering, so a REST read after the RECEIPT sees it.
        match self.services.acks.apply(user_id, command).await {
            Ok(_) => self.receipt_for(frame),
            Err(e) => self.reject(e, None),
        }
        Ok(())
    }

    async fn on_topic_send(&mut self, frame: &Frame, topic: &TopicName) -> Step {
        let user_id = self.session()?.user_id;
        Self::authorize_topic(&self.services, user_id, topic, frame).await?;
        let headers = frame
            .headers
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "destination" | "receipt" | "transaction" | "content-length"
                )
            })
            .cloned()
            .collect();
        self.services.delivery.publish_topic(Broadcast {
            destination: Arc::from(topic.destination.as_str()),
            headers,
            body: frame.body.clone(),
        });
        self.receipt_for(frame);
        Ok(())
    }

    // ----- ACK / NACK -----

    /// Handles ACK/NACK bookkeeping; returns the (message id, inboxSeq)
    /// entries a positive ACK acknowledged (NACKs are handled here).
    fn on_ack(&mut self, frame: &Frame, positive: bool) -> Result<Vec<(u64, i64)>, Fatal> {
        let id = frame
            .header("id")
            .or_else(|| frame.header("message-id"))
            .ok_or_else(|| Fatal::new("ACK and NACK need an id header", Some(frame)))?
            .to_string();
        let s = self.session()?;
        let user_id = s.user_id;
        let conn_id = s.conn_id;
        let Some(entry) = s.unacked.remove(&id) else {
            // Unknown or already acked: acks are idempotent.
            return Ok(Vec::new());
        };
        let mut acked = vec![entry.kind];
        let cumulative = s
            .subs
            .get(&entry.subscription)
            .is_some_and(|sub| sub.ack == AckMode::Client);
        if cumulative && positive {
            let earlier: Vec<String> = s
                .unacked
                .iter()
                .filter(|(_, u)| u.subscription == entry.subscription && u.order < entry.order)
                .map(|(k, _)| k.clone())
                .collect();
            for k in earlier {
                if let Some(u) = s.unacked.remove(&k) {
                    acked.push(u.kind);
                }
            }
        }
        let entries: Vec<(u64, i64)> = acked
            .into_iter()
            .filter_map(|k| match k {
                UnackedKind::Message { id, inbox_seq } => Some((id, inbox_seq)),
                UnackedKind::Other => None,
            })
            .collect();
        if positive {
            return Ok(entries);
        }
        for (mid, _) in entries {
            self.nack(user_id, conn_id, mid);
        }
        Ok(Vec::new())
    }

    /// Marks acked messages `delivered`: batched in the background, or
    /// applied before returning when the client waits for a RECEIPT.
    async fn ack_messages(&mut self, entries: Vec<(u64, i64)>, wait: bool) {
        let Some(user_id) = self.session.as_ref().map(|s| s.user_id) else {
            return;
        };
        if entries.is_empty() {
            return;
        }
        if !wait {
            for (mid, inbox_seq) in entries {
                self.services
                    .acks
                    .ack_soon(user_id, mid, inbox_seq, InboxStatus::Delivered);
            }
            return;
        }
        let command = AckCommand::Entries {
            entries,
            status: InboxStatus::Delivered,
        };
        if let Err(e) = self.services.acks.apply(user_id, command).await {
            tracing::warn!(error = %e, "ack with receipt was not applied");
        }
    }

    /// A NACK asks for an immediate redelivery to this connection.
    fn nack(&self, user_id: u64, conn_id: u64, message_id: u64) {
        match self.services.redelivery.nack(user_id, message_id) {
            Verdict::Redeliver => {
                let messages = self.services.messages.clone();
                tokio::spawn(async move {
                    if let Err(e) = messages
                        .redeliver(user_id, &[message_id], Some(conn_id))
                        .await
                    {
                        tracing::warn!(error = %e, "nack redelivery failed");
                    }
                });
            }
            Verdict::DeadLetter => {
                metrics::counter!("herald_messages_dead_lettered_total").increment(1)
            }
        }
    }

    // ----- transactions -----

    fn tx_name(frame: &Frame) -> Result<&str, Fatal> {
        frame.header("transaction").ok_or_else(|| {
            Fatal::new(
                format!("{} needs a transaction header", frame.command.as_str()),
                Some(frame),
            )
        })
    }

    fn on_begin(&mut self, frame: &Frame) -> Step {
        let name = Self::tx_name(frame)?.to_string();
        let s = self.session()?;
        if s.transactions.contains_key(&name) {
            return Err(Fatal::new(
                format!("transaction {name} already began"),
                Some(frame),
            ));
        }
        s.transactions.insert(name, Vec::new());
        Ok(())
    }

    fn buffer_in_transaction(&mut self, mut frame: Frame) -> Step {
        let name = Self::tx_name(&frame)?.to_string();
        let s = self.session()?;
        let Some(frames) = s.transactions.get_mut(&name) else {
            return Err(Fatal::new(
                format!("unknown transaction {name}"),
                Some(&frame),
            ));
        };
        if frames.len() >= MAX_TX_FRAMES {
            return Err(Fatal::new(
                "too many frames in one transaction",
                Some(&frame),
            ));
        }
        // The receipt confirms receipt of the frame, now; the effect comes at COMMIT.
        let receipt = frame.remove_header("receipt");
        frame.remove_header("transaction");
        frames.push(frame);
        if let Some(r) = receipt {
            self.outgoing.push(frames::receipt(&r));
        }
        Ok(())
    }

    async fn on_commit(&mut self, frame: &Frame) -> Step {
        let name = Self::tx_name(frame)?.to_string();
        let Some(frames) = self.session()?.transactions.remove(&name) else {
            return Err(Fatal::new(
                format!("unknown transaction {name}"),
                Some(frame),
            ));
        };
        for f in frames {
            Box::pin(self.dispatch(f)).await?;
        }
        self.receipt_for(frame);
        Ok(())
    }

    fn on_abort(&mut self, frame: &Frame) -> Step {
        let name = Self::tx_name(frame)?.to_string();
        if self.session()?.transactions.remove(&name).is_none() {
            return Err(Fatal::new(
                format!("unknown transaction {name}"),
                Some(frame),
            ));
        }
        Ok(())
    }

    // ----- pushes -----

    fn on_outbound(&mut self, first: Outbound, rx: Option<&mut mpsc::Receiver<Outbound>>) -> Step {
        self.write_outbound(first);
        if let Some(rx) = rx {
            for _ in 1..WRITE_BATCH {
                match rx.try_recv() {
                    Ok(item) => self.write_outbound(item),
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }

    fn write_outbound(&mut self, item: Outbound) {
        match item {
            Outbound::Event(ev) => self.write_event(&ev),
            Outbound::Broadcast(b) => self.write_broadcast(&b),
        }
    }

    fn write_event(&mut self, ev: &UserEvent) {
        let Some(s) = self.session.as_ref() else {
            return;
        };
        let user_id = s.user_id;
        let subs = self.subscriptions(|t| *t == SubscribeTarget::Messages);
        let message_id = ev.message_id.to_string();
        for (sub_id, mode) in subs {
            let ack = self.remember(
                &sub_id,
                mode,
                &message_id,
                UnackedKind::Message {
                    id: ev.message_id,
                    inbox_seq: ev.inbox_seq,
                },
            );
            self.outgoing.push(frames::json_message(
                destination::MESSAGES,
                &sub_id,
                &message_id,
                ack.as_deref(),
                ev.body.clone(),
            ));
            metrics::counter!("herald_messages_delivered_total").increment(1);
            if !ev.redelivery {
                metrics::histogram!("herald_store_to_push_seconds")
                    .record(ev.stored_at.elapsed().as_secs_f64());
            }
            if ev.pending {
                match mode {
                    // Written to the connection counts as received.
                    AckMode::Auto => self.services.acks.ack_soon(
                        user_id,
                        ev.message_id,
                        ev.inbox_seq,
                        InboxStatus::Delivered,
                    ),
                    _ => self.services.redelivery.track(user_id, ev.message_id),
                }
            }
        }
    }

    fn write_broadcast(&mut self, b: &Broadcast) {
        let subs = self.subscriptions(
            |t| matches!(t, SubscribeTarget::Topic(topic) if *topic.destination == *b.destination),
        );
        for (sub_id, mode) in subs {
            let message_id = self.next_id();
            let mut f = Frame::new(Command::Message).with_header("destination", &*b.destination);
            for (k, v) in &b.headers {
                if !matches!(k.as_str(), "subscription" | "message-id" | "ack") {
                    f.push_header(k.clone(), v.clone());
                }
            }
            f.push_header("subscription", sub_id.clone());
            f.push_header("message-id", message_id.clone());
            if let Some(ack) = self.remember(&sub_id, mode, &message_id, UnackedKind::Other) {
                f.push_header("ack", ack);
            }
            self.outgoing.push(f.with_body(b.body.clone()));
        }
    }

    /// (id, ack mode) of this connection's subscriptions whose target matches.
    fn subscriptions(&self, matches: impl Fn(&SubscribeTarget) -> bool) -> Vec<(String, AckMode)> {
        let Some(s) = self.session.as_ref() else {
            return Vec::new();
        };
        s.subs
            .iter()
            .filter(|(_, sub)| matches(&sub.target))
            .map(|(id, sub)| (id.clone(), sub.ack))
            .collect()
    }

    /// Remembers a client-mode push until it is acked; returns its `ack` id.
    fn remember(
        &mut self,
        sub_id: &str,
        mode: AckMode,
        ack_id: &str,
        kind: UnackedKind,
    ) -> Option<String> {
        if mode == AckMode::Auto {
            return None;
        }
        let s = self.session.as_mut()?;
        if s.unacked.len() >= MAX_UNACKED {
            // Forget the oldest: the redelivery clock still covers messages.
            if let Some(oldest) = s
                .unacked
                .iter()
                .min_by_key(|(_, u)| u.order)
                .map(|(k, _)| k.clone())
            {
                s.unacked.remove(&oldest);
            }
        }
        s.counter += 1;
        let order = s.counter;
        s.unacked.insert(
            ack_id.to_string(),
            Unacked {
                subscription: sub_id.to_string(),
                kind,
                order,
            },
        );
        Some(ack_id.to_string())
    }

    // ----- heart-beats, I/O, teardown -----

    fn heartbeat_interval(&self) -> Option<tokio::time::Interval> {
        let s = self.session.as_ref()?;
        let shortest = [s.send_every, s.expect_every].into_iter().flatten().min()?;
        let period = (shortest / 2).max(Duration::from_millis(20));
        let mut i = tokio::time::interval(period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(i)
    }

    fn on_heartbeat_tick(&mut self) -> Step {
        let Some(s) = self.session.as_ref() else {
            return Ok(());
        };
        if let Some(expect) = s.expect_every {
            if self.last_read.elapsed() > expect * 2 {
                return Err(Fatal::new("no heart-beat from the client", None));
            }
        }
        if let Some(every) = s.send_every {
            if self.last_write.elapsed() >= every.mul_f32(0.9) && self.outgoing.is_empty() {
                self.heartbeat_due = true;
            }
        }
        Ok(())
    }

    fn take_registration(&mut self) -> Option<(mpsc::Receiver<Outbound>, Arc<Notify>)> {
        self.pending_registration.take()
    }

    async fn flush(&mut self) -> Result<(), poem::Error> {
        if self.outgoing.is_empty() && !self.heartbeat_due {
            return Ok(());
        }
        let frames = std::mem::take(&mut self.outgoing);
        let heartbeat = std::mem::take(&mut self.heartbeat_due) && frames.is_empty();
        let result = self.write_frames(frames, heartbeat).await;
        self.last_write = Instant::now();
        result.map_err(|e| {
            poem::Error::from_string(e.to_string(), poem::http::StatusCode::BAD_GATEWAY)
        })
    }

    async fn write_frames(
        &mut self,
        frames: Vec<Frame>,
        heartbeat: bool,
    ) -> Result<(), poem::Error> {
        if heartbeat {
            let msg = if self.binary {
                Message::Binary(b"\n".to_vec())
            } else {
                Message::Text("\n".into())
            };
            self.sink.send(msg).await.map_err(to_poem)?;
            return Ok(());
        }
        for f in &frames {
            let bytes = encode_to_vec(f, self.version);
            let msg = if self.binary {
                Message::Binary(bytes)
            } else {
                match String::from_utf8(bytes) {
                    Ok(text) => Message::Text(text),
                    Err(e) => Message::Binary(e.into_bytes()),
                }
            };
            self.sink.feed(msg).await.map_err(to_poem)?;
        }
        self.sink.flush().await.map_err(to_poem)
    }

    fn cleanup(&mut self) {
        if let Some(s) = self.session.take() {
            for sub in s.subs.values() {
                if let SubscribeTarget::Topic(t) = &sub.target {
                    self.services
                        .delivery
                        .unsubscribe_topic(&t.destination, s.conn_id);
                }
            }
            self.services.delivery.unregister(s.user_id, s.conn_id);
            tracing::debug!(
                user_id = s.user_id,
                conn_id = s.conn_id,
                "stomp disconnected"
            );
        }
    }
}

fn to_poem(e: impl std::fmt::Display) -> poem::Error {
    poem::Error::from_string(e.to_string(), poem::http::StatusCode::BAD_GATEWAY)
}

/// The `clientMessageId` of a SendReq that failed to parse, if it has one.
fn client_message_id_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("clientMessageId")?.as_str().map(str::to_string)
}

fn ack_command(req: StompAckReq) -> AppResult<AckCommand> {
    let status = parse_ack_type(&req.ack_type)?;
    match (req.message_ids, req.session_id) {
        (Some(ids), None) => Ok(AckCommand::Messages {
            message_ids: parse_message_ids(&ids)?,
            status,
        }),
        (None, Some(sid)) if status == InboxStatus::Read => Ok(AckCommand::SessionRead {
            session_id: parse_id("sessionId", &sid)?,
            up_to_seq: req.up_to_seq,
        }),
        (None, Some(_)) => Err(AppError::invalid("a session ack must have ackType read")),
        _ => Err(AppError::invalid("give either messageIds or sessionId")),
    }
}
