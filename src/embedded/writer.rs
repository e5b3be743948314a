//! The single writer: a dedicated thread that owns the write connection and
//! commits every queued job of a burst in one transaction (group commit).
//! Each job runs inside a savepoint, so one failing job does not undo the
//! others; every job's result is released only after the commit succeeds.

use rusqlite::Connection;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::error::{BackendError, BackendResult};

/// Called after the batch's commit with its outcome (Err = the commit failed).
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// Runs inside the transaction; says whether it succeeded and what to do
/// once the commit is known.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;

/// Queued jobs waiting for the writer; the bound is the backpressure.
const QUEUE_DEPTH: usize = 16 * 1024;

/// A cheap handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    rollbacks: Arc<AtomicU64>,
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
        let (jobs, rx) = mpsc::channel::<Job>(QUEUE_DEPTH);
        let rollbacks = Arc::new(AtomicU64::new(0));
        let counted = rollbacks.clone();
        std::thread::Builder::new()
            .name(format!("writer-{db}"))
            .spawn(move || run(conn, rx, db, batch_max.max(1), &counted, &finish_checkpoint))
            .map_err(|e| BackendError::Other(format!("cannot start writer: {e}")))?;
        Ok(Writer { jobs, rollbacks })
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
            (ok, completion)
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
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
            (true, Box::new(|_| {}))
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| BackendError::Closed)?;
        rx.await.map_err(|_| BackendError::Closed)?
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
}

/// Jobs run as they arrive inside one open transaction, which commits as
/// soon as the queue is empty (or `batch_max` jobs ran): under load the
/// queue refills during each commit, so batches grow by themselves; an
/// idle server commits at once. (A fixed linger was measured: it made
/// batches larger but not cheaper per job, and latency worse.)
fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    db: &'static str,
    batch_max: usize,
    rollbacks: &AtomicU64,
    checkpoint_wanted: &AtomicBool,
) {
    while let Some(first) = rx.blocking_recv() {
        let started = Instant::now();
        let mut batch = Batch::begin(&conn, rollbacks);
        batch.run(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => batch.run(job),
                Err(_) => break,
            }
        }
        let size = batch.len();
        batch.commit();
        metrics::histogram!("herald_store_commit_seconds", "db" => db)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("herald_store_commit_batch_size", "db" => db).record(size as f64);
        if checkpoint_wanted.swap(false, Ordering::AcqRel) {
            finish_checkpoint(&conn, db);
        }
    }
    tracing::debug!("writer stopped: every handle dropped");
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
    rollbacks: &'c AtomicU64,
    /// False if BEGIN failed: each job's savepoint then commits on its own.
    in_transaction: bool,
    completions: Vec<Completion>,
}

impl<'c> Batch<'c> {
    fn begin(conn: &'c Connection, rollbacks: &'c AtomicU64) -> Batch<'c> {
        let in_transaction = match exec_cached(conn, "BEGIN IMMEDIATE") {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin a group commit; committing jobs one by one");
                false
            }
        };
        Batch {
            conn,
            rollbacks,
            in_transaction,
            completions: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.completions.len()
    }

    fn run(&mut self, job: Job) {
        let conn = self.conn;
        let done = match exec_cached(conn, "SAVEPOINT job") {
            Ok(()) => {
                let (ok, done) = job(conn);
                let end = if ok {
                    exec_cached(conn, "RELEASE job")
                } else {
                    self.rollbacks.fetch_add(1, Ordering::AcqRel);
                    exec_cached(conn, "ROLLBACK TO job")
                        .and_then(|_| exec_cached(conn, "RELEASE job"))
                };
                if let Err(e) = end {
                    tracing::error!(error = %e, "savepoint end failed");
                }
                done
            }
            Err(e) => {
                // Whatever the job does now cannot be undone alone: caches
                // of written state must be rebuilt from the database.
                self.rollbacks.fetch_add(1, Ordering::AcqRel);
                let (_, done) = job(conn);
                let msg = format!("cannot open a savepoint: {e}");
                done(Err(msg));
                return;
            }
        };
        self.completions.push(done);
    }

    fn commit(self) {
        let committed = if self.in_transaction {
            exec_cached(self.conn, "COMMIT").map_err(|e| {
                self.rollbacks.fetch_add(1, Ordering::AcqRel);
                let _ = exec_cached(self.conn, "ROLLBACK");
                tracing::error!(error = %e, "group commit failed");
                format!("commit failed: {e}")
            })
        } else {
            Ok(())
        };
        for done in self.completions {
            done(committed.clone());
        }
    }
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn =
            super::super::schema::open_write(&path, super::super::schema::Role::Documents, false)
                .unwrap();
        conn.execute_batch("CREATE TABLE t(v INTEGER UNIQUE)")
            .unwrap();
        (
            dir,
            Writer::start(conn, "test", 64, Arc::default()).unwrap(),
            path,
        )
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
        let conn =
            super::super::schema::open_write(&path, super::super::schema::Role::Documents, false)
                .unwrap();
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
        let wal_bytes = || {
            std::fs::metadata(path.with_extension("db-wal"))
                .unwrap()
                .len()
        };
        for _ in 0..100 {
            insert(&w).await;
        }
        let before = wal_bytes();
        for _ in 0..50 {
            insert(&w).await;
        }
        let grown = wal_bytes();
        assert!(grown > before, "without a checkpoint the WAL grows");
        finish.store(true, Ordering::Release);
        insert(&w).await; // the writer checkpoints after this commit...
        for _ in 0..50 {
            insert(&w).await; // ...and these reuse the WAL from its start
        }
        assert_eq!(
            wal_bytes(),
            grown,
            "the WAL started over instead of growing"
        );
        assert!(!finish.load(Ordering::Acquire));
    }
}
