//! The single writer: a dedicated thread that owns the write connection and
//! commits every queued job of a burst in one transaction (group commit).
//! Each job runs inside a savepoint, so one failing job does not undo the
//! others. A job's result is released after the commit succeeds, except for
//! replayable jobs (see `Writer::apply`), released as soon as they ran.

use rusqlite::Connection;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use crate::error::{BackendError, BackendResult};

/// Called after the batch's commit with its outcome (Err = the commit failed).
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;

/// What a job left once it ran inside the transaction.
enum Ran {
    /// Whether it succeeded, and what to do once the commit is known.
    AwaitsCommit(bool, Completion),
    /// Its result is released as soon as the savepoint ends (`read_now`,
    /// `apply`); `wrote` says whether it leaves writes to commit.
    ReleaseNow {
        ok: bool,
        wrote: bool,
        release: Completion,
    },
    /// Close the database once the transaction commits (`Writer::close`);
    /// told when done.
    Close(oneshot::Sender<()>),
}

type Job = Box<dyn FnOnce(&Connection) -> Ran + Send>;

/// How long a transaction holding only replayable writes stays open for
/// more: every page a commit dirtied is written to the WAL in full, and the
/// hot pages (each user's last inbox leaves) are dirtied again and again,
/// so a longer transaction writes each of them once instead of per message.
/// But its commit holds the writer (and the pushes waiting on it) for
/// longer. Measured p99 at 2,500 / 7,000 / 8,500 msg/s: 10 ms: 7.3 / 36 /
/// -; 20 ms: 7.5 / 27 / 70; 50 ms: 9.2 / 41 / 106.
const LINGER: Duration = Duration::from_millis(20);

/// How long a writer waits without work before it shrinks its WAL
/// (`shrink_wal`).
const SHRINK_WHEN_IDLE: Duration = Duration::from_secs(30);

/// How long a closing writer keeps trying to empty its WAL, and how long it
/// pauses between tries.
const CLOSE_WAL_WITHIN: Duration = Duration::from_secs(5);
const CLOSE_WAL_PAUSE: Duration = Duration::from_millis(10);

/// A WAL file no longer than this is left as it is.
const SHRINK_ABOVE_BYTES: u64 = 4 * 1024 * 1024;

/// How long shrinking waits for readers to leave the WAL before it tries
/// again at the next idle spell (the writer's jobs wait meanwhile).
const SHRINK_BUSY_TIMEOUT: Duration = Duration::from_millis(100);

/// Queued jobs waiting for the writer; the bound is the backpressure.
const QUEUE_DEPTH: usize = 16 * 1024;

/// A cheap handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    rollbacks: Arc<AtomicU64>,
    /// Set while the open transaction holds released, uncommitted writes.
    uncommitted: Arc<AtomicBool>,
    /// `apply_detached` jobs queued and not run yet.
    detached: Arc<AtomicUsize>,
    db: &'static str,
}

impl Writer {
    /// Starts the writer thread of database `db` (a metric label). When
    /// `finish_checkpoint` is raised, the writer completes the WAL
    /// checkpoint after its next commit (see `finish_checkpoint`).
    pub fn start(
        conn: Connection,
        db: &'static str,
        batch_max: usize,
        finish_checkpoint: Arc<AtomicBool>,
    ) -> BackendResult<Writer> {
        let timing = Timing {
            linger: LINGER,
            shrink_when_idle: SHRINK_WHEN_IDLE,
        };
        Writer::spawn(conn, db, batch_max, timing, finish_checkpoint)
    }

    fn spawn(
        conn: Connection,
        db: &'static str,
        batch_max: usize,
        timing: Timing,
        finish_checkpoint: Arc<AtomicBool>,
    ) -> BackendResult<Writer> {
        let cannot = |e: std::io::Error| BackendError::Other(format!("cannot start writer: {e}"));
        // A timer for lingering: a tokio channel has no blocking receive
        // with a timeout, but a current-thread runtime can wait on one.
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(cannot)?;
        let (jobs, rx) = mpsc::channel::<Job>(QUEUE_DEPTH);
        let rollbacks = Arc::new(AtomicU64::new(0));
        let uncommitted = Arc::new(AtomicBool::new(false));
        let state = WriterState {
            db,
            batch_max: batch_max.max(1),
            timing,
            timer,
            rollbacks: rollbacks.clone(),
            uncommitted: uncommitted.clone(),
            finish_checkpoint,
        };
        std::thread::Builder::new()
            .name(format!("writer-{db}"))
            .spawn(move || run(conn, rx, &state))
            .map_err(cannot)?;
        Ok(Writer {
            jobs,
            rollbacks,
            uncommitted,
            detached: Arc::default(),
            db,
        })
    }

    /// How many jobs (or whole batches) were rolled back so far. Jobs that
    /// cache what they wrote compare it with the count of their last run:
    /// any change means the cache may hold writes that never committed.
    /// (Raised on the writer thread before the next job runs.)
    pub fn rollbacks(&self) -> u64 {
        self.rollbacks.load(Ordering::Acquire)
    }

    /// Queues `f`; the returned receiver yields its result once committed.
    /// `after_commit` runs on the writer thread right after a successful
    /// commit (used to wake topic consumers).
    pub async fn enqueue<R, F, A>(
        &self,
        f: F,
        after_commit: A,
    ) -> BackendResult<oneshot::Receiver<BackendResult<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> BackendResult<R> + Send + 'static,
        A: FnOnce(&R) + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let completion: Completion = Box::new(move |commit| {
                let outcome = match (commit, result) {
                    (Ok(()), Ok(value)) => {
                        after_commit(&value);
                        Ok(value)
                    }
                    (Ok(()), Err(e)) => Err(e),
                    (Err(msg), _) => Err(BackendError::Other(msg)),
                };
                let _ = tx.send(outcome);
            });
            Ran::AwaitsCommit(ok, completion)
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| BackendError::Closed)?;
        Ok(rx)
    }

    /// Runs the read `f` on the writer thread and answers as soon as it ran,
    /// without waiting for the commit: for hot lookups, where the writer's
    /// warm cache beats a pooled reader and its trip through the blocking
    /// pool. It sees the writes of the open batch too (they commit, or the
    /// whole batch fails).
    pub async fn read_now<R, F>(&self, f: F) -> BackendResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> BackendResult<R> + Send + 'static,
    {
        self.answer_when_ran(f, false).await
    }

    /// Runs the writes `f` and answers as soon as they ran, before they
    /// commit; the transaction may stay open for more (`LINGER`). Only for
    /// writes that can be replayed from a durable source (topic consumers,
    /// which save their applied position with them): if the commit fails,
    /// the process exits so that the restart replays them.
    pub async fn apply<R, F>(&self, f: F) -> BackendResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> BackendResult<R> + Send + 'static,
    {
        self.answer_when_ran(f, true).await
    }

    /// Queues the replayable writes `f` and answers once they are queued,
    /// for writes whose effects the caller announces before they ran (seqs
    /// assigned in memory). They run and commit in queue order, so a job
    /// queued after them sees them; a failure of theirs or of their commit
    /// exits the process, whose restart replays them (see `apply`).
    pub async fn apply_detached<F>(&self, f: F) -> BackendResult<()>
    where
        F: FnOnce(&Connection) -> BackendResult<()> + Send + 'static,
    {
        let (detached, db) = (self.detached.clone(), self.db);
        let job = released_when_ran(f, true, move |result| {
            detached.fetch_sub(1, Ordering::AcqRel);
            if let Err(e) = result {
                tracing::error!(db, error = %e, "detached writes failed");
                lost_released_writes(db);
            }
        });
        // Counted before it is queued: `settle` must not miss it.
        self.detached.fetch_add(1, Ordering::AcqRel);
        if self.jobs.send(job).await.is_err() {
            self.detached.fetch_sub(1, Ordering::AcqRel);
            return Err(BackendError::Closed);
        }
        Ok(())
    }

    /// Runs `f` and answers once its savepoint ended; `writes` says whether
    /// it leaves writes to commit (and a failure to roll back).
    async fn answer_when_ran<R, F>(&self, f: F, writes: bool) -> BackendResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> BackendResult<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = released_when_ran(f, writes, move |result| {
            let _ = tx.send(result);
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| BackendError::Closed)?;
        rx.await.map_err(|_| BackendError::Closed)?
    }

    /// Commits what `apply` released and `apply_detached` queued so far,
    /// if anything, so that readers on other connections see it.
    pub async fn settle(&self) -> BackendResult<()> {
        // Detached jobs first: one flags `uncommitted` before it leaves.
        if self.detached.load(Ordering::Acquire) > 0 || self.uncommitted.load(Ordering::Acquire) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Runs `f` in the next group commit and waits for the commit.
    pub async fn write<R, F>(&self, f: F) -> BackendResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> BackendResult<R> + Send + 'static,
    {
        let rx = self.enqueue(f, |_| {}).await?;
        rx.await.map_err(|_| BackendError::Closed)?
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) -> BackendResult<()> {
        self.write(|_| Ok(())).await
    }

    /// Commits everything queued before this call, empties the WAL into the
    /// database file and stops the writer: a stopped node leaves a compact
    /// data directory, which its next start opens without reading a WAL.
    /// Jobs queued after it fail with `Closed`; closing again is a no-op.
    pub async fn close(&self) -> BackendResult<()> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |_| Ran::Close(tx));
        if self.jobs.send(job).await.is_err() {
            return Ok(()); // closed before
        }
        // Dropped unanswered only if a close queued earlier ended the
        // writer first: closed all the same.
        let _ = rx.await;
        Ok(())
    }
}

/// A job running `f` whose outcome goes to `release` as soon as its
/// savepoint ended; `writes` says whether it leaves writes to commit (and
/// a failure to roll back).
fn released_when_ran<R, F>(
    f: F,
    writes: bool,
    release: impl FnOnce(BackendResult<R>) + Send + 'static,
) -> Job
where
    R: Send + 'static,
    F: FnOnce(&Connection) -> BackendResult<R> + Send + 'static,
{
    Box::new(move |conn| {
        let result = f(conn);
        let ok = !writes || result.is_ok();
        Ran::ReleaseNow {
            ok,
            wrote: writes && ok,
            release: Box::new(move |ended| release(ended.map_err(BackendError::Other).and(result))),
        }
    })
}

/// How long the writer waits, for more work or without any.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// How long a transaction of released writes stays open (`LINGER`).
    linger: Duration,
    /// Idle time after which the WAL is shrunk (`SHRINK_WHEN_IDLE`).
    shrink_when_idle: Duration,
}

/// The writer thread's settings and shared flags.
struct WriterState {
    db: &'static str,
    batch_max: usize,
    timing: Timing,
    timer: tokio::runtime::Runtime,
    rollbacks: Arc<AtomicU64>,
    uncommitted: Arc<AtomicBool>,
    finish_checkpoint: Arc<AtomicBool>,
}

/// Jobs run as they arrive inside one open transaction, which commits as
/// soon as the queue is empty (or `batch_max` jobs ran) and someone waits
/// for the commit: under load the queue refills during each commit, so
/// batches grow by themselves; an idle server commits at once. Only a
/// transaction holding nothing but released replayable writes lingers.
fn run(conn: Connection, mut rx: mpsc::Receiver<Job>, state: &WriterState) {
    // False once a transaction wrote: the WAL may have grown since.
    let mut shrunk = false;
    while let Some(first) = next_job(&conn, &mut rx, state, &mut shrunk) {
        shrunk = false;
        let started = Instant::now();
        let mut lingered = Duration::ZERO;
        let mut batch = Batch::begin(&conn, state);
        batch.run(first);
        while batch.jobs < state.batch_max && batch.closed.is_none() {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) if batch.may_linger() => {
                    let waiting = Instant::now();
                    let job = linger(&mut rx, state, started);
                    lingered += waiting.elapsed();
                    match job {
                        Some(job) => job,
                        None => break,
                    }
                }
                Err(TryRecvError::Empty) => break,
            };
            batch.run(job);
        }
        let size = batch.jobs;
        let closed = batch.commit();
        // The writer's work on the transaction, not its waits for more.
        let busy = started.elapsed().saturating_sub(lingered);
        metrics::histogram!("herald_store_commit_seconds", "db" => state.db)
            .record(busy.as_secs_f64());
        metrics::histogram!("herald_store_commit_batch_size", "db" => state.db).record(size as f64);
        if let Some(done) = closed {
            close_wal(&conn, state.db);
            let _ = done.send(());
            tracing::debug!(db = state.db, "writer closed");
            return;
        }
        if state.finish_checkpoint.swap(false, Ordering::AcqRel) {
            finish_checkpoint(&conn, state.db);
        }
    }
    tracing::debug!("writer stopped: every handle dropped");
}

/// Waits for the next job until the transaction begun at `started` has
/// lingered long enough; `None` when it is time to commit.
fn linger(rx: &mut mpsc::Receiver<Job>, state: &WriterState, started: Instant) -> Option<Job> {
    let left = state.timing.linger.checked_sub(started.elapsed())?;
    state
        .timer
        .block_on(async { tokio::time::timeout(left, rx.recv()).await })
        .ok()
        .flatten()
}

/// Waits for the next job (`None` once every handle is dropped). Idle for
/// `shrink_when_idle` with a WAL that may have grown, the writer shrinks it
/// first (`shrink_wal`), then waits on.
fn next_job(
    conn: &Connection,
    rx: &mut mpsc::Receiver<Job>,
    state: &WriterState,
    shrunk: &mut bool,
) -> Option<Job> {
    while !*shrunk {
        let idle = state.timing.shrink_when_idle;
        match state
            .timer
            .block_on(async { tokio::time::timeout(idle, rx.recv()).await })
        {
            Ok(job) => return job,
            Err(_) => {
                *shrunk = shrink_wal(conn, state.db, SHRINK_ABOVE_BYTES, SHRINK_BUSY_TIMEOUT);
            }
        }
    }
    rx.blocking_recv()
}

/// Gives back the disk a long WAL holds. Under load the WAL grows to its
/// start-over length (`schema::WAL_RESTART_FRAMES`: 1 GB for the
/// documents) and SQLite reuses the file from its start but never shrinks
/// it (nor does a process that stops without closing its connections).
/// An idle writer can afford a TRUNCATE checkpoint: it copies what is
/// left, waits briefly for readers to leave the WAL, and truncates it to
/// nothing. False if readers kept it busy (the next idle spell tries
/// again). A job that arrives meanwhile waits: 0.26 s for a 776 MB
/// documents WAL here, nearly all of it the `ftruncate` (0.21 s for 800 MB
/// on this ext4, mounted with `discard`). A WAL no longer than
/// `above_bytes` is left as it is; readers get `busy_timeout` to leave it.
/// A checkpointer pass under way makes it fail at once (SQLite never waits
/// for another checkpoint), also with false.
fn shrink_wal(
    conn: &Connection,
    db: &'static str,
    above_bytes: u64,
    busy_timeout: Duration,
) -> bool {
    let Some(wal) = conn.path().map(|p| super::schema::wal_path(p.as_ref())) else {
        return true;
    };
    match std::fs::metadata(&wal) {
        Ok(file) if file.len() > above_bytes => {}
        _ => return true,
    }
    let started = Instant::now();
    let result = conn.busy_timeout(busy_timeout).and_then(|()| {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
    });
    if let Err(e) = conn.busy_timeout(super::schema::BUSY_TIMEOUT) {
        tracing::warn!(error = %e, "cannot restore the writer's busy timeout");
    }
    match result {
        Ok(0) => {
            metrics::histogram!("herald_store_wal_shrink_seconds", "db" => db)
                .record(started.elapsed().as_secs_f64());
            true
        }
        Ok(_) => false,
        Err(e) if is_busy(&e) => false,
        Err(e) => {
            tracing::warn!(error = %e, db, "shrinking the WAL failed");
            true
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    matches!(e.sqlite_error_code(), Some(DatabaseBusy | DatabaseLocked))
}

/// Empties the WAL of a closing writer, trying again while the
/// checkpointer or readers keep it busy (for `CLOSE_WAL_WITHIN`): what is
/// left in the WAL is safe, only the next start's work and the disk it
/// holds are at stake.
fn close_wal(conn: &Connection, db: &'static str) {
    let deadline = Instant::now() + CLOSE_WAL_WITHIN;
    while !shrink_wal(conn, db, 0, SHRINK_BUSY_TIMEOUT) {
        if Instant::now() >= deadline {
            tracing::warn!(db, "closing with a WAL: it stayed busy");
            return;
        }
        std::thread::sleep(CLOSE_WAL_PAUSE);
    }
}

/// The WAL is reused only after a checkpoint that copied all of it, which
/// the checkpointer thread never achieves under sustained writes (frames
/// keep coming while it copies): the WAL grew by GBs and every page read
/// slowed with its index. Between two transactions the writer adds no
/// frames, so its own PASSIVE checkpoint completes, copying only what came
/// since the checkpointer's last pass (milliseconds of writes), and the
/// next transaction starts the WAL over.
fn finish_checkpoint(conn: &Connection, db: &'static str) {
    let started = Instant::now();
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
        Ok(_) => metrics::histogram!("herald_store_wal_restart_seconds", "db" => db)
            .record(started.elapsed().as_secs_f64()),
        Err(e) => tracing::warn!(error = %e, "finishing a checkpoint failed"),
    }
}

/// One open transaction: jobs run as they arrive, each in a savepoint so a
/// failing job rolls back only itself; results are released at commit.
struct Batch<'c> {
    conn: &'c Connection,
    state: &'c WriterState,
    /// False if BEGIN failed: each job's savepoint then commits on its own.
    in_transaction: bool,
    /// Jobs run so far.
    jobs: usize,
    /// Jobs waiting for the commit.
    completions: Vec<Completion>,
    /// Whether released writes (`Writer::apply`) await the commit.
    released_writes: bool,
    /// Set by a close job: the last transaction (`Writer::close`).
    closed: Option<oneshot::Sender<()>>,
}

impl<'c> Batch<'c> {
    fn begin(conn: &'c Connection, state: &'c WriterState) -> Batch<'c> {
        let in_transaction = match exec_cached(conn, "BEGIN IMMEDIATE") {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin a group commit; committing jobs one by one");
                false
            }
        };
        Batch {
            conn,
            state,
            in_transaction,
            jobs: 0,
            completions: Vec::new(),
            released_writes: false,
            closed: None,
        }
    }

    /// It holds released writes and nobody waits for it: it may stay open
    /// for more.
    fn may_linger(&self) -> bool {
        self.in_transaction && self.released_writes && self.completions.is_empty()
    }

    fn run(&mut self, job: Job) {
        self.jobs += 1;
        let conn = self.conn;
        if let Err(e) = exec_cached(conn, "SAVEPOINT job") {
            // Whatever the job does now cannot be undone alone: caches of
            // written state must be rebuilt from the database.
            self.state.rollbacks.fetch_add(1, Ordering::AcqRel);
            let msg = format!("cannot open a savepoint: {e}");
            match job(conn) {
                Ran::AwaitsCommit(_, done) => done(Err(msg)),
                Ran::ReleaseNow { release, .. } => release(Err(msg)),
                Ran::Close(done) => self.closed = Some(done),
            }
            return;
        }
        let ran = job(conn);
        let ok = match &ran {
            Ran::AwaitsCommit(ok, _) | Ran::ReleaseNow { ok, .. } => *ok,
            Ran::Close(_) => true,
        };
        let end = if ok {
            exec_cached(conn, "RELEASE job")
        } else {
            self.state.rollbacks.fetch_add(1, Ordering::AcqRel);
            exec_cached(conn, "ROLLBACK TO job").and_then(|_| exec_cached(conn, "RELEASE job"))
        };
        if let Err(e) = &end {
            tracing::error!(error = %e, "savepoint end failed");
        }
        match ran {
            Ran::AwaitsCommit(_, done) => self.completions.push(done),
            Ran::ReleaseNow { wrote, release, .. } => {
                if ok && wrote {
                    // Before the release: whoever learns of these writes
                    // must find them flagged (`Writer::settle`).
                    self.released_writes = true;
                    self.state.uncommitted.store(true, Ordering::Release);
                }
                release(end.map_err(|e| format!("savepoint end failed: {e}")));
            }
            Ran::Close(done) => self.closed = Some(done),
        }
    }

    /// Commits; returns the close job's answer if it was the last.
    fn commit(self) -> Option<oneshot::Sender<()>> {
        let committed = if self.in_transaction {
            exec_cached(self.conn, "COMMIT").map_err(|e| {
                self.state.rollbacks.fetch_add(1, Ordering::AcqRel);
                let _ = exec_cached(self.conn, "ROLLBACK");
                tracing::error!(error = %e, "group commit failed");
                format!("commit failed: {e}")
            })
        } else {
            Ok(())
        };
        if committed.is_err() && self.released_writes {
            lost_released_writes(self.state.db);
        }
        self.state.uncommitted.store(false, Ordering::Release);
        for done in self.completions {
            done(committed.clone());
        }
        self.closed
    }
}

/// A commit failed after `Writer::apply` had released its writes: consumers
/// already acted on them (pushed the messages). They are replayable, so the
/// process stops and its restart replays them from the topics, rather than
/// serve on with documents missing what was announced (the same reasoning
/// as PostgreSQL's panic on a failed fsync).
fn lost_released_writes(db: &str) -> ! {
    tracing::error!(
        db,
        "a commit of applied topic records failed; exiting so that a restart replays them"
    );
    std::process::exit(74)
}

/// Runs a parameterless statement through the statement cache (savepoints
/// run once per job: parsing them each time would show in profiles).
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (tempfile::TempDir, Writer, std::path::PathBuf) {
        lingering_writer(LINGER)
    }

    fn lingering_writer(linger: Duration) -> (tempfile::TempDir, Writer, std::path::PathBuf) {
        writer_with(Timing {
            linger,
            shrink_when_idle: SHRINK_WHEN_IDLE,
        })
    }

    fn writer_with(timing: Timing) -> (tempfile::TempDir, Writer, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = super::super::schema::open_write(&path).unwrap();
        conn.execute_batch("CREATE TABLE t(v INTEGER UNIQUE)")
            .unwrap();
        let w = Writer::spawn(conn, "test", 64, timing, Arc::default()).unwrap();
        (dir, w, path)
    }

    /// A writer that shrinks its WAL after 100 ms without work.
    fn quickly_shrinking_writer() -> (tempfile::TempDir, Writer, std::path::PathBuf) {
        writer_with(Timing {
            linger: LINGER,
            shrink_when_idle: Duration::from_millis(100),
        })
    }

    fn wal_len(path: &std::path::Path) -> u64 {
        std::fs::metadata(super::super::schema::wal_path(path))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Commits 5,000 rows of 1,000 bytes: a WAL of about 10 MB.
    async fn grow_wal(w: &Writer, path: &std::path::Path) {
        w.write(|c| {
            c.execute_batch(
                "CREATE TABLE blobs(b BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
                 INSERT INTO blobs SELECT zeroblob(1000) FROM n;",
            )?;
            Ok(())
        })
        .await
        .unwrap();
        assert!(wal_len(path) > SHRINK_ABOVE_BYTES, "{}", wal_len(path));
    }

    /// Waits (up to 5 s) for the WAL to be truncated to nothing.
    async fn wal_shrunk(path: &std::path::Path) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while wal_len(path) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        wal_len(path) == 0
    }

    fn blob_rows(path: &std::path::Path) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn an_idle_writer_shrinks_a_long_wal_and_keeps_every_row() {
        let (_dir, w, path) = quickly_shrinking_writer();
        grow_wal(&w, &path).await;
        assert!(
            wal_shrunk(&path).await,
            "WAL still {} bytes",
            wal_len(&path)
        );
        assert_eq!(blob_rows(&path), 5000);
        // It writes on as before.
        w.write(|c| Ok(c.execute("INSERT INTO t(v) VALUES (1)", [])?))
            .await
            .unwrap();
        assert!(wal_len(&path) > 0);
    }

    #[tokio::test]
    async fn close_commits_empties_the_wal_and_refuses_later_jobs() {
        let (_dir, w, path) = writer();
        grow_wal(&w, &path).await;
        // Queued, not awaited: close commits what was queued before it.
        let queued = w
            .enqueue(
                |c| Ok(c.execute("INSERT INTO t(v) VALUES (7)", [])?),
                |_| {},
            )
            .await
            .unwrap();
        w.close().await.unwrap();
        assert_eq!(queued.await.unwrap().unwrap(), 1);
        assert_eq!(wal_len(&path), 0, "close leaves the WAL empty");
        assert_eq!(blob_rows(&path), 5000);
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn.query_row("SELECT v FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(v, 7);

        let late = w.write(|c| Ok(c.execute("INSERT INTO t(v) VALUES (8)", [])?));
        assert!(matches!(late.await, Err(BackendError::Closed)));
        w.close().await.expect("closing again is a no-op");
    }

    #[tokio::test]
    async fn a_reader_in_the_wal_holds_off_the_shrink_until_it_leaves() {
        let (_dir, w, path) = quickly_shrinking_writer();
        grow_wal(&w, &path).await;
        let reader = super::super::schema::open_read(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 5000);
        // Several idle spells, each giving up after its busy timeout.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(wal_len(&path) > SHRINK_ABOVE_BYTES, "shrunk under a reader");
        reader.execute_batch("COMMIT").unwrap();
        assert!(
            wal_shrunk(&path).await,
            "WAL still {} bytes",
            wal_len(&path)
        );
        assert_eq!(blob_rows(&path), 5000);
    }

    #[tokio::test]
    async fn a_failing_job_does_not_undo_its_batch_neighbours() {
        let (_dir, w, path) = writer();
        let mut pending = Vec::new();
        for v in [1, 2, 1, 3] {
            let rx = w
                .enqueue(
                    move |c| Ok(c.execute("INSERT INTO t(v) VALUES(?)", [v])?),
                    |_| {},
                )
                .await
                .unwrap();
            pending.push(rx);
        }
        let mut results = Vec::new();
        for rx in pending {
            results.push(rx.await.unwrap().is_ok());
        }
        assert_eq!(results, vec![true, true, false, true]);
        assert_eq!(w.rollbacks(), 1, "caches of written state learn of it");
        let conn = Connection::open(path).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn after_commit_runs_only_on_success() {
        let (_dir, w, _path) = writer();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        w.enqueue(
            |_| Ok(1),
            move |_| {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            },
        )
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap();
        let h = hits.clone();
        let failed = w
            .enqueue(
                |_| Err::<(), _>(BackendError::Other("no".into())),
                move |_| {
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                },
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(failed.is_err());
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_finished_checkpoint_lets_the_wal_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = super::super::schema::open_write(&path).unwrap();
        conn.execute_batch("CREATE TABLE t(v BLOB)").unwrap();
        let finish = Arc::new(AtomicBool::new(false));
        let w = Writer::start(conn, "test", 64, finish.clone()).unwrap();
        let insert = |w: &Writer| {
            let w = w.clone();
            async move {
                w.write(|c| Ok(c.execute("INSERT INTO t(v) VALUES (zeroblob(2000))", [])?))
                    .await
                    .unwrap();
            }
        };
        for _ in 0..100 {
            insert(&w).await;
        }
        let before = wal_len(&path);
        for _ in 0..50 {
            insert(&w).await;
        }
        let grown = wal_len(&path);
        assert!(grown > before, "without a checkpoint the WAL grows");
        finish.store(true, Ordering::Release);
        insert(&w).await; // the writer checkpoints after this commit...
        let finished = wal_len(&path);
        for _ in 0..50 {
            insert(&w).await; // ...and these reuse the WAL from its start
        }
        assert_eq!(
            wal_len(&path),
            finished,
            "the WAL started over instead of growing"
        );
        assert!(!finish.load(Ordering::Acquire));
    }

    fn count(path: &std::path::Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn applied_writes_are_answered_before_their_commit_and_read_after_it() {
        // A linger no test run reaches: only a read can end the transaction.
        let linger = Duration::from_secs(600);
        let (_dir, w, path) = lingering_writer(linger);
        let pool = Arc::new(super::super::ReadPool::new(path.clone(), w.clone()));
        let started = Instant::now();
        for v in 1..=3 {
            w.apply(move |c| Ok(c.execute("INSERT INTO t(v) VALUES(?)", [v])?))
                .await
                .unwrap();
        }
        assert!(
            started.elapsed() < linger,
            "answered without waiting for the lingering commit"
        );
        assert_eq!(count(&path), 0, "answered before the commit");
        // A pooled read commits what was released before it, then sees it.
        let seen: i64 = pool
            .read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(seen, 3);
        assert_eq!(count(&path), 3, "committed, not only visible to the writer");
        w.apply(|c| Ok(c.execute("INSERT INTO t(v) VALUES(4)", [])?))
            .await
            .unwrap();
        w.settle().await.unwrap();
        assert_eq!(count(&path), 4, "settle commits released writes");
    }

    #[tokio::test]
    async fn a_failing_applied_write_is_rolled_back_alone() {
        let (_dir, w, path) = writer();
        let insert = |v: i64| {
            let w = w.clone();
            async move {
                w.apply(move |c| Ok(c.execute("INSERT INTO t(v) VALUES(?)", [v])?))
                    .await
            }
        };
        assert!(insert(1).await.is_ok());
        assert!(insert(1).await.is_err(), "the unique constraint fails it");
        assert!(insert(2).await.is_ok());
        assert_eq!(w.rollbacks(), 1);
        w.flush().await.unwrap();
        assert_eq!(count(&path), 2);
    }

    #[tokio::test]
    async fn a_lingering_transaction_commits_by_itself() {
        let (_dir, w, path) = lingering_writer(Duration::from_millis(50));
        w.apply(|c| Ok(c.execute("INSERT INTO t(v) VALUES(1)", [])?))
            .await
            .unwrap();
        // The row is visible the moment COMMIT returns, a moment before the
        // writer clears the flag: wait for both.
        let deadline = Instant::now() + Duration::from_secs(10);
        while count(&path) == 0 || w.uncommitted.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "never committed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(&path), 1);
    }
}
