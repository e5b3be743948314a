//! The HTTP/1.1 server: accepts TCP connections under `admission`, serves
//! each with hyper (a deadline on every request head, so a connection that
//! sends nothing, or headers a byte at a time, or idles between requests,
//! is closed), hands upgrades to the WebSocket layer, and stops gracefully.
//!
//! Our own loop rather than `poem::Server` because poem configures hyper
//! without a timer, which disables the header timeout, and has no hook to
//! count or refuse connections before they cost a task.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use super::admission::{Admission, Refusal, Ticket, TrackedStream};

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    /// From accept (or the end of the previous response) to a complete
    /// request head.
    pub header_timeout: Duration,
    /// Time allowed on shutdown for requests under way to finish.
    pub drain_timeout: Duration,
}

/// Refusals being answered at once; beyond, a refused socket is just closed.
const REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refusal waits for its 503 to leave and the client to close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. out of file descriptors), instead of
/// spinning on an error that repeats until a descriptor is freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `ep` on `listener` until `stop` resolves, then lets requests
/// under way finish (up to `drain_timeout`). Upgraded connections are not
/// waited for: their owner closes them.
pub async fn serve<E>(
    listener: TcpListener,
    ep: E,
    admission: Arc<Admission>,
    opts: HttpOptions,
    stop: impl Future<Output = ()>,
) where
    E: Endpoint<Output = Response> + 'static,
{
    let ep = Arc::new(ep);
    let (stopping_tx, stopping) = watch::channel(false);
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                metrics::counter!("herald_tcp_accept_errors_total").increment(1);
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(refusal) => {
                refuse(tcp, refusal, &refusals);
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            // A push is a small write that must leave now, not after the
            // peer's delayed ACK.
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let local = tcp.local_addr().ok();
        let conn = Conn {
            io: TrackedStream::new(tcp, ticket.clone()),
            ticket,
            local,
            peer,
        };
        tokio::spawn(conn.serve(ep.clone(), opts, stopping.clone(), alive.clone()));
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    drop(alive);
    if tokio::time::timeout(opts.drain_timeout, all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests did not finish in time");
    }
}

struct Conn {
    io: TrackedStream,
    ticket: Arc<Ticket>,
    local: Option<SocketAddr>,
    peer: SocketAddr,
}

impl Conn {
    async fn serve<E>(
        self,
        ep: Arc<E>,
        opts: HttpOptions,
        mut stopping: watch::Receiver<bool>,
        _alive: mpsc::Sender<()>,
    ) where
        E: Endpoint<Output = Response> + 'static,
    {
        let Conn {
            io,
            ticket,
            local,
            peer,
        } = self;
        let local = LocalAddr(local.map(Addr::SocketAddr).unwrap_or_default());
        let remote = RemoteAddr(Addr::SocketAddr(peer));
        let request_ticket = ticket.clone();
        let service = hyper::service::service_fn(move |mut req: poem::http::Request<Incoming>| {
            request_ticket.request_started();
            req.extensions_mut().insert(request_ticket.clone());
            let req = poem::Request::from((req, local.clone(), remote.clone(), Scheme::HTTP));
            let ep = ep.clone();
            async move {
                let resp = ep.get_response(req).await;
                Ok::<_, Infallible>(hyper::Response::<BoxBody<Bytes, std::io::Error>>::from(
                    resp,
                ))
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(opts.header_timeout)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = &mut conn => {}
            _ = ticket.evicted() => {
                tracing::debug!(%peer, "closed a waiting connection to make room");
            }
            _ = stopped(&mut stopping) => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

/// Resolves when the server stops (the guard `wait_for` returns is not
/// `Send`, so it must not live across the select).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// Answers a refused connection with a 503 and closes it, without reading
/// its request (which may never come).
fn refuse(mut tcp: TcpStream, refusal: Refusal, in_flight: &Arc<Semaphore>) {
    metrics::counter!("herald_tcp_connections_refused_total", "reason" => refusal.label())
        .increment(1);
    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
        return; // dropped: closed at once
    };
    tokio::spawn(async move {
        let answer = refusal_response(refusal);
        let linger = async {
            tcp.write_all(answer.as_bytes()).await?;
            tcp.shutdown().await?;
            // Read until the client closes: a socket closed with unread
            // input is reset, and the reset can destroy the 503.
            let mut sink = [0u8; 1024];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
        drop(permit);
    });
}

fn refusal_response(refusal: Refusal) -> String {
    let body = serde_json::json!({"code": "unavailable", "message": refusal.message()}).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}
