//! Connected benchmark clients: target-specific frames, and per connection
//! a writer task (bounded queues of sends and acks, batched flushes) and a
//! reader task (decodes, records deliveries, acks every message).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use herald::stomp::{Command, Decoded, Decoder, Frame};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{Common, TargetKind};
use crate::stats::{Payload, Shared};
use crate::stomp_client::{
    closed_by_server, error_text, to_message, within, Conn, WsSink, WsStream,
};

/// Subscription ids used on herald.
const SUB_MESSAGES: &str = "m";
const SUB_ACKS: &str = "a";
const SUB_ERRORS: &str = "e";

/// Where and how to connect, and how to address messages.
pub struct Target {
    pub kind: TargetKind,
    /// Herald: `http://host:port` (no trailing slash).
    pub base_url: String,
    pub ws_url: String,
    /// A second node: the odd-numbered connections' WebSocket URL.
    pub ws_url2: Option<String>,
    /// CONNECT `host` header.
    pub host: String,
    pub login: String,
    pub passcode: String,
    pub durable: bool,
    pub queue_prefix: String,
    pub size: usize,
    pub connect_timeout: Duration,
    pub connect_concurrency: usize,
    pub queue: usize,
}

impl Target {
    pub fn from_common(c: &Common) -> Result<Target> {
        let (base_url, ws_url, host) = match c.target {
            TargetKind::Herald => {
                let base = c
                    .url
                    .clone()
                    .unwrap_or_else(|| "http://127.0.0.1:8080".into());
                let base = base.trim_end_matches('/').to_string();
                let rest = base
                    .strip_prefix("http://")
                    .context("--url must be http://HOST:PORT for --target herald")?;
                let host = rest.split([':', '/']).next().unwrap_or(rest).to_string();
                (base.clone(), format!("ws://{rest}/ws"), host)
            }
            TargetKind::Stomp => {
                let url = c
                    .url
                    .clone()
                    .context("--target stomp needs --url ws://HOST:PORT/ws")?;
                if !url.starts_with("ws://") {
                    bail!("--url must be ws://HOST:PORT/PATH for --target stomp");
                }
                (String::new(), url, c.vhost.clone())
            }
        };
        let ws_url2 = match (&c.url2, c.target) {
            (None, _) => None,
            (Some(u), TargetKind::Herald) => {
                let rest = u
                    .trim_end_matches('/')
                    .strip_prefix("http://")
                    .context("--url2 must be http://HOST:PORT")?;
                Some(format!("ws://{rest}/ws"))
            }
            (Some(_), TargetKind::Stomp) => bail!("--url2 is for --target herald"),
        };
        Ok(Target {
            kind: c.target,
            base_url,
            ws_url,
            ws_url2,
            host,
            login: c.login.clone(),
            passcode: c.passcode.clone(),
            durable: c.durable,
            queue_prefix: c.queue_prefix.clone(),
            size: c.size,
            connect_timeout: Duration::from_secs_f64(c.connect_timeout.max(0.1)),
            connect_concurrency: c.connect_concurrency.max(1),
            queue: c.queue.max(1),
        })
    }

    /// Where connection `idx` goes.
    pub fn ws_url_of(&self, idx: u32) -> &str {
        match &self.ws_url2 {
            Some(second) if idx % 2 == 1 => second,
            _ => &self.ws_url,
        }
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            TargetKind::Herald => "herald",
            TargetKind::Stomp => "stomp",
        }
    }

    fn connect_headers(&self, token: Option<&str>) -> Vec<(String, String)> {
        let mut h = vec![("host".to_string(), self.host.clone())];
        match self.kind {
            TargetKind::Herald => {
                if let Some(t) = token {
                    h.push(("Authorization".into(), format!("Bearer {t}")));
                }
            }
            TargetKind::Stomp => {
                h.push(("login".into(), self.login.clone()));
                h.push(("passcode".into(), self.passcode.clone()));
            }
        }
        h
    }

    fn subscriptions(&self, idx: u32, mode: SubMode) -> Vec<Frame> {
        let sub = |id: &str, dest: String, ack: &str| {
            Frame::new(Command::Subscribe)
                .with_header("id", id)
                .with_header("destination", dest)
                .with_header("ack", ack)
        };
        match self.kind {
            TargetKind::Herald => vec![
                sub(
                    SUB_MESSAGES,
                    "/user/queue/message".into(),
                    "client-individual",
                ),
                sub(SUB_ACKS, "/user/queue/ack".into(), "auto"),
                sub(SUB_ERRORS, "/user/queue/errors".into(), "auto"),
            ],
            TargetKind::Stomp => {
                let (id, dest) = match mode {
                    SubMode::Queue => (
                        "q".to_string(),
                        format!("/queue/{}{idx}", self.queue_prefix),
                    ),
                    // RabbitMQ names a durable topic subscription's queue
                    // after the subscription id, so it must be unique.
                    SubMode::Topic => (
                        format!("{}f-{idx}", self.queue_prefix),
                        format!("/topic/{}fanout", self.queue_prefix),
                    ),
                };
                let mut f = sub(&id, dest, "client-individual");
                if self.durable {
                    f.push_header("durable", "true");
                    f.push_header("auto-delete", "false");
                }
                vec![f]
            }
        }
    }
}

/// What stomp-target clients subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubMode {
    /// `/queue/<prefix>{i}` (1:1).
    Queue,
    /// `/topic/<prefix>fanout` (fan-out).
    Topic,
}

/// How a [`SendItem`]'s destination index maps to the wire.
pub enum Routing {
    /// Herald 1:1: `toUserId` = user id of client `dest`.
    HeraldUsers(Vec<String>),
    /// Herald group: every send goes to this `groupId`.
    HeraldGroup(String),
    /// Stomp 1:1: `/amq/queue/<prefix>{dest}`.
    StompQueues,
    /// Stomp fan-out: `/topic/<prefix>fanout`.
    StompTopic,
}

/// One message for a client's writer.
#[derive(Debug, Clone, Copy)]
pub struct SendItem {
    pub dest: u32,
    pub payload: Payload,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SendReq<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    to_user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<&'a str>,
    message_type: u8,
    content: &'a str,
    client_message_id: &'a str,
    client_timestamp: u64,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Builds the SEND frame of `item`.
fn send_frame(target: &Target, routing: &Routing, item: &SendItem) -> Frame {
    let content = item.payload.to_text(target.size);
    match routing {
        Routing::HeraldUsers(_) | Routing::HeraldGroup(_) => {
            let (to_user_id, group_id) = match routing {
                Routing::HeraldUsers(ids) => {
                    (ids.get(item.dest as usize).map(String::as_str), None)
                }
                Routing::HeraldGroup(g) => (None, Some(g.as_str())),
                _ => (None, None),
            };
            let p = &item.payload;
            let cmid = p.client_message_id();
            let req = SendReq {
                to_user_id,
                group_id,
                message_type: 1,
                content: &content,
                client_message_id: &cmid,
                client_timestamp: unix_ms(),
            };
            let body = serde_json::to_vec(&req).unwrap_or_default();
            Frame::new(Command::Send)
                .with_header("destination", "/app/send")
                .with_header("content-type", "application/json")
                .with_body(body)
        }
        Routing::StompQueues | Routing::StompTopic => {
            let dest = match routing {
                Routing::StompQueues => format!("/amq/queue/{}{}", target.queue_prefix, item.dest),
                _ => format!("/topic/{}fanout", target.queue_prefix),
            };
            let mut f = Frame::new(Command::Send)
                .with_header("destination", dest)
                .with_header("content-type", "text/plain");
            if target.durable {
                f.push_header("persistent", "true");
            }
            f.with_body(content)
        }
    }
}

/// A connected client with its reader and writer tasks.
pub struct Client {
    pub idx: u32,
    pub send_tx: mpsc::Sender<SendItem>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Client {
    pub fn abort(&self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// Stops every client's tasks (closing the connections).
pub fn shutdown(shared: &Shared, clients: &[Client]) {
    shared.stopping.store(true, Ordering::Relaxed);
    for c in clients {
        c.abort();
    }
}

/// Who a connection logs in as.
#[derive(Debug, Clone)]
pub struct Identity {
    pub idx: u32,
    /// Herald: the bearer token.
    pub token: Option<String>,
}

/// Connection options of [`connect_all`].
#[derive(Clone, Copy)]
pub struct ConnectOpts {
    pub mode: SubMode,
    /// tungstenite read buffer per connection.
    pub read_buffer: usize,
}

/// Opens, authenticates and subscribes one connection per identity (with
/// bounded concurrency and a timeout each), then starts its tasks. Any
/// failure aborts with an error naming the connection.
pub async fn connect_all(
    target: &Arc<Target>,
    routing: &Arc<Routing>,
    shared: &Arc<Shared>,
    identities: Vec<Identity>,
    opts: ConnectOpts,
) -> Result<Vec<Client>> {
    let total = identities.len();
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut results = futures_util::stream::iter(identities.into_iter().map(|id| {
        let target = Arc::clone(target);
        let done = Arc::clone(&done);
        async move {
            let url = target.ws_url_of(id.idx);
            let what = format!("connection {} to {url}", id.idx);
            let conn = within(target.connect_timeout, async {
                let headers = target.connect_headers(id.token.as_deref());
                let mut conn = Conn::connect(url, &headers, opts.read_buffer).await?;
                conn.subscribe(target.subscriptions(id.idx, opts.mode))
                    .await?;
                Ok(conn)
            })
            .await
            .with_context(|| what)?;
            done.fetch_add(1, Ordering::Relaxed);
            Ok::<_, anyhow::Error>((id.idx, conn))
        }
    }))
    .buffer_unordered(target.connect_concurrency);
    let mut clients = Vec::with_capacity(total);
    let mut last_print = Instant::now();
    while let Some(r) = results.next().await {
        let (idx, conn) = match r {
            Ok(x) => x,
            Err(e) => {
                shutdown(shared, &clients);
                return Err(e);
            }
        };
        clients.push(spawn_client(idx, conn, target, routing, shared));
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            eprintln!(
                "  connected {}/{} ({:.0}/s)",
                done.load(Ordering::Relaxed),
                total,
                done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    clients.sort_by_key(|c| c.idx);
    Ok(clients)
}

fn spawn_client(
    idx: u32,
    conn: Conn,
    target: &Arc<Target>,
    routing: &Arc<Routing>,
    shared: &Arc<Shared>,
) -> Client {
    let parts = conn.into_parts();
    let (send_tx, send_rx) = mpsc::channel(target.queue);
    let (ack_tx, ack_rx) = mpsc::channel(target.queue);
    let writer = tokio::spawn(writer_loop(
        idx,
        parts.sink,
        send_rx,
        ack_rx,
        Arc::clone(target),
        Arc::clone(routing),
        Arc::clone(shared),
    ));
    let reader = tokio::spawn(reader_loop(
        Reader {
            idx,
            kind: target.kind,
            ack_tx,
            shared: Arc::clone(shared),
        },
        parts.stream,
        parts.decoder,
        parts.backlog,
    ));
    Client {
        idx,
        send_tx,
        reader,
        writer,
    }
}

enum Out {
    Send(SendItem),
    Ack(String),
}

/// Frames per flush at most.
const WRITE_BATCH: usize = 64;

async fn writer_loop(
    idx: u32,
    mut sink: WsSink,
    mut send_rx: mpsc::Receiver<SendItem>,
    mut ack_rx: mpsc::Receiver<String>,
    target: Arc<Target>,
    routing: Arc<Routing>,
    shared: Arc<Shared>,
) {
    let frame_of = |out: Out| match out {
        Out::Send(item) => send_frame(&target, &routing, &item),
        Out::Ack(id) => Frame::new(Command::Ack).with_header("id", id),
    };
    loop {
        // Acks first: they free the server's resources.
        let first = tokio::select! {
            biased;
            a = ack_rx.recv() => a.map(Out::Ack),
            s = send_rx.recv() => s.map(Out::Send),
        };
        let Some(first) = first else { return };
        let mut result = sink.feed(to_message(&frame_of(first))).await;
        let mut n = 1;
        while result.is_ok() && n < WRITE_BATCH {
            let next = match ack_rx.try_recv() {
                Ok(a) => Out::Ack(a),
                Err(_) => match send_rx.try_recv() {
                    Ok(s) => Out::Send(s),
                    Err(_) => break,
                },
            };
            result = sink.feed(to_message(&frame_of(next))).await;
            n += 1;
        }
        if result.is_ok() {
            result = sink.flush().await;
        }
        if let Err(e) = result {
            if !shared.stopping.load(Ordering::Relaxed) {
                shared.disconnected(format!("connection {idx}: send failed: {e}"));
            }
            return;
        }
    }
}

struct Reader {
    idx: u32,
    kind: TargetKind,
    ack_tx: mpsc::Sender<String>,
    shared: Arc<Shared>,
}

/// The parts of a herald `MessageVo` the benchmark needs.
#[derive(Deserialize)]
struct MessageVo {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    content: String,
}

impl Reader {
    /// Handles one frame; `Err` ends the connection.
    async fn on_frame(&self, frame: Frame) -> Result<(), String> {
        match frame.command {
            Command::Message => {}
            Command::Error => {
                let text = error_text(&frame);
                self.shared.collector.lock().server_error(&text);
                return Err(text);
            }
            _ => return Ok(()),
        }
        let now = Instant::now();
        let sub = frame.header("subscription").unwrap_or("");
        match (self.kind, sub) {
            (TargetKind::Herald, SUB_ACKS) => {
                self.shared.collector.lock().counts_mut().send_acks += 1;
            }
            (TargetKind::Herald, SUB_ERRORS) => {
                self.shared.collector.lock().error_event(&frame.body);
            }
            (TargetKind::Herald, _) => {
                let vo: Option<MessageVo> = serde_json::from_slice(&frame.body).ok();
                if let Some(vo) = vo.filter(|v| v.kind == "message") {
                    self.record(Payload::parse(&vo.content), now);
                }
            }
            (TargetKind::Stomp, _) => {
                let text = std::str::from_utf8(&frame.body).unwrap_or("");
                self.record(Payload::parse(text), now);
            }
        }
        if let Some(ack) = frame.header("ack") {
            self.ack_tx
                .send(ack.to_string())
                .await
                .map_err(|_| "writer gone".to_string())?;
        }
        Ok(())
    }

    fn record(&self, payload: Option<Payload>, now: Instant) {
        let mut col = self.shared.collector.lock();
        match payload {
            // A member's own group message echoed back is not a delivery.
            Some(p) if p.sender == self.idx && col.spec().per_receiver => {
                col.counts_mut().own += 1;
            }
            Some(p) => col.record(self.idx, &p, now),
            None => col.counts_mut().stale += 1,
        }
    }
}

async fn reader_loop(
    reader: Reader,
    mut stream: WsStream,
    mut decoder: Decoder,
    backlog: Vec<Frame>,
) {
    let why = 'conn: {
        for frame in backlog {
            if let Err(e) = reader.on_frame(frame).await {
                break 'conn e;
            }
        }
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => decoder.feed(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => decoder.feed(&b),
                Some(Ok(Message::Close(c))) => break 'conn closed_by_server(c.as_ref()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break 'conn format!("receive failed: {e}"),
                None => break 'conn closed_by_server(None),
            }
            loop {
                match decoder.next() {
                    Ok(Some(Decoded::Frame(f))) => {
                        if let Err(e) = reader.on_frame(f).await {
                            break 'conn e;
                        }
                    }
                    Ok(Some(Decoded::HeartBeat)) => {}
                    Ok(None) => break,
                    Err(e) => break 'conn format!("undecodable STOMP: {e}"),
                }
            }
        }
    };
    if !reader.shared.stopping.load(Ordering::Relaxed) {
        reader
            .shared
            .disconnected(format!("connection {}: {why}", reader.idx));
    }
}
