//! `herald-bench relay`: a STOMP-over-WebSocket broker that stores nothing
//! and checks nothing, the ceiling of any server on the machine it runs on.
//!
//! Driven with `--target stomp`, it does what every broker must do per
//! message and nothing more: read the SEND, write the MESSAGE to the
//! subscriber, read its ACK (and, with `--answer-sends`, write one more
//! small frame to the sender, as Herald's SendAck is). Whatever rate it
//! reaches with the generator beside it is the most any server can reach
//! there: the rest of a server's cost (storage, routing, JSON) comes on top.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use herald::stomp::{Command, Decoded, Decoder, Frame, Limits, HEARTBEAT};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::RelayArgs;
use crate::stomp_client::to_message;

/// Frames queued per connection; beyond it a message is dropped (and the
/// generator counts it lost), never queued without bound.
const CONNECTION_QUEUE: usize = 4096;
/// Drops are told at the first and then at every this many more.
const TELL_DROPS_EVERY: u64 = 10_000;

/// One subscription: where its frames go and the id they carry.
#[derive(Clone)]
struct Subscriber {
    connection: u64,
    id: String,
    out: mpsc::Sender<Message>,
}

/// Subscriptions by destination (`/queue/X`, `/topic/X`).
#[derive(Default)]
struct Routes {
    by_destination: Mutex<HashMap<String, Vec<Subscriber>>>,
    message_ids: AtomicU64,
    dropped: AtomicU64,
}

impl Routes {
    fn subscribe(&self, destination: String, subscriber: Subscriber) {
        self.by_destination
            .lock()
            .entry(destination)
            .or_default()
            .push(subscriber);
    }

    /// Removes the subscriptions of `connection` (all of them if `id` is
    /// `None`).
    fn unsubscribe(&self, connection: u64, id: Option<&str>) {
        self.by_destination.lock().retain(|_, subs| {
            subs.retain(|s| s.connection != connection || id.is_some_and(|id| s.id != id));
            !subs.is_empty()
        });
    }

    /// A frame for a connection whose queue is full was dropped: said on
    /// stderr, since the relay keeps no other record of it.
    fn dropped_one(&self) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 || n.is_multiple_of(TELL_DROPS_EVERY) {
            eprintln!("relay: {n} frame(s) dropped so far: a connection's queue was full");
        }
    }

    /// A queue delivers to its first subscriber, a topic to all of them.
    fn targets(&self, destination: &str) -> Vec<Subscriber> {
        let routes = self.by_destination.lock();
        let Some(subs) = routes.get(destination) else {
            return Vec::new();
        };
        if destination.starts_with("/topic/") {
            subs.clone()
        } else {
            subs.iter().take(1).cloned().collect()
        }
    }
}

/// Serves until the process is stopped.
pub async fn run(args: &RelayArgs) -> Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // The smoke test and the benchmark script wait for this line.
    eprintln!("relay listening on ws://{addr}/ws");
    let routes = Arc::new(Routes::default());
    let mut next_connection = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("relay: accept failed: {e}");
                continue;
            }
        };
        next_connection += 1;
        let (routes, answer_sends) = (routes.clone(), args.answer_sends);
        tokio::spawn(async move {
            // A benchmark client that leaves resets its connection: only a
            // failed handshake is worth a line.
            if let Err(e) = serve(stream, next_connection, routes, answer_sends).await {
                if e.is::<Handshake>() {
                    eprintln!("relay: connection from {peer}: {e:#}");
                }
            }
        });
    }
}

/// A connection whose WebSocket handshake failed.
#[derive(Debug, thiserror::Error)]
#[error("WebSocket handshake failed: {0}")]
struct Handshake(tokio_tungstenite::tungstenite::Error);

/// The WebSocket handshake, offering the STOMP 1.2 subprotocol.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn choose_subprotocol(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    response.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("v12.stomp"),
    );
    Ok(response)
}

async fn serve(
    stream: TcpStream,
    connection: u64,
    routes: Arc<Routes>,
    answer_sends: bool,
) -> Result<()> {
    stream.set_nodelay(true)?;
    let ws = tokio_tungstenite::accept_hdr_async(stream, choose_subprotocol)
        .await
        .map_err(Handshake)?;
    let (mut sink, mut source) = ws.split();
    let (out, mut queued) = mpsc::channel::<Message>(CONNECTION_QUEUE);
    // One writer per connection, flushing whatever queued up at once.
    let writer = tokio::spawn(async move {
        while let Some(first) = queued.recv().await {
            let mut result = sink.feed(first).await;
            while let (Ok(()), Ok(next)) = (&result, queued.try_recv()) {
                result = sink.feed(next).await;
            }
            if result.and(sink.flush().await).is_err() {
                return;
            }
        }
    });
    let mut session = Session {
        connection,
        routes: &routes,
        out,
        answer_sends,
    };
    let mut decoder = Decoder::new(Limits::default());
    let result = async {
        while let Some(message) = source.next().await {
            match message? {
                Message::Text(t) => decoder.feed(t.as_bytes()),
                Message::Binary(b) => decoder.feed(&b),
                Message::Close(_) => break,
                _ => continue,
            }
            while let Some(decoded) = decoder.next()? {
                if let Decoded::Frame(frame) = decoded {
                    if !session.on_frame(frame) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    routes.unsubscribe(connection, None);
    drop(session);
    let _ = writer.await;
    result
}

struct Session<'a> {
    connection: u64,
    routes: &'a Routes,
    out: mpsc::Sender<Message>,
    answer_sends: bool,
}

impl Session<'_> {
    /// Handles one frame; `false` ends the connection.
    fn on_frame(&mut self, frame: Frame) -> bool {
        let mut keep = true;
        match frame.command {
            Command::Connect | Command::Stomp => self.write(
                Frame::new(Command::Connected)
                    .with_header("version", "1.2")
                    .with_header("heart-beat", "0,0"),
            ),
            Command::Subscribe => {
                if let (Some(destination), Some(id)) =
                    (frame.header("destination"), frame.header("id"))
                {
                    let subscriber = Subscriber {
                        connection: self.connection,
                        id: id.to_string(),
                        out: self.out.clone(),
                    };
                    self.routes.subscribe(destination.to_string(), subscriber);
                }
            }
            Command::Unsubscribe => self.routes.unsubscribe(self.connection, frame.header("id")),
            Command::Send => self.relay(&frame),
            Command::Disconnect => keep = false,
            // Nothing is kept, so there is nothing to ack or redeliver.
            _ => {}
        }
        if let Some(receipt) = frame.header("receipt") {
            self.write(Frame::new(Command::Receipt).with_header("receipt-id", receipt));
        }
        keep
    }

    fn relay(&self, send: &Frame) {
        let destination = send.header("destination").unwrap_or("");
        // RabbitMQ's `/amq/queue/X` names the queue `/queue/X` consumes.
        let destination = destination
            .strip_prefix("/amq")
            .filter(|d| d.starts_with("/queue/"))
            .unwrap_or(destination);
        for target in self.routes.targets(destination) {
            let id = self.routes.message_ids.fetch_add(1, Ordering::Relaxed);
            let mut message = Frame::new(Command::Message)
                .with_header("destination", destination)
                .with_header("subscription", target.id.clone())
                .with_header("message-id", id.to_string())
                .with_header("ack", id.to_string())
                .with_body(send.body.clone());
            if let Some(content_type) = send.header("content-type") {
                message.push_header("content-type", content_type);
            }
            if target.out.try_send(to_message(&message)).is_err() {
                self.routes.dropped_one();
            }
        }
        if self.answer_sends && send.header("receipt").is_none() {
            self.write_raw(Message::Text(
                std::str::from_utf8(HEARTBEAT).unwrap_or("\n").into(),
            ));
        }
    }

    fn write(&self, frame: Frame) {
        self.write_raw(to_message(&frame));
    }

    fn write_raw(&self, message: Message) {
        if self.out.try_send(message).is_err() {
            self.routes.dropped_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn subscriber(connection: u64, id: &str) -> (Subscriber, mpsc::Receiver<Message>) {
        let (out, rx) = mpsc::channel(4);
        let s = Subscriber {
            connection,
            id: id.into(),
            out,
        };
        (s, rx)
    }

    #[test]
    fn a_queue_delivers_to_one_subscriber_and_a_topic_to_all() {
        let routes = Routes::default();
        for c in [1, 2] {
            routes.subscribe("/queue/q".into(), subscriber(c, "s").0);
            routes.subscribe("/topic/t".into(), subscriber(c, "s").0);
        }
        assert_eq!(routes.targets("/queue/q").len(), 1);
        assert_eq!(routes.targets("/topic/t").len(), 2);
        assert!(routes.targets("/queue/none").is_empty());
    }

    #[test]
    fn unsubscribing_removes_one_id_or_every_subscription_of_a_connection() {
        let routes = Routes::default();
        routes.subscribe("/queue/a".into(), subscriber(1, "x").0);
        routes.subscribe("/queue/b".into(), subscriber(1, "y").0);
        routes.subscribe("/queue/b".into(), subscriber(2, "y").0);
        routes.unsubscribe(1, Some("x"));
        assert!(routes.targets("/queue/a").is_empty());
        assert_eq!(routes.targets("/queue/b")[0].connection, 1);
        routes.unsubscribe(1, None);
        assert_eq!(routes.targets("/queue/b")[0].connection, 2);
    }

    #[test]
    fn a_send_reaches_the_queue_its_amq_name_names_with_the_senders_body() {
        let routes = Routes::default();
        let (s, mut rx) = subscriber(2, "q");
        routes.subscribe("/queue/b-1".into(), s);
        let (out, mut own) = mpsc::channel(4);
        let session = Session {
            connection: 1,
            routes: &routes,
            out,
            answer_sends: true,
        };
        let send = Frame::new(Command::Send)
            .with_header("destination", "/amq/queue/b-1")
            .with_body(Bytes::from_static(b"hello"));
        session.relay(&send);
        let Ok(Message::Text(text)) = rx.try_recv() else {
            panic!("no MESSAGE relayed")
        };
        assert!(text.starts_with("MESSAGE\n"), "{text}");
        assert!(text.contains("\nsubscription:q\n"), "{text}");
        assert!(text.ends_with("\n\nhello\0"), "{text}");
        assert!(matches!(own.try_recv(), Ok(Message::Text(t)) if t.as_str() == "\n"));
        assert_eq!(routes.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_frame_for_a_full_queue_is_dropped_and_counted() {
        let routes = Routes::default();
        let (out, _rx) = mpsc::channel(1);
        let session = Session {
            connection: 1,
            routes: &routes,
            out,
            answer_sends: false,
        };
        session.write_raw(Message::text("\n"));
        session.write_raw(Message::text("\n"));
        assert_eq!(routes.dropped.load(Ordering::Relaxed), 1);
    }
}
