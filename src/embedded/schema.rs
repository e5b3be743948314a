//! The embedded database's schema and connection settings.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::error::BackendResult;

const DOCUMENTS_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS users(
    user_id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    nickname TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS groups_(
    group_id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL UNIQUE,
    name TEXT NOT NULL,
    owner_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS group_members(
    group_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY(group_id, user_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_by_user ON group_members(user_id, group_id);
CREATE TABLE IF NOT EXISTS sessions(
    session_id INTEGER PRIMARY KEY,
    session_type INTEGER NOT NULL,
    user_lo INTEGER,
    user_hi INTEGER,
    group_id INTEGER,
    last_seq INTEGER NOT NULL DEFAULT 0,
    last_message_id INTEGER,
    updated_at INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS sessions_pair ON sessions(user_lo, user_hi) WHERE session_type = 1;
CREATE INDEX IF NOT EXISTS sessions_by_hi ON sessions(user_hi) WHERE session_type = 1;
CREATE TABLE IF NOT EXISTS messages(
    message_id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    session_type INTEGER NOT NULL,
    sender_id INTEGER NOT NULL,
    to_user_id INTEGER,
    group_id INTEGER,
    message_type INTEGER NOT NULL,
    content TEXT NOT NULL,
    client_message_id TEXT NOT NULL,
    client_ts INTEGER NOT NULL,
    server_ts INTEGER NOT NULL,
    adjusted_ts INTEGER NOT NULL,
    recalled INTEGER NOT NULL DEFAULT 0);
-- (session_id, seq) is unique by construction (one writer assigns seqs);
-- an index only to enforce it cost a random page write per message.
DROP INDEX IF EXISTS messages_by_seq;
-- A send's idempotency key, once the topic no longer holds it (see
-- `KeyHistory`). Not UNIQUE: the topic publishes a key once, and a
-- consumer must never be stuck on a constraint.
CREATE INDEX IF NOT EXISTS messages_by_client_id ON messages(sender_id, client_message_id);
CREATE TABLE IF NOT EXISTS inbox(
    user_id INTEGER NOT NULL,
    inbox_seq INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    session_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    status INTEGER NOT NULL,
    -- 1 while status < 2; see `add_inbox_unread`.
    unread INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY(user_id, inbox_seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_by_session ON inbox(user_id, session_id, seq);
-- How far each topic consumer has applied its topic to these documents,
-- written in the same transaction as what it applied.
CREATE TABLE IF NOT EXISTS applied_positions(
    consumer TEXT PRIMARY KEY,
    position INTEGER NOT NULL) WITHOUT ROWID;
-- Each user's last token issue number, and the numbers below
-- `revoked_before` are revoked (logout-all); see `service::tokens`.
CREATE TABLE IF NOT EXISTS user_tokens(
    user_id INTEGER PRIMARY KEY,
    issued INTEGER NOT NULL,
    revoked_before INTEGER NOT NULL);
-- Tokens revoked one by one (logout), kept until they expire.
CREATE TABLE IF NOT EXISTS revoked_tokens(
    user_id INTEGER NOT NULL,
    number INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY(user_id, number)) WITHOUT ROWID;
"#;

/// Small pages: the hot writes are small index entries scattered over many
/// users, and a commit writes every page it dirtied in full; 4 KiB pages
/// wrote about twice the WAL bytes (twice the checkpoints) for no gain in
/// throughput. (Takes effect when a database is created.)
const PAGE_SIZE: i64 = 1024;

/// The WAL file of database file `database` (SQLite's name for it).
pub fn wal_path(database: &Path) -> std::path::PathBuf {
    let mut wal = database.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// How long a connection waits for a lock another one holds.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The `db` label of the documents' metrics (and part of their threads'
/// names).
pub const LABEL: &str = "documents";

/// WAL frames after which the WAL is made to start over (see
/// `writer::finish_checkpoint`); each restart holds the writer for a few
/// milliseconds. 1 GB, so rarely: the documents' checkpoints copy many
/// scattered pages, and find-max reached 3,052 msg/s with 64 MB, 5,960
/// with 1 GB (3,815 never restarting, the WAL growing without end).
pub const WAL_RESTART_FRAMES: i64 = 1024 * 1024 * 1024 / PAGE_SIZE;

/// Opens the write connection and creates the schema.
pub fn open_write(path: &Path) -> BackendResult<Connection> {
    // WAL appends gathered into a few writes per commit (`wal_writes`).
    let conn = if super::wal_writes::register() {
        Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::default(),
            super::wal_writes::VFS_NAME,
        )?
    } else {
        Connection::open(path)?
    };
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL: a commit survives a crash of the process, not a power loss.
    // The documents never need more: everything in them is applied from the
    // topics, which keep each record until the documents that hold it are
    // on disk (see `checkpointer`), so a power loss only means re-applying.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints run on their own thread (see `checkpointer`), never
    // inside one of the writer's commits, where they stalled every send
    // queued behind them.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // 16 MB: enough for the hot pages of every inbox; a smaller one turned
    // cache hits into reads. (A bigger one made each commit slower while
    // SQLite scanned the whole cache when a transaction ended; see
    // `page_cache`, which removed that scan.)
    conn.pragma_update(None, "cache_size", -16_000)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(128);
    conn.execute_batch(DOCUMENTS_SCHEMA)?;
    add_inbox_unread(&conn)?;
    Ok(conn)
}

/// The unread index's condition lives in a column of its own,
/// `inbox.unread` (1 while `status < 2`), written only when an entry is
/// read. An index whose `WHERE` reads `status` was rewritten by every
/// pending -> delivered ack although the entry stays in it: a second page
/// written per ack (of five per message and recipient). Databases made
/// before the column get it filled from `status`, in one transaction.
fn add_inbox_unread(conn: &Connection) -> BackendResult<()> {
    let has_column: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('inbox') WHERE name = 'unread'",
        [],
        |r| r.get(0),
    )?;
    let tx = conn.unchecked_transaction()?;
    if has_column == 0 {
        tracing::info!("adding inbox.unread (one pass over the inbox)");
        tx.execute_batch(
            "ALTER TABLE inbox ADD COLUMN unread INTEGER NOT NULL DEFAULT 1;
             UPDATE inbox SET unread = 0 WHERE status >= 2;",
        )?;
    }
    tx.execute_batch(
        "DROP INDEX IF EXISTS inbox_unread;
         CREATE INDEX IF NOT EXISTS inbox_unread_entries ON inbox(user_id, inbox_seq) WHERE unread = 1;",
    )?;
    tx.commit()?;
    Ok(())
}

/// Opens a read-only connection for queries.
pub fn open_read(path: &Path) -> BackendResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "cache_size", -16_000)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens the checkpointer's connection.
pub fn open_checkpointer(path: &Path) -> BackendResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}
