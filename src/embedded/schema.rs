//! The embedded database's schema and connection settings.

use std::path::Path;

use rusqlite::Connection;

use crate::error::BackendResult;

const SCHEMA: &str = r#"
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
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_seq ON messages(session_id, seq);
CREATE TABLE IF NOT EXISTS inbox(
    user_id INTEGER NOT NULL,
    inbox_seq INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    session_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    status INTEGER NOT NULL,
    PRIMARY KEY(user_id, inbox_seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_by_session ON inbox(user_id, session_id, seq);
CREATE INDEX IF NOT EXISTS inbox_unread ON inbox(user_id, inbox_seq) WHERE status < 2;
CREATE TABLE IF NOT EXISTS consumer_offsets(
    topic TEXT NOT NULL,
    consumer TEXT NOT NULL,
    committed INTEGER NOT NULL,
    PRIMARY KEY(topic, consumer)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency(
    key TEXT PRIMARY KEY,
    receipt BLOB NOT NULL) WITHOUT ROWID;
"#;

/// The log table of a topic; names are checked by the caller.
pub fn topic_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table}(offset INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL);"
    )
}

/// Opens the write connection and creates the schema.
pub fn open_write(path: &Path, durability_full: bool) -> BackendResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Small pages: the hot writes are small index entries scattered over
    // many users, and a commit writes every page it dirtied in full.
    // (Takes effect when the database is created.)
    conn.pragma_update(None, "page_size", 1024)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL fsyncs the WAL at every (group) commit: an acked message survives
    // power loss. NORMAL survives a crash of the process only.
    let sync = if durability_full { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", sync)?;
    // Checkpoints run on their own thread (see `checkpointer`), never
    // inside one of the writer's commits, where they stalled every send
    // queued behind them.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "cache_size", -64_000)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(128);
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Opens a read-only connection for queries.
pub fn open_read(path: &Path) -> BackendResult<Connection> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "cache_size", -16_000)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens the checkpointer's connection.
pub fn open_checkpointer(path: &Path) -> BackendResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}
