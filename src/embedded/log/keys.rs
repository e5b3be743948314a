//! Idempotency keys of a log: those of records not yet known to be
//! applied for good, in memory. Older keys are answered by whatever the
//! records were applied to (`KeyHistory`), so memory holds only the keys
//! between publish and the consumer's durable position, not every key ever.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// A key's record: where it is and the receipt published with it.
#[derive(Clone)]
pub struct KeyEntry {
    pub offset: u64,
    pub receipt: Arc<[u8]>,
}

#[derive(Default)]
pub struct Keys {
    by_key: HashMap<Arc<str>, KeyEntry>,
    /// The same keys in offset order, to forget them by offset.
    by_offset: VecDeque<(u64, Arc<str>)>,
    /// Counts the calls that forgot keys: a publish that asked the history
    /// about a key while keys were forgotten must ask again (see
    /// `LogTopic::publish_once`).
    forgotten: u64,
}

impl Keys {
    pub fn get(&self, key: &str) -> Option<&KeyEntry> {
        self.by_key.get(key)
    }

    pub fn generation(&self) -> u64 {
        self.forgotten
    }

    pub fn insert(&mut self, key: &str, entry: KeyEntry) {
        let key: Arc<str> = Arc::from(key);
        self.by_offset.push_back((entry.offset, key.clone()));
        self.by_key.insert(key, entry);
    }

    /// Forgets the keys of records up to `offset`: they were applied for
    /// good, and the history answers for them.
    pub fn forget_through(&mut self, offset: u64) {
        let mut any = false;
        while let Some((o, _)) = self.by_offset.front() {
            if *o > offset {
                break;
            }
            if let Some((_, key)) = self.by_offset.pop_front() {
                self.by_key.remove(&key);
                any = true;
            }
        }
        self.forgotten += u64::from(any);
    }

    /// Forgets the keys of records `first..=last`, whose write failed: a
    /// new publish of one of them is a new record.
    pub fn forget_failed(&mut self, first: u64, last: u64) {
        self.by_offset.retain(|(o, key)| {
            let failed = (first..=last).contains(o);
            if failed {
                self.by_key.remove(key);
            }
            !failed
        });
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }
}

/// The outcome publishers wait for.
pub type Outcome = Result<(), Arc<str>>;

/// Publishers waiting for their record to be durable, by offset.
#[derive(Default)]
pub struct Durability {
    inner: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// Everything up to here is durable (or failed and was cut off).
    done: u64,
    waiters: BTreeMap<u64, Vec<oneshot::Sender<Outcome>>>,
}

impl Durability {
    pub fn new(done: u64) -> Durability {
        Durability {
            inner: Mutex::new(Waiting {
                done,
                waiters: BTreeMap::new(),
            }),
        }
    }

    /// Waits for the record at `offset`. Called under the log's state
    /// lock, before the writer can take the record: so a record's outcome
    /// always finds its waiters.
    pub fn wait(&self, offset: u64) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock();
        if offset <= inner.done {
            let _ = tx.send(Ok(()));
        } else {
            inner.waiters.entry(offset).or_default().push(tx);
        }
        rx
    }

    /// Records up to `last` are durable.
    pub fn succeeded(&self, last: u64) {
        for tx in self.take_through(last).into_values().flatten() {
            let _ = tx.send(Ok(()));
        }
    }

    /// Records up to `last` failed (those before were answered already).
    pub fn failed(&self, last: u64, error: &Arc<str>) {
        for tx in self.take_through(last).into_values().flatten() {
            let _ = tx.send(Err(error.clone()));
        }
    }

    fn take_through(&self, last: u64) -> BTreeMap<u64, Vec<oneshot::Sender<Outcome>>> {
        let mut inner = self.inner.lock();
        inner.done = inner.done.max(last);
        let later = inner.waiters.split_off(&(last + 1));
        std::mem::replace(&mut inner.waiters, later)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64) -> KeyEntry {
        KeyEntry {
            offset,
            receipt: Arc::from(&b"r"[..]),
        }
    }

    #[test]
    fn keys_are_forgotten_by_offset_and_when_their_write_failed() {
        let mut keys = Keys::default();
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            keys.insert(k, entry(i as u64 + 1));
        }
        keys.forget_through(0);
        assert_eq!(keys.generation(), 0, "nothing forgotten");
        keys.forget_through(2);
        assert_eq!(keys.generation(), 1);
        assert!(keys.get("a").is_none() && keys.get("b").is_none());
        keys.forget_failed(4, 4);
        assert!(keys.get("d").is_none());
        assert_eq!(keys.get("c").map(|e| e.offset), Some(3));
        assert_eq!(keys.len(), 1);
    }

    #[tokio::test]
    async fn waiters_hear_their_records_outcome() {
        let d = Durability::new(2);
        assert_eq!(d.wait(1).await.unwrap(), Ok(()), "durable already");
        let (three, four, five) = (d.wait(3), d.wait(4), d.wait(5));
        d.succeeded(3);
        let error: Arc<str> = Arc::from("disk full");
        d.failed(4, &error);
        assert_eq!(three.await.unwrap(), Ok(()));
        assert_eq!(four.await.unwrap(), Err(error));
        d.succeeded(5);
        assert_eq!(five.await.unwrap(), Ok(()));
    }
}
