//! Copies the WAL back into the database file from its own thread. A
//! PASSIVE checkpoint never blocks the writer or readers; once it has
//! copied everything, the writer's next commit starts the WAL over, so the
//! file stays small without any commit paying for a checkpoint.
//!
//! The documents database commits without fsync (`synchronous=NORMAL`); its
//! checkpointer is also what makes it durable: it reads the consumers'
//! applied positions, fsyncs the WAL, and only then publishes those
//! positions as durable. Topics keep every record after the durable
//! position, so a power loss can only cost re-applying them.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use rusqlite::Connection;

use super::schema;
use crate::error::{BackendError, BackendResult};

/// How soon the WAL is checked again while the last checkpoint left frames
/// behind (the writer's share of the work stays small).
const BEHIND: Duration = Duration::from_millis(10);

/// How often the WAL is checked. Measured at 2,500 msg/s, p99
/// send-to-receive was about 7 ms with 50 ms, 10 ms with 200 ms and 80 ms
/// with 5 s; but near saturation (7,000 msg/s) 50 ms copied the same hot
/// pages so often that p99 went from about 100 ms to 250-400 ms.
const EVERY: Duration = Duration::from_millis(200);

/// Applied positions (see `applied_positions`) that are on disk, by consumer.
#[derive(Default)]
pub struct DurablePositions(RwLock<HashMap<String, u64>>);

impl DurablePositions {
    pub fn get(&self, consumer: &str) -> u64 {
        self.0.read().get(consumer).copied().unwrap_or(0)
    }

    fn publish(&self, positions: Vec<(String, u64)>) {
        let mut map = self.0.write();
        for (consumer, position) in positions {
            let entry = map.entry(consumer).or_default();
            *entry = (*entry).max(position);
        }
    }
}

/// Starts the documents' checkpointer, which also tracks the durable
/// applied positions.
pub fn start(
    path: &Path,
    finish: Arc<AtomicBool>,
    durable: Arc<DurablePositions>,
) -> BackendResult<()> {
    let (db, restart_frames) = (schema::LABEL, schema::WAL_RESTART_FRAMES);
    let conn = schema::open_checkpointer(path)?;
    let files = Files::of(path);
    std::thread::Builder::new()
        .name(format!("ckpt-{db}"))
        .spawn(move || {
            // Its bursts of copying compete for the two cores with the
            // threads a send waits on: p99 send-to-receive at 2,500 msg/s was 6 ms
            // with no checkpointer at all, 7.5-9.4 ms with it, 6.7-7.9 ms with it
            // idle-only (it still keeps up: no backlog at 7,000 msg/s).
            crate::sys::run_when_idle();
            run(conn, db, restart_frames, &finish, &durable, &files)
        })
        .map_err(|e| BackendError::Other(format!("cannot start checkpointer: {e}")))?;
    Ok(())
}

fn run(
    conn: Connection,
    db: &'static str,
    restart_frames: i64,
    finish: &AtomicBool,
    durable: &DurablePositions,
    files: &Files,
) {
    let mut pause = EVERY;
    let mut synced = Instant::now();
    loop {
        std::thread::sleep(pause);
        // Every EVERY, not at each pass: while behind, passes come every
        // BEHIND, and an fsync each time was I/O for nothing.
        if synced.elapsed() >= EVERY {
            synced = Instant::now();
            match sync_positions(&conn, &files.wal) {
                Ok(positions) => durable.publish(positions),
                Err(e) => tracing::warn!(error = %e, "cannot make applied positions durable"),
            }
        }
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match result {
            Ok((wal_frames, copied)) => {
                pause = if copied < wal_frames { BEHIND } else { EVERY };
                // A long WAL: the writer finishes the copy between two
                // transactions, so that the WAL starts over.
                // (Not again while the writer has yet to act on it: an
                // idle writer would have it prepared every pass.)
                if wal_frames > restart_frames && !finish.load(Ordering::Acquire) {
                    prepare_restart(&conn, files);
                    finish.store(true, Ordering::Release);
                }
                metrics::gauge!("herald_store_wal_frames", "db" => db).set(wal_frames as f64);
                metrics::gauge!("herald_store_wal_backlog_frames", "db" => db)
                    .set((wal_frames - copied).max(0) as f64);
            }
            Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
        }
    }
}

/// The database file and its WAL.
struct Files {
    database: PathBuf,
    wal: PathBuf,
}

impl Files {
    fn of(database: &Path) -> Files {
        Files {
            database: database.to_path_buf(),
            wal: schema::wal_path(database),
        }
    }
}

/// Leaves the writer's finishing checkpoint (`writer::finish_checkpoint`)
/// little to write. That checkpoint fsyncs the WAL, copies the frames the
/// passes here have not, and fsyncs the database file; SQLite syncs the
/// database file only when a checkpoint completes, which these passes
/// never do under load, so that last `fdatasync` wrote everything they had
/// copied since the WAL last started over, on the writer's thread, with
/// every send queued behind it: 11-27 ms for the topics file at 5,000
/// msg/s, once every ~1.5 s, and longer the longer the server ran. Each
/// round here syncs both files and copies what came meanwhile; the second
/// round's syncs are short, and so is what is left to the writer.
fn prepare_restart(conn: &Connection, files: &Files) {
    for _ in 0..PREPARE_ROUNDS {
        for path in [&files.wal, &files.database] {
            if let Err(e) = File::open(path).and_then(|f| f.sync_data()) {
                tracing::warn!(error = %e, path = %path.display(), "cannot fsync");
                return;
            }
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpoint failed");
            return;
        }
    }
}

/// Rounds of `prepare_restart`: with one, the writer's `fdatasync` of the
/// topics file still took 2-6 ms; with two, 0.9-2.8 ms (`perf trace`).
const PREPARE_ROUNDS: usize = 2;

/// Reads the applied positions, then fsyncs the WAL: what was read is then
/// on disk (its frames are either in the synced WAL or, if the WAL started
/// over meanwhile, in the database file that a completed checkpoint synced).
fn sync_positions(conn: &Connection, wal: &Path) -> BackendResult<Vec<(String, u64)>> {
    let positions = {
        let mut stmt = conn.prepare_cached("SELECT consumer, position FROM applied_positions")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    if positions.is_empty() {
        return Ok(positions);
    }
    match File::open(wal) {
        Ok(f) => f.sync_data(),
        // No WAL file: everything is in the database file, synced by the
        // checkpoint that removed it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| BackendError::Other(format!("cannot fsync {}: {e}", wal.display())))?;
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of `t` in the database file alone, without its WAL (read from
    /// a copy of the file).
    fn rows_in_database_file(path: &Path, dir: &Path) -> i64 {
        let copy = dir.join("copy.db");
        let _ = std::fs::remove_file(&copy);
        std::fs::copy(path, &copy).unwrap();
        let c = Connection::open(&copy).unwrap();
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    fn insert(writer: &Connection, n: usize) {
        for _ in 0..n {
            writer
                .execute("INSERT INTO t VALUES (randomblob(300))", [])
                .unwrap();
        }
    }

    #[test]
    fn a_prepared_restart_leaves_every_committed_row_in_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let writer = schema::open_write(&path).unwrap();
        writer.execute_batch("CREATE TABLE t(v BLOB)").unwrap();
        let ckpt = schema::open_checkpointer(&path).unwrap();
        insert(&writer, 100);
        ckpt.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .unwrap();
        // Committed after the last pass: only in the WAL so far.
        insert(&writer, 100);
        assert_eq!(rows_in_database_file(&path, dir.path()), 100);

        prepare_restart(&ckpt, &Files::of(&path));
        assert_eq!(rows_in_database_file(&path, dir.path()), 200);
    }
}
