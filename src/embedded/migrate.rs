//! Data directories of older versions kept the topics in SQLite tables
//! (`topic_session`, `topic_ack`, `consumer_offsets`, `idempotency`): first
//! inside `herald.db`, later in a `topics.db` of their own. Opening such a
//! directory moves what those tables hold into the topic logs, once:
//!
//! - the records still there (published, maybe not consumed yet) keep
//!   their offsets, and offsets go on from the old counters (never reused:
//!   the documents hold the consumers' positions in them);
//! - a session record keeps its idempotency key and receipt; keys of
//!   records already consumed need nothing, the stored messages answer for
//!   them (`StoredSends`);
//! - the consumers' committed offsets move too.
//!
//! The logs are written to a staging directory renamed into place, so a
//! crash half-way leaves the old layout as it was; the old tables are
//! dropped only after the rename.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::log::{self, Record};
use crate::error::{BackendError, BackendResult};
use crate::model::{AcceptedSend, SendRecord};

/// The topics older versions kept, by the name of their log.
const TOPICS: [&str; 2] = ["session", "ack"];
/// Tables of the old layout.
const TABLES: [&str; 4] = [
    "topic_session",
    "topic_ack",
    "consumer_offsets",
    "idempotency",
];

/// Moves the topics of an older layout in `data_dir` into `topics_dir`.
pub fn sqlite_topics_to_logs(data_dir: &Path, topics_dir: &Path) -> BackendResult<()> {
    let topics_db = data_dir.join("topics.db");
    let documents = data_dir.join("herald.db");
    if !topics_dir.exists() {
        let source = if topics_db.exists() {
            Some(&topics_db)
        } else if documents.exists() && !old_tables(&Connection::open(&documents)?)?.is_empty() {
            Some(&documents)
        } else {
            None
        };
        if let Some(source) = source {
            write_logs(&Connection::open(source)?, topics_dir)?;
            tracing::info!(from = %source.display(), to = %topics_dir.display(), "moved the topics into their logs");
        }
    }
    // The logs are in place: what is left of the old layout goes.
    for suffix in ["", "-wal", "-shm"] {
        let file = data_dir.join(format!("topics.db{suffix}"));
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    if documents.exists() {
        let conn = Connection::open(&documents)?;
        for table in old_tables(&conn)? {
            conn.execute_batch(&format!("DROP TABLE IF EXISTS main.{table}"))?;
        }
    }
    Ok(())
}

/// The old layout's tables in `conn`'s database.
fn old_tables(conn: &Connection) -> BackendResult<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
    let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let names = names.collect::<Result<Vec<_>, _>>()?;
    Ok(names
        .into_iter()
        .filter(|n| TABLES.contains(&n.as_str()))
        .collect())
}

fn write_logs(conn: &Connection, topics_dir: &Path) -> BackendResult<()> {
    let tables = old_tables(conn)?;
    let staging = topics_dir.with_extension("migrating");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    for name in TOPICS {
        let table = format!("topic_{name}");
        let (records, next) = if tables.contains(&table) {
            old_records(conn, &table, name, &tables)?
        } else {
            (Vec::new(), 1)
        };
        let first = records.first().map_or(next, |r| r.offset);
        let offsets = if tables.iter().any(|t| t == "consumer_offsets") {
            old_offsets(conn, name)?
        } else {
            Vec::new()
        };
        log::write_migrated(&staging.join(name), first, &records, &offsets)?;
    }
    std::fs::rename(&staging, topics_dir)?;
    if let Some(parent) = topics_dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// The records of `table` and the offset the log goes on from.
fn old_records(
    conn: &Connection,
    table: &str,
    name: &str,
    tables: &[String],
) -> BackendResult<(Vec<Record>, u64)> {
    let has_keys = tables.iter().any(|t| t == "idempotency");
    let mut stmt = conn.prepare(&format!(
        "SELECT offset, payload FROM {table} ORDER BY offset"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut records = Vec::new();
    for row in rows {
        let (offset, payload) = row?;
        let (key, receipt) = match name {
            "session" => keyed(conn, has_keys, &payload)?,
            _ => (String::new(), Vec::new()),
        };
        records.push(Record {
            offset,
            key,
            receipt,
            payload: payload.into(),
        });
    }
    // SQLite makes sqlite_sequence at the first AUTOINCREMENT insert.
    let has_counters: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'sqlite_sequence'",
        [],
        |r| r.get(0),
    )?;
    let counter: Option<i64> = if has_counters {
        conn.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?",
            [table],
            |r| r.get(0),
        )
        .optional()?
    } else {
        None
    };
    let last = records.last().map_or(0, |r| r.offset);
    let next = last.max(counter.unwrap_or(0).max(0) as u64) + 1;
    Ok((records, next))
}

/// A session record's idempotency key and receipt (none if it is not a
/// send this version can read).
fn keyed(conn: &Connection, has_keys: bool, payload: &[u8]) -> BackendResult<(String, Vec<u8>)> {
    let Ok(send) = serde_json::from_slice::<SendRecord>(payload) else {
        return Ok((String::new(), Vec::new()));
    };
    let key = AcceptedSend::key(send.sender_id, &send.client_message_id);
    let stored: Option<Vec<u8>> = if has_keys {
        conn.query_row(
            "SELECT receipt FROM idempotency WHERE key = ?",
            [&key],
            |r| r.get(0),
        )
        .optional()?
    } else {
        None
    };
    let receipt = match stored {
        Some(r) => r,
        None => serde_json::to_vec(&AcceptedSend {
            client_message_id: send.client_message_id.clone(),
            message_id: send.message_id,
            session_id: send.session_id,
            server_ts: send.server_ts,
        })
        .map_err(BackendError::from)?,
    };
    Ok((key, receipt))
}

fn old_offsets(conn: &Connection, topic: &str) -> BackendResult<Vec<(String, u64)>> {
    let mut stmt =
        conn.prepare("SELECT consumer, committed FROM consumer_offsets WHERE topic = ?")?;
    let rows = stmt.query_map([topic], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
