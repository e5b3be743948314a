//! Copies the WAL back into the database file from its own thread. A
//! PASSIVE checkpoint never blocks the writer or readers; once it has
//! copied everything, the writer's next commit starts the WAL over, so the
//! file stays small without any commit paying for a checkpoint.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::schema;
use crate::error::{BackendError, BackendResult};

/// How often the WAL is checked.
const EVERY: Duration = Duration::from_millis(200);

pub fn start(path: &Path) -> BackendResult<()> {
    let conn = schema::open_checkpointer(path)?;
    std::thread::Builder::new()
        .name("herald-checkpoint".into())
        .spawn(move || run(conn))
        .map_err(|e| BackendError::Other(format!("cannot start checkpointer: {e}")))?;
    Ok(())
}

fn run(conn: Connection) {
    loop {
        std::thread::sleep(EVERY);
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match result {
            Ok((wal_frames, copied)) => {
                metrics::gauge!("herald_store_wal_frames").set(wal_frames as f64);
                metrics::gauge!("herald_store_wal_backlog_frames")
                    .set((wal_frames - copied).max(0) as f64);
            }
            Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
        }
    }
}
