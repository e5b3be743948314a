//! Embedded backends: two SQLite databases (WAL) under the data directory.
//! `topics.db` holds the durable topics (append logs, consumer offsets,
//! idempotency keys); `herald.db` holds the documents. Each has its own
//! writer thread that groups whatever is queued into one transaction (group
//! commit), so a burst of sends costs one fsync, not one per message, and
//! the two halves of the send path (accept into the topic, store into the
//! inboxes) commit in parallel on two cores instead of queueing behind one
//! writer.

mod checkpointer;
pub mod page_cache;
mod reader;
mod schema;
mod seqs;
mod store;
mod topic;
mod wal_writes;
mod writer;

pub use checkpointer::DurablePositions;
pub use reader::ReadPool;
pub use store::SqliteStore;
pub use topic::SqliteTopic;
pub use wal_writes::FAIL_WRITES_ENV;
pub use writer::Writer;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::error::{BackendError, BackendResult};

/// One opened database file: its writer thread, its checkpointer thread
/// and a pool of read connections.
#[derive(Clone)]
pub struct Database {
    pub writer: Writer,
    pub readers: Arc<ReadPool>,
    /// Documents only: the consumers' applied positions known to be on disk.
    pub durable: Arc<DurablePositions>,
}

impl Database {
    fn open(
        path: &Path,
        role: schema::Role,
        durability_full: bool,
        batch_max: usize,
    ) -> BackendResult<Database> {
        let conn = schema::open_write(path, role, durability_full)?;
        let finish_checkpoint = Arc::new(AtomicBool::new(false));
        let writer = Writer::start(conn, role.label(), batch_max, finish_checkpoint.clone())?;
        let durable = Arc::new(DurablePositions::default());
        let tracked = (role == schema::Role::Documents).then(|| durable.clone());
        checkpointer::start(path, role, finish_checkpoint, tracked)?;
        let readers = Arc::new(ReadPool::new(path.to_path_buf(), writer.clone()));
        Ok(Database {
            writer,
            readers,
            durable,
        })
    }
}

/// The opened embedded databases.
#[derive(Clone)]
pub struct Embedded {
    /// `herald.db`: users, groups, sessions, messages, inboxes.
    pub documents: Database,
    /// `topics.db`: topic logs, consumer offsets, idempotency keys.
    pub topics: Database,
}

impl Embedded {
    /// Opens (creating if needed) `herald.db` and `topics.db` in `data_dir`.
    pub fn open(
        data_dir: &Path,
        durability_full: bool,
        batch_max: usize,
    ) -> BackendResult<Embedded> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            BackendError::Other(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let documents_path = data_dir.join("herald.db");
        let topics_path = data_dir.join("topics.db");
        schema::migrate_topics_out(&documents_path, &topics_path)?;
        let documents = Database::open(
            &documents_path,
            schema::Role::Documents,
            durability_full,
            batch_max,
        )?;
        let topics = Database::open(
            &topics_path,
            schema::Role::Topics,
            durability_full,
            batch_max,
        )?;
        Ok(Embedded { documents, topics })
    }
}

#[cfg(test)]
mod tests;
