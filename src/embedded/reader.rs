//! A small pool of read-only connections; queries run on the blocking pool
//! so SQLite never stalls the async workers. Reads see every write released
//! before them, committed or not (see `Writer::settle`).

use std::path::PathBuf;

use parking_lot::Mutex;
use rusqlite::Connection;

use super::{schema, Writer};
use crate::error::{BackendError, BackendResult};

/// Idle connections kept; more are opened under load and dropped after.
const MAX_IDLE: usize = 8;

pub struct ReadPool {
    path: PathBuf,
    /// The database's writer, whose released writes a read must see.
    writer: Writer,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    pub fn new(path: PathBuf, writer: Writer) -> ReadPool {
        ReadPool {
            path,
            writer,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` with a read connection on the blocking pool.
    pub async fn read<R, F>(self: &std::sync::Arc<Self>, f: F) -> BackendResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> BackendResult<R> + Send + 'static,
    {
        self.writer.settle().await?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || pool.read_here(f))
            .await
            .map_err(|e| BackendError::Other(format!("read task failed: {e}")))?
    }

    /// Runs `f` with a read connection on the calling thread, on what is
    /// committed (without `read`'s wait for released writes). Besides
    /// `read` itself, only for point lookups on an index: microseconds from
    /// SQLite's cache, where the trip to the blocking pool and back cost
    /// more (two thread wake-ups per call showed in profiles).
    pub fn read_here<R>(
        &self,
        f: impl FnOnce(&Connection) -> BackendResult<R>,
    ) -> BackendResult<R> {
        let conn = match self.idle.lock().pop() {
            Some(c) => c,
            None => schema::open_read(&self.path)?,
        };
        let result = f(&conn);
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        result
    }
}
