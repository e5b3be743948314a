//! Embedded backends under the data directory: the durable topics as
//! append-only logs (`topics/<name>/`, see `log`), and the documents in a
//! SQLite database in WAL mode (`herald.db`). Each has its own writer
//! thread that groups whatever is queued into one write (group commit), so
//! a burst of sends costs one fsync, not one per message, and the two
//! halves of the send path (accept into the topic, store into the inboxes)
//! run in parallel on two cores instead of queueing behind one writer.

mod bundle;
mod checkpointer;
mod log;
mod migrate;
pub mod page_cache;
mod presence;
mod reader;
mod schema;
mod seqs;
mod store;
mod wal_writes;
mod writer;

pub use bundle::open_backends;
pub use checkpointer::DurablePositions;
pub use log::{AppliedPositions, LogTopic};
pub use presence::{LocalPresence, LocalQuotas};
pub use reader::ReadPool;
pub use store::SqliteStore;
pub use wal_writes::FAIL_WRITES_ENV;
pub use writer::Writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::error::{BackendError, BackendResult};
use crate::service::backend::KeyHistory;

impl From<rusqlite::Error> for BackendError {
    fn from(e: rusqlite::Error) -> Self {
        BackendError::adapter("sqlite", e)
    }
}

/// The opened documents database: its writer thread, its checkpointer
/// thread and a pool of read connections.
#[derive(Clone)]
pub struct Database {
    pub writer: Writer,
    pub readers: Arc<ReadPool>,
    /// The consumers' applied positions known to be on disk.
    pub durable: Arc<DurablePositions>,
}

impl Database {
    fn open(path: &Path, batch_max: usize) -> BackendResult<Database> {
        let conn = schema::open_write(path)?;
        let finish_checkpoint = Arc::new(AtomicBool::new(false));
        let writer = Writer::start(conn, schema::LABEL, batch_max, finish_checkpoint.clone())?;
        let durable = Arc::new(DurablePositions::default());
        checkpointer::start(path, finish_checkpoint, durable.clone())?;
        let readers = Arc::new(ReadPool::new(path.to_path_buf(), writer.clone()));
        Ok(Database {
            writer,
            readers,
            durable,
        })
    }
}

/// The opened embedded backends.
#[derive(Clone)]
pub struct Embedded {
    /// `herald.db`: users, groups, sessions, messages, inboxes.
    pub documents: Database,
    /// `topics/`: one log directory per topic.
    topics_dir: PathBuf,
    durability_full: bool,
}

impl Embedded {
    /// Opens (creating if needed) `herald.db` and `topics/` in `data_dir`,
    /// moving the topics of an older layout into their logs first.
    pub fn open(
        data_dir: &Path,
        durability_full: bool,
        batch_max: usize,
    ) -> BackendResult<Embedded> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            BackendError::Other(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let topics_dir = data_dir.join("topics");
        migrate::sqlite_topics_to_logs(data_dir, &topics_dir)?;
        let documents = Database::open(&data_dir.join("herald.db"), batch_max)?;
        Ok(Embedded {
            documents,
            topics_dir,
            durability_full,
        })
    }

    /// Opens topic `name` (lowercase letters and `_`); `history` answers
    /// for the idempotency keys it no longer holds (none: it keeps none),
    /// and `positions` for where its consumers got to.
    pub fn open_topic(
        &self,
        name: &str,
        history: Option<Arc<dyn KeyHistory>>,
        positions: Option<Arc<dyn AppliedPositions>>,
    ) -> BackendResult<LogTopic> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(BackendError::Other(format!("invalid topic name {name:?}")));
        }
        let dir = self.topics_dir.join(name);
        let options = log::LogOptions {
            sync: self.durability_full,
            history,
            positions,
            fail_after_writes: wal_writes::writes_before_failure(
                dir.as_os_str().as_encoded_bytes(),
            ),
        };
        LogTopic::open(&dir, name, options)
    }
}

#[cfg(test)]
mod tests;
