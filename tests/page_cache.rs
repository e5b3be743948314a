//! The page cache wrapper (`herald::embedded::page_cache`) against real
//! SQLite: it must be installable before SQLite's first use, skip the
//! needless truncates B-tree page swaps cause, and still drop the pages a
//! rollback leaves past the end of the file. One test in this binary, so
//! nothing initializes SQLite before it.

use herald::embedded::page_cache;
use rusqlite::{ffi, params, Connection};

/// Bytes the connection's page cache holds.
fn cache_used(c: &Connection) -> i32 {
    let (mut current, mut highest) = (0, 0);
    // SAFETY: a valid handle, owned by `c`, and two out-parameters.
    let rc = unsafe {
        ffi::sqlite3_db_status(
            c.handle(),
            ffi::SQLITE_DBSTATUS_CACHE_USED,
            &mut current,
            &mut highest,
            0,
        )
    };
    assert_eq!(rc, ffi::SQLITE_OK);
    current
}

fn insert_rows(c: &Connection, from: i64, count: i64) -> rusqlite::Result<()> {
    let mut ins = c.prepare_cached("INSERT INTO t(k, v) VALUES (?1, randomblob(200))")?;
    for i in from..from + count {
        // Scattered keys split pages in the middle of the tree, which
        // swaps page numbers (what leaves the cache's largest key high).
        ins.execute(params![(i * 7_919) % 1_000_003])?;
    }
    Ok(())
}

#[test]
fn skips_needless_truncates_and_keeps_needed_ones() -> rusqlite::Result<()> {
    assert!(page_cache::install(), "installed before SQLite's first use");
    let dir =
        tempfile::tempdir().map_err(|e| rusqlite::Error::InvalidPath(e.to_string().into()))?;
    let c = Connection::open(dir.path().join("t.db"))?;
    c.pragma_update(None, "page_size", 1024)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.execute_batch("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB NOT NULL)")?;

    for batch in 0..20 {
        c.execute_batch("BEGIN")?;
        insert_rows(&c, batch * 500, 500)?;
        c.execute_batch("COMMIT")?;
    }
    assert!(
        page_cache::truncates_skipped() > 0,
        "commits after page swaps skip the scan"
    );

    // A file that shrinks leaves pages past its new end in the cache;
    // the truncate must drop them (with auto_vacuum, a commit shrinks it).
    let v = Connection::open(dir.path().join("v.db"))?;
    v.execute_batch(
        "PRAGMA page_size = 1024; PRAGMA auto_vacuum = FULL;
         CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB NOT NULL);",
    )?;
    v.execute_batch("BEGIN")?;
    insert_rows(&v, 0, 3_000)?;
    v.execute_batch("COMMIT")?;
    let full = cache_used(&v);
    v.execute_batch("DELETE FROM t")?;
    assert!(
        cache_used(&v) < full / 4,
        "pages past the end dropped: {} of {full} bytes left",
        cache_used(&v)
    );

    // A rolled-back transaction that grew the file leaves pages past its
    // end; the next growth must not find them.
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    c.execute_batch("BEGIN")?;
    insert_rows(&c, 10_000, 3_000)?;
    c.execute_batch("ROLLBACK")?;
    c.execute_batch("BEGIN")?;
    insert_rows(&c, 20_000, 3_000)?;
    c.execute_batch("COMMIT")?;

    let grown: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let rows: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
    let check: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    assert!(grown > pages);
    assert_eq!(rows, 13_000);
    assert_eq!(check, "ok");
    Ok(())
}
