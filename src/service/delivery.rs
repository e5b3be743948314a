//! The node's own devices: who is connected here, and the fan-out of
//! pushes and `/topic/...` broadcasts to their connection queues. (Who is
//! online anywhere, and the cap on devices per user, are `Presence`'s.)
//!
//! Each connection has one bounded queue. A push never waits: a device whose
//! queue is full is a slow consumer and is disconnected (its messages stay
//! in the inbox for sync), so one slow phone cannot stall everyone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::{mpsc, Notify};

/// A message or recall event, serialized once for one user.
#[derive(Debug)]
pub struct UserEvent {
    pub message_id: u64,
    /// The recipient's `inboxSeq` of it.
    pub inbox_seq: i64,
    /// The `MessageVo` JSON.
    pub body: Bytes,
    /// The user's entry is `pending`: a client-ack push must be tracked for
    /// redelivery.
    pub pending: bool,
    /// When the message was stored (for the store-to-push histogram).
    pub stored_at: Instant,
    pub redelivery: bool,
}

/// A `/topic/...` broadcast.
#[derive(Debug)]
pub struct Broadcast {
    pub destination: Arc<str>,
    /// Custom headers of the SEND, passed on unchanged.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// What a connection's queue carries.
#[derive(Debug, Clone)]
pub enum Outbound {
    Event(Arc<UserEvent>),
    Broadcast(Arc<Broadcast>),
}

/// A registered connection's handle, held by the hub.
#[derive(Clone)]
struct Device {
    conn_id: u64,
    tx: mpsc::Sender<Outbound>,
    kill: Arc<Notify>,
    /// Set once the connection is found too slow (counted once).
    slow: Arc<AtomicBool>,
}

/// What a connection gets when it registers.
pub struct Registration {
    pub conn_id: u64,
    pub rx: mpsc::Receiver<Outbound>,
    /// Notified when the hub wants the connection closed (slow consumer).
    pub kill: Arc<Notify>,
}

pub struct DeliveryHub {
    devices: RwLock<HashMap<u64, Vec<Device>>>,
    topics: RwLock<HashMap<Arc<str>, Vec<Device>>>,
    next_conn: AtomicU64,
    connections: AtomicU64,
    queue: usize,
}

impl DeliveryHub {
    pub fn new(queue: usize) -> DeliveryHub {
        DeliveryHub {
            devices: RwLock::new(HashMap::new()),
            topics: RwLock::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            queue,
        }
    }

    /// Registers a device of `user_id` on this node.
    pub fn register(&self, user_id: u64) -> Registration {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue);
        let kill = Arc::new(Notify::new());
        let mut devices = self.devices.write();
        let list = devices.entry(user_id).or_default();
        list.push(Device {
            conn_id,
            tx,
            kill: kill.clone(),
            slow: Arc::default(),
        });
        let online = devices.len();
        drop(devices);
        let n = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("herald_ws_connections").set(n as f64);
        metrics::gauge!("herald_online_users").set(online as f64);
        Registration { conn_id, rx, kill }
    }

    /// Forgets a device; its topic subscriptions must be dropped first.
    pub fn unregister(&self, user_id: u64, conn_id: u64) {
        let mut devices = self.devices.write();
        let mut removed = false;
        if let Some(list) = devices.get_mut(&user_id) {
            let before = list.len();
            list.retain(|d| d.conn_id != conn_id);
            removed = list.len() < before;
            if list.is_empty() {
                devices.remove(&user_id);
            }
        }
        let online = devices.len();
        drop(devices);
        if removed {
            let n = self
                .connections
                .fetch_sub(1, Ordering::Relaxed)
                .saturating_sub(1);
            metrics::gauge!("herald_ws_connections").set(n as f64);
        }
        metrics::gauge!("herald_online_users").set(online as f64);
    }

    pub fn is_online(&self, user_id: u64) -> bool {
        self.devices.read().contains_key(&user_id)
    }

    /// Whether the user has a device other than `except` (saves encoding a
    /// push nobody would receive).
    pub fn has_device_besides(&self, user_id: u64, except: Option<u64>) -> bool {
        self.devices
            .read()
            .get(&user_id)
            .is_some_and(|list| list.iter().any(|d| Some(d.conn_id) != except))
    }

    /// Queues `event` to every device of `user_id` but `except`; returns how
    /// many devices it was queued to.
    pub fn push_to_user(&self, user_id: u64, event: &Arc<UserEvent>, except: Option<u64>) -> usize {
        let targets: Vec<Device> = match self.devices.read().get(&user_id) {
            Some(list) => list
                .iter()
                .filter(|d| Some(d.conn_id) != except)
                .cloned()
                .collect(),
            None => return 0,
        };
        targets
            .iter()
            .filter(|d| offer(d, Outbound::Event(event.clone())))
            .count()
    }

    /// Queues `event` to one device of the user.
    pub fn push_to_conn(&self, user_id: u64, conn_id: u64, event: &Arc<UserEvent>) -> bool {
        let target = self
            .devices
            .read()
            .get(&user_id)
            .and_then(|list| list.iter().find(|d| d.conn_id == conn_id).cloned());
        target.is_some_and(|d| offer(&d, Outbound::Event(event.clone())))
    }

    /// Adds a connection to a topic's subscribers (once per connection; the
    /// connection maps it to its own subscription ids).
    pub fn subscribe_topic(&self, destination: &str, user_id: u64, conn_id: u64) {
        let device = self
            .devices
            .read()
            .get(&user_id)
            .and_then(|list| list.iter().find(|d| d.conn_id == conn_id).cloned());
        let Some(device) = device else { return };
        let mut topics = self.topics.write();
        let subs = topics.entry(Arc::from(destination)).or_default();
        if !subs.iter().any(|d| d.conn_id == conn_id) {
            subs.push(device);
        }
    }

    pub fn unsubscribe_topic(&self, destination: &str, conn_id: u64) {
        let mut topics = self.topics.write();
        if let Some(subs) = topics.get_mut(destination) {
            subs.retain(|d| d.conn_id != conn_id);
            if subs.is_empty() {
                topics.remove(destination);
            }
        }
    }

    /// Sends a broadcast to every current subscriber of its destination.
    pub fn publish_topic(&self, msg: Broadcast) -> usize {
        let msg = Arc::new(msg);
        let subs: Vec<Device> = match self.topics.read().get(&msg.destination) {
            Some(s) => s.clone(),
            None => return 0,
        };
        subs.iter()
            .filter(|d| offer(d, Outbound::Broadcast(msg.clone())))
            .count()
    }
}

/// Queues without waiting; a full queue marks a slow consumer for closing.
fn offer(device: &Device, item: Outbound) -> bool {
    match device.tx.try_send(item) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics::counter!("herald_dropped_pushes_total").increment(1);
            if !device.slow.swap(true, Ordering::Relaxed) {
                metrics::counter!("herald_slow_consumers_total").increment(1);
                device.kill.notify_one();
            }
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64) -> Arc<UserEvent> {
        Arc::new(UserEvent {
            message_id: id,
            inbox_seq: id as i64,
            body: Bytes::from_static(b"{}"),
            pending: true,
            stored_at: Instant::now(),
            redelivery: false,
        })
    }

    #[test]
    fn a_user_is_online_here_while_a_device_is() {
        let hub = DeliveryHub::new(4);
        let a = hub.register(7);
        let b = hub.register(7);
        assert!(hub.is_online(7) && !hub.is_online(8));
        hub.unregister(7, a.conn_id);
        assert!(hub.is_online(7));
        hub.unregister(7, b.conn_id);
        assert!(!hub.is_online(7));
    }

    #[tokio::test]
    async fn pushes_skip_the_origin_and_full_queues_kill() {
        let hub = DeliveryHub::new(1);
        let mut a = hub.register(1);
        let mut b = hub.register(1);
        assert_eq!(hub.push_to_user(1, &event(1), Some(a.conn_id)), 1);
        assert!(a.rx.try_recv().is_err());
        assert!(b.rx.try_recv().is_ok());
        assert_eq!(hub.push_to_user(1, &event(2), None), 2);
        // b's queue (capacity 1) is full now: the next push kills it.
        let killed = b.kill.notified();
        assert_eq!(hub.push_to_user(1, &event(3), Some(a.conn_id)), 0);
        tokio::time::timeout(std::time::Duration::from_secs(1), killed)
            .await
            .unwrap();
    }
}
