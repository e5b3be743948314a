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
"#;

const TOPICS_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS consumer_offsets(
    topic TEXT NOT NULL,
    consumer TEXT NOT NULL,
    committed INTEGER NOT NULL,
    PRIMARY KEY(topic, consumer)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency(
    key TEXT PRIMARY KEY,
    receipt BLOB NOT NULL) WITHOUT ROWID;
"#;

/// Tables of `topics.db` that older versions kept in `herald.db`.
const TOPIC_TABLES: [&str; 4] = [
    "consumer_offsets",
    "idempotency",
    "topic_session",
    "topic_ack",
];

/// Small pages for both files: the hot writes are small index entries
/// scattered over many users (the topics' idempotency keys too), and a
/// commit writes every page it dirtied in full; 4 KiB topic pages wrote
/// about twice the WAL bytes (twice the checkpoints) for no gain in
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

/// Which of the two database files a connection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Documents,
    Topics,
}

impl Role {
    /// The `db` label of its metrics (and part of its threads' names).
    pub fn label(self) -> &'static str {
        match self {
            Role::Documents => "documents",
            Role::Topics => "topics",
        }
    }

    /// WAL frames after which the WAL is made to start over (see
    /// `writer::finish_checkpoint`); each restart holds the writer for a
    /// few milliseconds.
    /// - Documents: 1 GB, so rarely. Their checkpoints copy many scattered
    ///   pages: find-max reached 3,052 msg/s with 64 MB, 5,960 with 1 GB
    ///   (3,815 never restarting, the WAL growing without end).
    /// - Topics: 32 MB. Their checkpointer keeps up (appends, few pages),
    ///   so a restart is cheap; and a WAL that stops growing makes each
    ///   commit's fdatasync one write, without the inode's new size. At
    ///   2,500 msg/s topic commits took 30 % less time with 8 MB than 1 GB,
    ///   but 8 MB restarted every 0.7 s (4.5 ms each, seen at p99.9); 32 MB
    ///   restarts four times less often.
    pub fn wal_restart_frames(self) -> i64 {
        let bytes: i64 = match self {
            Role::Documents => 1024 * 1024 * 1024,
            Role::Topics => 32 * 1024 * 1024,
        };
        bytes / PAGE_SIZE
    }

    fn schema(self) -> &'static str {
        match self {
            Role::Documents => DOCUMENTS_SCHEMA,
            Role::Topics => TOPICS_SCHEMA,
        }
    }
}

/// Older versions kept the topics in `herald.db`: copies them to a new
/// `topics.db` (through a temporary file renamed into place, so a crash
/// half-way leaves the old layout intact), then drops them from
/// `herald.db`. Records published but not yet consumed survive the upgrade.
pub fn migrate_topics_out(documents: &Path, topics: &Path) -> BackendResult<()> {
    if !documents.exists() {
        return Ok(());
    }
    let conn = Connection::open(documents)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let legacy: Vec<String> = {
        let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        names
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|n| TOPIC_TABLES.contains(&n.as_str()))
            .collect()
    };
    if legacy.is_empty() {
        return Ok(());
    }
    if !topics.exists() {
        let staging = topics.with_extension("db.migrating");
        let _ = std::fs::remove_file(&staging);
        {
            let target = Connection::open(&staging)?;
            target.pragma_update(None, "page_size", PAGE_SIZE)?;
            target.execute_batch(TOPICS_SCHEMA)?;
        }
        conn.execute("ATTACH DATABASE ?1 AS target", [staging.to_string_lossy()])?;
        let mut copy = String::from("BEGIN;");
        for table in &legacy {
            if table.starts_with("topic_") {
                copy.push_str(&topic_table_sql(&format!("target.{table}")));
            }
            copy.push_str(&format!(
                "INSERT OR IGNORE INTO target.{table} SELECT * FROM main.{table};"
            ));
        }
        if legacy.iter().any(|t| t.starts_with("topic_")) {
            // Offsets are never reused: the AUTOINCREMENT counters move too
            // (a log pruned empty would otherwise restart at 1, below the
            // committed consumer offsets).
            copy.push_str(
                "DELETE FROM target.sqlite_sequence WHERE substr(name, 1, 6) = 'topic_';
                 INSERT INTO target.sqlite_sequence(name, seq)
                 SELECT name, seq FROM main.sqlite_sequence WHERE substr(name, 1, 6) = 'topic_';",
            );
        }
        copy.push_str("COMMIT; DETACH DATABASE target;");
        conn.execute_batch(&copy)?;
        std::fs::File::open(&staging)
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::rename(&staging, topics))
            .map_err(|e| {
                crate::error::BackendError::Other(format!("cannot move topics.db into place: {e}"))
            })?;
    }
    for table in &legacy {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS main.{table}"))?;
    }
    tracing::info!(tables = ?legacy, "moved the topics from herald.db to topics.db");
    Ok(())
}

/// The log table of a topic; names are checked by the caller.
pub fn topic_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table}(offset INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL);"
    )
}

/// Opens the write connection and creates the schema.
pub fn open_write(path: &Path, role: Role, durability_full: bool) -> BackendResult<Connection> {
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
    // FULL fsyncs the WAL at every (group) commit: an acked message survives
    // power loss. NORMAL survives a crash of the process only. The
    // documents never need FULL: everything in them is applied from the
    // topics, which keep each record until the documents that hold it are
    // on disk (see `checkpointer`), so a power loss only means re-applying.
    let sync = if durability_full && role == Role::Topics {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.pragma_update(None, "synchronous", sync)?;
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
    conn.execute_batch(role.schema())?;
    if role == Role::Documents {
        add_inbox_unread(&conn)?;
    }
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
