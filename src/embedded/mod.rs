//! Embedded backends: one SQLite database (WAL) under the data directory
//! holds the documents and the topics. One writer thread owns all writes and
//! groups whatever is queued into one transaction (group commit), so a burst
//! of sends costs one fsync, not one per message.

mod checkpointer;
mod reader;
mod schema;
mod store;
mod topic;
mod writer;

pub use reader::ReadPool;
pub use store::SqliteStore;
pub use topic::SqliteTopic;
pub use writer::Writer;

use std::path::Path;
use std::sync::Arc;

use crate::error::BackendResult;

/// The opened embedded database: its writer and its reader pool.
#[derive(Clone)]
pub struct Embedded {
    pub writer: Writer,
    pub readers: Arc<ReadPool>,
}

impl Embedded {
    /// Opens (creating if needed) `herald.db` in `data_dir`.
    pub fn open(
        data_dir: &Path,
        durability_full: bool,
        batch_max: usize,
    ) -> BackendResult<Embedded> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            crate::error::BackendError::Other(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join("herald.db");
        let conn = schema::open_write(&path, durability_full)?;
        let writer = Writer::start(conn, batch_max)?;
        checkpointer::start(&path)?;
        let readers = Arc::new(ReadPool::new(path));
        Ok(Embedded { writer, readers })
    }
}
