//! The embedded durable topic: an append-only log of segment files (see
//! `segment`), one directory per topic.
//!
//! Publishers encode their record into a shared buffer under a short lock,
//! which also gives it its offset; one writer thread per topic takes
//! whatever has gathered, writes it with one `write` and makes it durable
//! with one `fdatasync` (group commit), then tells the publishers and the
//! consumers. Nothing is rewritten in place: there is no B-tree, no page
//! image and no checkpoint, and a segment is deleted whole once every
//! consumer is past it. Idempotency keys of records not yet applied for
//! good are kept in memory (`keys`); older ones are answered by a
//! `KeyHistory` (the documents the records were applied to).

mod keys;
mod segment;
mod tail;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::{oneshot, watch, Notify};

use self::keys::{Durability, KeyEntry, Keys, Outcome};
use self::tail::Tail;
use crate::error::{BackendError, BackendResult};
use crate::service::backend::{
    Checkpoint, Durable, DurableTopic, KeyHistory, Position, PublishOnce, TopicConsumer,
    TopicRecord,
};

pub use self::segment::Record;

/// A segment is closed and a new one started once it is this long.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes gathered for the writer at most; a publisher waits beyond it
/// (the backpressure of `publish`).
const PENDING_MAX: usize = 8 * 1024 * 1024;
/// A write of fewer than `GATHER_RECORDS` records first waits up to
/// `GATHER_FOR` for more. An `fdatasync` here takes ~0.2 ms, so without it
/// every write held one or two records, and each write costs the writer a
/// wake-up and a sleep in `fdatasync` and the publishers another wake-up
/// (~30 us of CPU each on this VM): at 4,000 msg/s the session log used
/// 16 % of a core with 2.3 context switches per record, 6-8 % with the
/// wait (server CPU 112 -> 100-107 %, NOTES).
const GATHER_FOR: std::time::Duration = std::time::Duration::from_millis(1);
const GATHER_RECORDS: usize = 64;
/// The consumers' committed offsets, in the topic's directory.
const OFFSETS_FILE: &str = "offsets";

/// The log is one partition.
const PARTITION: u32 = 0;

fn position(offset: u64) -> Position {
    Position {
        partition: PARTITION,
        offset,
    }
}

/// Where consumer groups save how far they applied the log, besides the
/// log's own offsets: the documents store saves it with what it applied.
#[async_trait]
pub trait AppliedPositions: Send + Sync + 'static {
    /// The offset `group` applied last, if it saved one: it resumes there.
    async fn applied(&self, group: &str) -> BackendResult<Option<u64>>;
    /// The highest offset `group` applied that survives a power loss: the
    /// log may forget the records up to it.
    fn durable(&self, group: &str) -> u64;
}

/// How a topic is opened.
pub struct LogOptions {
    /// Each write is made durable with `fdatasync` before it is
    /// acknowledged (else it survives a crash of the process, not of the
    /// machine).
    pub sync: bool,
    /// Answers for the keys `publish_once` no longer holds (none: the topic
    /// keeps no keys).
    pub history: Option<Arc<dyn KeyHistory>>,
    /// Where consumers resume and what they may commit (none: they
    /// resume after their committed offset and commit what they polled).
    pub positions: Option<Arc<dyn AppliedPositions>>,
    /// Test hook: writes that succeed before every later one fails.
    pub fail_after_writes: Option<u64>,
}

/// A topic on the embedded log.
pub struct LogTopic {
    shared: Arc<Shared>,
    history: Option<Arc<dyn KeyHistory>>,
    positions: Option<Arc<dyn AppliedPositions>>,
    /// Told when the writer thread has finished (`close`).
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
}

/// What publishers, consumers and the writer share.
struct Shared {
    name: String,
    dir: PathBuf,
    state: Mutex<State>,
    /// Wakes the writer: records gathered, a prune asked for, or closing.
    wake: Condvar,
    /// Told after each write: room in the buffer again.
    room: Notify,
    durability: Durability,
    tail: Tail,
    metrics: LogMetrics,
}

/// The log's metrics, labelled once by topic.
struct LogMetrics {
    write_seconds: metrics::Histogram,
    write_records: metrics::Histogram,
    keys_in_memory: metrics::Gauge,
}

impl LogMetrics {
    fn of(topic: &str) -> LogMetrics {
        let topic = topic.to_string();
        LogMetrics {
            write_seconds: metrics::histogram!("herald_topic_write_seconds", "topic" => topic.clone()),
            write_records: metrics::histogram!("herald_topic_write_records", "topic" => topic.clone()),
            keys_in_memory: metrics::gauge!("herald_topic_keys_in_memory", "topic" => topic),
        }
    }
}

struct State {
    next_offset: u64,
    /// Encoded records the writer has not taken yet, and their payloads
    /// (for the tail).
    gathered: Vec<u8>,
    gathered_records: Vec<TopicRecord>,
    keys: Keys,
    /// Committed offset of every consumer group the topic knows.
    groups: BTreeMap<String, u64>,
    /// Closed segments, oldest first: (base, last offset in it).
    sealed: VecDeque<(u64, u64)>,
    /// The writer deletes the sealed segments ending at or before this.
    prune_through: u64,
    closing: bool,
}

impl LogTopic {
    /// Opens topic `name` in `dir` (created if needed), reading back what
    /// its segments hold.
    pub fn open(dir: &Path, name: &str, options: LogOptions) -> BackendResult<LogTopic> {
        std::fs::create_dir_all(dir)?;
        let opened = recover(dir)?;
        let head = opened.next_offset - 1;
        let mut keys = Keys::default();
        for r in opened.records.iter().filter(|r| !r.key.is_empty()) {
            let receipt = Arc::from(&r.receipt[..]);
            keys.insert(
                &r.key,
                KeyEntry {
                    offset: r.offset,
                    receipt,
                },
            );
        }
        let tail = Tail::new(
            head,
            opened.records.into_iter().map(|r| TopicRecord {
                position: position(r.offset),
                payload: r.payload,
            }),
        );
        let shared = Arc::new(Shared {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                next_offset: opened.next_offset,
                gathered: Vec::new(),
                gathered_records: Vec::new(),
                keys,
                groups: read_offsets(dir)?,
                sealed: opened.sealed,
                prune_through: 0,
                closing: false,
            }),
            wake: Condvar::new(),
            room: Notify::new(),
            durability: Durability::new(head),
            tail,
            metrics: LogMetrics::of(name),
        });
        let files = Files {
            fail_after: options.fail_after_writes,
            dir: dir.to_path_buf(),
            active: opened.active,
            active_base: opened.active_base,
            active_len: opened.active_len,
            sync: options.sync,
        };
        let (stopped_tx, stopped) = oneshot::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name(format!("log-{name}"))
            .spawn(move || {
                writer.run(files);
                let _ = stopped_tx.send(());
            })
            .map_err(|e| BackendError::Other(format!("cannot start the {name} log writer: {e}")))?;
        Ok(LogTopic {
            shared,
            history: options.history,
            positions: options.positions,
            stopped: Mutex::new(Some(stopped)),
        })
    }

    /// A consumer of `group`, resuming after `resume_after` or, if `None`,
    /// after its committed offset.
    pub fn open_consumer(&self, group: &str, resume_after: Option<u64>) -> LogConsumer {
        let committed = *self
            .shared
            .state
            .lock()
            .groups
            .entry(group.to_string())
            .or_default();
        LogConsumer {
            shared: self.shared.clone(),
            group: group.to_string(),
            position: resume_after.unwrap_or(committed),
            committed,
            positions: self.positions.clone(),
            head: self.shared.tail.head.subscribe(),
            cursor: None,
        }
    }

    /// Idempotency keys held in memory (also the gauge
    /// `herald_topic_keys_in_memory`, set at each commit).
    pub fn keys_in_memory(&self) -> usize {
        self.shared.state.lock().keys.len()
    }
}

/// What a publish found or did.
enum Appended {
    /// Appended at this offset.
    Fresh(u64, oneshot::Receiver<Outcome>),
    /// The key's record is in the log: its receipt, once it is durable.
    Present(Arc<[u8]>, oneshot::Receiver<Outcome>),
    /// Keys were forgotten since the caller asked the history: ask again.
    Forgotten,
}

/// An idempotency key with its receipt, and the key generation the caller
/// saw when it found the key in neither memory nor history.
struct Keyed<'a> {
    key: &'a str,
    receipt: &'a [u8],
    generation: u64,
}

impl Shared {
    /// Gathers one record for the writer, waiting while the buffer is full.
    async fn append(&self, keyed: Option<Keyed<'_>>, payload: &Bytes) -> BackendResult<Appended> {
        loop {
            let room = self.room.notified();
            {
                let mut st = self.state.lock();
                if st.closing {
                    return Err(BackendError::Closed);
                }
                if let Some(k) = &keyed {
                    if let Some(entry) = st.keys.get(k.key) {
                        let wait = self.durability.wait(entry.offset);
                        return Ok(Appended::Present(entry.receipt.clone(), wait));
                    }
                    if st.keys.generation() != k.generation {
                        return Ok(Appended::Forgotten);
                    }
                }
                if st.gathered.len() < PENDING_MAX {
                    return Ok(self.gather(&mut st, keyed, payload));
                }
            }
            room.await;
        }
    }

    fn gather(&self, st: &mut State, keyed: Option<Keyed<'_>>, payload: &Bytes) -> Appended {
        let offset = st.next_offset;
        st.next_offset += 1;
        let (key, receipt) = keyed.as_ref().map_or(("", &[][..]), |k| (k.key, k.receipt));
        let was_empty = st.gathered.is_empty();
        segment::encode(&mut st.gathered, offset, key, receipt, payload);
        st.gathered_records.push(TopicRecord {
            position: position(offset),
            payload: payload.clone(),
        });
        if !key.is_empty() {
            let receipt = Arc::from(receipt);
            st.keys.insert(key, KeyEntry { offset, receipt });
        }
        let wait = self.durability.wait(offset);
        if was_empty {
            self.wake.notify_one();
        }
        Appended::Fresh(offset, wait)
    }

    /// The writer thread: write what gathered, prune, until closed.
    fn run(&self, mut files: Files) {
        let mut pruned_through = 0;
        loop {
            let (bytes, records, prune, closing) = {
                let mut st = self.state.lock();
                while st.gathered.is_empty() && st.prune_through <= pruned_through && !st.closing {
                    self.wake.wait(&mut st);
                }
                if !st.closing && st.gathered_records.len() < GATHER_RECORDS {
                    // Publishers add to a buffer that is not empty without
                    // waking the writer: this wait lasts GATHER_FOR.
                    let _ = self.wake.wait_for(&mut st, GATHER_FOR);
                }
                let bytes = std::mem::take(&mut st.gathered);
                let records = std::mem::take(&mut st.gathered_records);
                let prune = (st.prune_through > pruned_through).then(|| {
                    let gone: Vec<u64> = st
                        .sealed
                        .iter()
                        .take_while(|(_, last)| *last <= st.prune_through)
                        .map(|(base, _)| *base)
                        .collect();
                    st.sealed.drain(..gone.len());
                    (gone, st.groups.clone())
                });
                pruned_through = pruned_through.max(st.prune_through);
                (bytes, records, prune, st.closing)
            };
            if !records.is_empty() {
                self.write(&mut files, &bytes, records);
            }
            if let Some((segments, groups)) = prune {
                if let Err(e) = files.prune(&segments, &groups) {
                    tracing::warn!(topic = %self.name, error = %e, "pruning the log failed");
                }
            }
            if closing {
                let groups = self.state.lock().groups.clone();
                if let Err(e) = write_offsets(&self.dir, &groups) {
                    tracing::warn!(topic = %self.name, error = %e, "saving the offsets failed");
                }
                return;
            }
        }
    }

    /// Writes one batch and tells its publishers and the consumers.
    fn write(&self, files: &mut Files, bytes: &[u8], records: Vec<TopicRecord>) {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return;
        };
        let (first, last) = (first.position.offset, last.position.offset);
        let started = Instant::now();
        match files.append(bytes) {
            Ok(()) => {
                self.metrics
                    .write_seconds
                    .record(started.elapsed().as_secs_f64());
                self.metrics.write_records.record(records.len() as f64);
                self.tail.append(records);
                self.durability.succeeded(last);
                if files.active_len >= SEGMENT_BYTES {
                    match files.roll(last + 1) {
                        Ok(closed_base) => self.state.lock().sealed.push_back((closed_base, last)),
                        Err(e) => {
                            tracing::warn!(topic = %self.name, error = %e, "starting a new segment failed")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(topic = %self.name, error = %e, first, last, "appending to the log failed");
                self.state.lock().keys.forget_failed(first, last);
                let error: Arc<str> =
                    Arc::from(format!("appending to the {} log failed: {e}", self.name));
                self.durability.failed(last, &error);
            }
        }
        self.room.notify_waiters();
    }

    /// A consumer of `group` committed `offset`: keys up to every group's
    /// commit are forgotten, and segments before it deleted.
    fn commit(&self, group: &str, offset: u64) {
        let mut st = self.state.lock();
        let entry = st.groups.entry(group.to_string()).or_default();
        *entry = (*entry).max(offset);
        let Some(&all) = st.groups.values().min() else {
            return;
        };
        st.keys.forget_through(all);
        self.metrics.keys_in_memory.set(st.keys.len() as f64);
        if st.sealed.front().is_some_and(|(_, last)| *last <= all) && all > st.prune_through {
            st.prune_through = all;
            self.wake.notify_one();
        }
    }
}

#[async_trait]
impl DurableTopic for LogTopic {
    fn name(&self) -> &str {
        &self.shared.name
    }

    async fn publish(&self, _route: u64, payload: Vec<u8>) -> BackendResult<Durable<Position>> {
        let payload = Bytes::from(payload);
        match self.shared.append(None, &payload).await? {
            Appended::Fresh(offset, wait) => Ok(Box::pin(async move {
                outcome(wait.await)?;
                Ok(position(offset))
            })),
            Appended::Present(..) | Appended::Forgotten => Err(BackendError::Other(
                "a record without a key found a key".into(),
            )),
        }
    }

    async fn publish_once(
        &self,
        _route: u64,
        key: String,
        payload: Vec<u8>,
        receipt: Vec<u8>,
    ) -> BackendResult<Durable<PublishOnce>> {
        let Some(history) = &self.history else {
            return Err(BackendError::Other(format!(
                "topic {} keeps no idempotency keys",
                self.shared.name
            )));
        };
        if key.is_empty() || key.len() > segment::KEY_MAX {
            return Err(BackendError::Other(format!(
                "an idempotency key must be 1-{} bytes",
                segment::KEY_MAX
            )));
        }
        let payload = Bytes::from(payload);
        loop {
            // A key is in memory from its publish until its record is
            // applied for good, then in the history; checked in that order,
            // the two never both miss it, unless keys were forgotten in
            // between: then `append` says so and both are asked again.
            let generation = {
                let st = self.shared.state.lock();
                if let Some(entry) = st.keys.get(&key) {
                    let wait = self.shared.durability.wait(entry.offset);
                    return Ok(duplicate_once_durable(entry.receipt.clone(), wait));
                }
                st.keys.generation()
            };
            if let Some(original) = history.receipt(&key).await? {
                return Ok(Box::pin(
                    async move { Ok(PublishOnce::Duplicate(original)) },
                ));
            }
            let keyed = Keyed {
                key: &key,
                receipt: &receipt,
                generation,
            };
            match self.shared.append(Some(keyed), &payload).await? {
                Appended::Fresh(offset, wait) => {
                    return Ok(Box::pin(async move {
                        outcome(wait.await)?;
                        Ok(PublishOnce::Published(position(offset)))
                    }))
                }
                Appended::Present(original, wait) => {
                    return Ok(duplicate_once_durable(original, wait))
                }
                Appended::Forgotten => continue,
            }
        }
    }

    async fn consumer(&self, group: &'static str) -> BackendResult<Box<dyn TopicConsumer>> {
        let resume = match &self.positions {
            Some(p) => p.applied(group).await?,
            None => None,
        };
        Ok(Box::new(self.open_consumer(group, resume)))
    }

    async fn ping(&self) -> BackendResult<()> {
        if self.shared.state.lock().closing {
            return Err(BackendError::Closed);
        }
        Ok(())
    }

    async fn close(&self) -> BackendResult<()> {
        let stopped = self.stopped.lock().take();
        let Some(stopped) = stopped else {
            return Ok(());
        };
        {
            let mut st = self.shared.state.lock();
            st.closing = true;
            self.shared.wake.notify_one();
        }
        self.shared.room.notify_waiters();
        stopped.await.map_err(|_| BackendError::Closed)
    }
}

/// A repeat of a key whose record is in the log: the original's receipt,
/// once that record is durable.
fn duplicate_once_durable(
    original: Arc<[u8]>,
    wait: oneshot::Receiver<Outcome>,
) -> Durable<PublishOnce> {
    Box::pin(async move {
        outcome(wait.await)?;
        Ok(PublishOnce::Duplicate(original.to_vec()))
    })
}

/// A publisher's outcome as a backend result.
fn outcome(received: Result<Outcome, oneshot::error::RecvError>) -> BackendResult<()> {
    match received {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BackendError::Other(e.to_string())),
        Err(_) => Err(BackendError::Closed),
    }
}

/// The writer's files.
struct Files {
    dir: PathBuf,
    active: File,
    active_base: u64,
    active_len: u64,
    sync: bool,
    /// Test hook (`FAIL_WRITES_ENV`): appends left before every write fails.
    fail_after: Option<u64>,
}

impl Files {
    /// Appends `bytes` and makes them durable; on failure the segment is
    /// cut back to where it was, so that nothing of a batch reported
    /// failed can come back at the next start.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let result = match &mut self.fail_after {
            Some(0) => Err(std::io::Error::other("test hook: writes fail")),
            left => {
                if let Some(n) = left {
                    *n -= 1;
                }
                self.active.write_all(bytes).and_then(|()| {
                    if self.sync {
                        self.active.sync_data()
                    } else {
                        Ok(())
                    }
                })
            }
        };
        match result {
            Ok(()) => {
                self.active_len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = self.active.set_len(self.active_len) {
                    tracing::error!(error = %cut, "cutting a failed write off the log failed");
                }
                Err(e)
            }
        }
    }

    /// Starts the segment at `base`; returns the closed one's base.
    fn roll(&mut self, base: u64) -> BackendResult<u64> {
        let file = segment::open_append(&self.dir, base)?;
        segment::sync_dir(&self.dir)?;
        let closed = std::mem::replace(&mut self.active_base, base);
        self.active = file;
        self.active_len = 0;
        Ok(closed)
    }

    /// Saves the offsets the deletion relies on, then deletes `segments`.
    fn prune(&self, segments: &[u64], groups: &BTreeMap<String, u64>) -> BackendResult<()> {
        write_offsets(&self.dir, groups)?;
        for &base in segments {
            std::fs::remove_file(segment::path(&self.dir, base))?;
        }
        segment::sync_dir(&self.dir)
    }
}

/// What opening a topic's directory found.
struct Opened {
    /// Every record of every segment, in offset order.
    records: Vec<Record>,
    next_offset: u64,
    sealed: VecDeque<(u64, u64)>,
    active: File,
    active_base: u64,
    active_len: u64,
}

/// Reads the segments of `dir` (creating the first one, at offset 1, if
/// there is none), cutting a torn record off the last one.
fn recover(dir: &Path) -> BackendResult<Opened> {
    let mut bases = segment::list(dir)?;
    if bases.is_empty() {
        segment::open_append(dir, 1)?;
        segment::sync_dir(dir)?;
        bases.push(1);
    }
    let mut records: Vec<Record> = Vec::new();
    let mut sealed = VecDeque::new();
    let mut next_offset = bases[0];
    let last_base = bases[bases.len() - 1];
    for &base in &bases {
        let mut file = segment::open_append(dir, base)?;
        let scan = segment::read_from(&mut file, 0, usize::MAX, u64::MAX)?;
        let is_last = base == last_base;
        if scan.torn && !is_last {
            return Err(segment::corrupt(dir, base, scan.end));
        }
        let ordered = scan
            .records
            .first()
            .is_none_or(|r| r.offset >= base.max(next_offset))
            && scan.records.windows(2).all(|w| w[0].offset < w[1].offset);
        if !ordered {
            return Err(segment::corrupt(dir, base, 0));
        }
        next_offset = next_offset.max(base);
        if let Some(r) = scan.records.last() {
            next_offset = r.offset + 1;
        }
        records.extend(scan.records);
        if !is_last {
            sealed.push_back((base, next_offset - 1));
            continue;
        }
        if scan.torn {
            tracing::warn!(
                segment = %segment::path(dir, base).display(),
                at = scan.end,
                "cutting a torn record off the end of the log"
            );
            file.set_len(scan.end)?;
            file.sync_all()?;
        }
        return Ok(Opened {
            records,
            next_offset,
            sealed,
            active: file,
            active_base: base,
            active_len: scan.end,
        });
    }
    Err(BackendError::Other(format!(
        "no log segment in {}",
        dir.display()
    )))
}

/// Writes a new topic directory `dir` holding `records` (ascending
/// offsets from `first` on, none if empty: the log then starts at
/// `first`) and the committed `offsets`: how older layouts move in.
pub fn write_migrated(
    dir: &Path,
    first: u64,
    records: &[Record],
    offsets: &[(String, u64)],
) -> BackendResult<()> {
    std::fs::create_dir_all(dir)?;
    let mut bytes = Vec::new();
    for r in records {
        segment::encode(&mut bytes, r.offset, &r.key, &r.receipt, &r.payload);
    }
    let mut file = segment::open_append(dir, first.max(1))?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    write_offsets(dir, &offsets.iter().cloned().collect())?;
    segment::sync_dir(dir)
}

/// The committed offsets saved in `dir` (none if never saved).
fn read_offsets(dir: &Path) -> BackendResult<BTreeMap<String, u64>> {
    let text = match std::fs::read_to_string(dir.join(OFFSETS_FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.into()),
    };
    let mut groups = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = line
            .rsplit_once(' ')
            .and_then(|(group, offset)| Some((group.to_string(), offset.parse().ok()?)));
        let Some((group, offset)) = parsed else {
            return Err(BackendError::Other(format!(
                "{} has an unreadable line {line:?}",
                dir.join(OFFSETS_FILE).display()
            )));
        };
        groups.insert(group, offset);
    }
    Ok(groups)
}

/// Saves the committed offsets (a new file renamed over the old one).
fn write_offsets(dir: &Path, groups: &BTreeMap<String, u64>) -> BackendResult<()> {
    let text: String = groups.iter().map(|(g, o)| format!("{g} {o}\n")).collect();
    let staging = dir.join(format!("{OFFSETS_FILE}.new"));
    {
        let mut f = File::create(&staging)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&staging, dir.join(OFFSETS_FILE))?;
    Ok(())
}

/// Where a consumer reading the segments back got to.
#[derive(Clone, Copy)]
struct Cursor {
    base: u64,
    byte: u64,
    /// The last offset read.
    offset: u64,
}

pub struct LogConsumer {
    shared: Arc<Shared>,
    group: String,
    /// Last offset handed out by `poll`.
    position: u64,
    /// Last offset committed.
    committed: u64,
    positions: Option<Arc<dyn AppliedPositions>>,
    head: watch::Receiver<u64>,
    cursor: Option<Cursor>,
}

impl LogConsumer {
    /// Marks everything up to `offset` processed for good: records up to
    /// it may be pruned.
    pub fn commit_offset(&mut self, offset: u64) {
        if offset > self.committed {
            self.committed = offset;
            self.shared.commit(&self.group, offset);
        }
    }

    /// The offset of the last record polled (or resumed after).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Up to `max` durable records after `position`, from memory if the
    /// tail still holds them, else from the segments.
    async fn read_after(&mut self, max: usize, head: u64) -> BackendResult<Vec<TopicRecord>> {
        if let Some(records) = self.shared.tail.after(self.position, max) {
            self.cursor = None;
            return Ok(records);
        }
        let (dir, position, cursor) = (self.shared.dir.clone(), self.position, self.cursor);
        let (records, cursor) =
            tokio::task::spawn_blocking(move || read_segments(&dir, position, max, head, cursor))
                .await
                .map_err(|e| BackendError::Other(format!("log read failed: {e}")))??;
        self.cursor = cursor;
        Ok(records)
    }
}

/// Records read from a segment at once while looking for a position.
const READ_CHUNK: usize = 4096;

/// Reads up to `max` records after `position` and through `head` from the
/// segments, continuing at `cursor` if it is where `position` is. The
/// cursor returned is after the last record returned.
fn read_segments(
    dir: &Path,
    position: u64,
    max: usize,
    head: u64,
    cursor: Option<Cursor>,
) -> BackendResult<(Vec<TopicRecord>, Option<Cursor>)> {
    let bases = segment::list(dir)?;
    let mut at = match cursor.filter(|c| c.offset == position && bases.contains(&c.base)) {
        Some(c) => c,
        None => {
            // The segment that holds position + 1 (or the oldest one left).
            let index = bases.partition_point(|&b| b <= position + 1).max(1) - 1;
            let Some(&base) = bases.get(index) else {
                return Ok((Vec::new(), None));
            };
            Cursor {
                base,
                byte: 0,
                offset: 0,
            }
        }
    };
    let mut out = Vec::new();
    let first_base = at.base;
    for &base in bases.iter().filter(|&&b| b >= first_base) {
        if base != at.base {
            at = Cursor {
                base,
                byte: 0,
                offset: at.offset,
            };
        }
        let mut file = File::open(segment::path(dir, base))?;
        loop {
            let scan = segment::read_from(&mut file, at.byte, READ_CHUNK, head)?;
            let read = scan.records.len();
            for (r, end) in scan.records.into_iter().zip(scan.ends) {
                if out.len() >= max {
                    break;
                }
                (at.byte, at.offset) = (end, r.offset);
                if r.offset > position {
                    out.push(TopicRecord {
                        position: self::position(r.offset),
                        payload: r.payload,
                    });
                }
            }
            if out.len() >= max || at.offset >= head || read < READ_CHUNK {
                break;
            }
        }
        if out.len() >= max || at.offset >= head {
            break;
        }
    }
    let cursor = (at.offset > 0).then_some(at);
    Ok((out, cursor))
}

#[async_trait]
impl TopicConsumer for LogConsumer {
    async fn poll(&mut self, max: usize) -> BackendResult<Vec<TopicRecord>> {
        loop {
            let head = *self.head.borrow_and_update();
            if head > self.position {
                let records = self.read_after(max.max(1), head).await?;
                if let Some(last) = records.last() {
                    self.position = last.position.offset;
                    return Ok(records);
                }
                // Offsets up to head were pruned or cut off: move on.
                self.position = head;
            }
            if self.head.changed().await.is_err() {
                return Err(BackendError::Closed);
            }
        }
    }

    /// Only what the documents hold durably may leave the log.
    async fn commit(&mut self, at: Checkpoint) -> BackendResult<()> {
        let through = match &self.positions {
            Some(p) => p.durable(&self.group).min(at.last),
            None => at.last,
        };
        self.commit_offset(through);
        Ok(())
    }

    fn lag(&self) -> u64 {
        self.head.borrow().saturating_sub(self.position)
    }

    fn assigned(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
