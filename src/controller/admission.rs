//! Admission of TCP connections, before HTTP sees them.
//!
//! Every connection is a file descriptor, and the cheapest attack on a
//! server is to open sockets and send nothing. So open connections are
//! capped in total (well below the open-files limit, so that the stores
//! always find a descriptor) and per client address, and a connection that
//! has not yet sent a complete request is *waiting*. Over a cap, the oldest
//! waiting connection (of the address, or anywhere) is closed to make room:
//! a real client sends its request at once, so the one that has waited
//! longest is most likely a flood's. Only when nobody is waiting is the new
//! connection refused, with a 503 written before any request is read.
//! Hyper's header timeout closes waiting connections after
//! `requestHeaderTimeoutMs` in any case.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The caps of one node.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// Open connections in all.
    pub total: usize,
    /// Open connections per client address (0: no cap).
    pub per_address: usize,
    /// Waiting connections per client address.
    pub waiting_per_address: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds `total` connections, none of them waiting.
    Full,
    /// The address holds `per_address` connections, none of them waiting.
    AddressFull,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Full => "total",
            Refusal::AddressFull => "per_address",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Full => "the server holds as many connections as it may; retry later",
            Refusal::AddressFull => "too many connections from your address; close some first",
        }
    }
}

#[derive(Default)]
struct AddressState {
    open: usize,
    waiting: BTreeSet<u64>,
}

#[derive(Default)]
struct State {
    open: usize,
    addresses: HashMap<IpAddr, AddressState>,
    /// Waiting connections, oldest first.
    waiting: BTreeMap<u64, Arc<Ticket>>,
}

/// Counts and caps the connections of one node.
pub struct Admission {
    limits: AdmissionLimits,
    state: Mutex<State>,
    next_id: AtomicU64,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Admits a connection from `ip`, closing an older waiting one if a cap
    /// is reached; the ticket releases its place when dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Arc<Ticket>, Refusal> {
        let mut st = self.state.lock();
        let addr = st.addresses.entry(ip).or_default();
        let waiting_here = addr.waiting.len();
        let open_here = addr.open;
        if waiting_here >= self.limits.waiting_per_address.max(1) {
            evict_oldest_of(&mut st, ip);
        }
        if self.limits.per_address > 0 && open_here >= self.limits.per_address {
            let evicted = st.addresses.get(&ip).is_some_and(|a| a.open < open_here)
                || evict_oldest_of(&mut st, ip);
            if !evicted {
                return Err(Refusal::AddressFull);
            }
        }
        if st.open >= self.limits.total && !evict_oldest(&mut st) {
            return Err(Refusal::Full);
        }
        let ticket = Arc::new(Ticket {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            ip,
            admission: self.clone(),
            released: AtomicBool::new(false),
            waiting: AtomicBool::new(true),
            evicted: Notify::new(),
            bytes_read: AtomicU64::new(0),
            read_limit: AtomicU64::new(u64::MAX),
            discarding: AtomicBool::new(false),
        });
        st.open += 1;
        let addr = st.addresses.entry(ip).or_default();
        addr.open += 1;
        addr.waiting.insert(ticket.id);
        st.waiting.insert(ticket.id, ticket.clone());
        metrics::gauge!("herald_tcp_connections").set(st.open as f64);
        Ok(ticket)
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.state.lock().open
    }

    fn release(&self, t: &Ticket) {
        let mut st = self.state.lock();
        forget(&mut st, t);
        metrics::gauge!("herald_tcp_connections").set(st.open as f64);
    }

    fn stop_waiting(&self, t: &Ticket) {
        let mut st = self.state.lock();
        st.waiting.remove(&t.id);
        if let Some(a) = st.addresses.get_mut(&t.ip) {
            a.waiting.remove(&t.id);
        }
    }
}

/// Removes a connection from every count (once).
fn forget(st: &mut State, t: &Ticket) {
    if t.released.swap(true, Ordering::AcqRel) {
        return;
    }
    st.open = st.open.saturating_sub(1);
    st.waiting.remove(&t.id);
    if let Some(a) = st.addresses.get_mut(&t.ip) {
        a.open = a.open.saturating_sub(1);
        a.waiting.remove(&t.id);
        if a.open == 0 {
            st.addresses.remove(&t.ip);
        }
    }
}

/// Closes the oldest waiting connection of `ip`; its place is free at once.
fn evict_oldest_of(st: &mut State, ip: IpAddr) -> bool {
    let oldest = st
        .addresses
        .get(&ip)
        .and_then(|a| a.waiting.first().copied());
    let Some(ticket) = oldest.and_then(|id| st.waiting.get(&id).cloned()) else {
        return false;
    };
    evict(st, &ticket);
    true
}

/// Closes the oldest waiting connection anywhere.
fn evict_oldest(st: &mut State) -> bool {
    let Some(ticket) = st.waiting.first_key_value().map(|(_, t)| t.clone()) else {
        return false;
    };
    evict(st, &ticket);
    true
}

fn evict(st: &mut State, t: &Ticket) {
    forget(st, t);
    t.evicted.notify_one();
    metrics::counter!("herald_tcp_connections_evicted_total").increment(1);
}

/// One admitted connection: its place in the counts, and what the layers
/// above tell the socket (read budgets, discarding input on the way out).
pub struct Ticket {
    id: u64,
    ip: IpAddr,
    admission: Arc<Admission>,
    released: AtomicBool,
    waiting: AtomicBool,
    evicted: Notify,
    bytes_read: AtomicU64,
    read_limit: AtomicU64,
    discarding: AtomicBool,
}

impl Ticket {
    /// The connection sent a complete request: it no longer waits (and can
    /// no longer be evicted to make room).
    pub fn request_started(&self) {
        if self.waiting.swap(false, Ordering::AcqRel) {
            self.admission.stop_waiting(self);
        }
    }

    /// Resolves when the connection was closed to make room.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }

    /// Bytes read from the socket so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Fails reads once `budget` more bytes arrived: bounds what a client
    /// that has not authenticated can make the server buffer.
    pub fn limit_reads(&self, budget: u64) {
        let limit = self.bytes_read().saturating_add(budget);
        self.read_limit.store(limit, Ordering::Relaxed);
    }

    pub fn unlimit_reads(&self) {
        self.read_limit.store(u64::MAX, Ordering::Relaxed);
    }

    /// From now on, bytes from the client are read and dropped: a closing
    /// connection must keep reading (a socket closed with unread input is
    /// reset, and the reset can destroy the ERROR frame on its way), but
    /// must not buffer what it reads.
    pub fn discard_input(&self) {
        self.discarding.store(true, Ordering::Relaxed);
    }
}

/// A TCP stream that holds its ticket: the place is released when the
/// socket closes, whoever owns it then (hyper, or the WebSocket after an
/// upgrade).
pub struct TrackedStream {
    io: TcpStream,
    ticket: Arc<Ticket>,
}

impl TrackedStream {
    pub fn new(io: TcpStream, ticket: Arc<Ticket>) -> TrackedStream {
        TrackedStream { io, ticket }
    }
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.ticket.admission.release(&self.ticket);
    }
}

/// Reads dropped per poll while discarding, before yielding to others.
const DISCARD_ROUNDS: usize = 16;

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ticket.discarding.load(Ordering::Relaxed) {
            return poll_discard(&mut this.io, cx);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            let total = this.ticket.bytes_read.fetch_add(n, Ordering::Relaxed) + n;
            if total > this.ticket.read_limit.load(Ordering::Relaxed) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "read budget exceeded",
                )));
            }
        }
        polled
    }
}

/// Reads and drops input until none is ready; end of input is passed on.
fn poll_discard(io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    let mut scratch = [0u8; 4096];
    for _ in 0..DISCARD_ROUNDS {
        let mut rb = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// While discarding, a flush also reads and drops input until the
    /// client closes: the WebSocket layer no longer reads after it failed,
    /// so closing the WebSocket (which flushes) is what drains the socket.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(Ok(())) if this.ticket.discarding.load(Ordering::Relaxed) => {
                poll_discard(&mut this.io, cx)
            }
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn limits(total: usize, per_address: usize, waiting: usize) -> AdmissionLimits {
        AdmissionLimits {
            total,
            per_address,
            waiting_per_address: waiting,
        }
    }

    #[test]
    fn waiting_connections_make_room_oldest_first() {
        let adm = Admission::new(limits(2, 0, 10));
        let a = adm.admit(ip(1)).unwrap();
        let b = adm.admit(ip(2)).unwrap();
        let c = adm.admit(ip(3)).unwrap();
        assert!(
            a.released.load(Ordering::Relaxed),
            "the oldest waiting one goes"
        );
        assert!(!b.released.load(Ordering::Relaxed));
        assert_eq!(adm.open(), 2);
        // Serving connections are never evicted: with none waiting, refuse.
        b.request_started();
        c.request_started();
        assert_eq!(adm.admit(ip(4)).err(), Some(Refusal::Full));
    }

    #[test]
    fn one_address_cannot_hold_more_than_its_share() {
        let adm = Admission::new(limits(100, 2, 10));
        let a = adm.admit(ip(1)).unwrap();
        a.request_started();
        let b = adm.admit(ip(1)).unwrap();
        b.request_started();
        assert_eq!(adm.admit(ip(1)).err(), Some(Refusal::AddressFull));
        assert!(adm.admit(ip(2)).is_ok(), "other addresses are not affected");
    }

    #[test]
    fn waiting_per_address_is_bounded() {
        let adm = Admission::new(limits(100, 0, 2));
        let a = adm.admit(ip(1)).unwrap();
        let _b = adm.admit(ip(1)).unwrap();
        let _c = adm.admit(ip(1)).unwrap();
        assert!(a.released.load(Ordering::Relaxed));
        assert_eq!(adm.open(), 2);
    }

    #[test]
    fn release_is_counted_once() {
        let adm = Admission::new(limits(1, 0, 10));
        let a = adm.admit(ip(1)).unwrap();
        let _b = adm.admit(ip(1)).unwrap(); // evicts a
        adm.release(&a); // a's socket closes later: no double count
        assert_eq!(adm.open(), 1);
    }
}
