//! A VFS for the writer connections that writes a commit's WAL frames in
//! a few large `pwrite` calls instead of two per page.
//!
//! SQLite appends a frame as two writes, its 24-byte header and then its
//! page, so a documents commit of 350 dirty 1 KiB pages cost 700 `pwrite`
//! calls, each paying the kernel's per-call work (ext4 and page cache
//! lookups) for a few bytes of copying. This VFS is SQLite's default one
//! except for WAL files, whose appends it gathers in memory and writes,
//! in pieces of 64 KiB, when a commit's last frame is complete: before
//! SQLite publishes the commit to other connections in the wal-index.
//! Measured: server CPU -7 % with 1:1 chat at 2,500 msg/s, -13 % with a
//! 1,000-member group (docs/bench/NOTES.md, fifth pass).
//!
//! The file on disk is therefore exactly what SQLite wrote whenever anyone
//! can look at it:
//! - the commit frame (the one whose header has a non-zero database size)
//!   ends a transaction's appends: its page completes the write;
//! - every other way to observe or change the file (read, size, truncate,
//!   sync, file control, close) first writes what is gathered;
//! - a write anywhere but at the end of what is gathered first writes what
//!   is gathered; after a commit only an append (at the commit's end, or a
//!   new WAL's header at 0) is gathered again, so the checksum rewrites
//!   SQLite may do after the commit frame go straight to the file.
//!
//! A crash loses what a crash would lose without it: the frames of a
//! transaction not yet committed.

use std::ffi::{c_int, c_void, CStr};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name connections open the VFS by.
pub const VFS_NAME: &CStr = c"herald-wal-writes";

/// A WAL frame header: `[page number, database size after commit (0 if
/// not a commit), salt 1, salt 2, checksum 1, checksum 2]`, big-endian u32s.
const FRAME_HEADER: usize = 24;

/// Gathered bytes written at once even before a commit (a transaction
/// that spills its page cache writes many frames before its commit).
const GATHER_MAX: usize = 8 * 1024 * 1024;

/// The most the default VFS writes in one call: it masks a write's length
/// to 17 bits (`seekAndWriteFd`), so a longer one would be cut short.
const WRITE_MAX: usize = 64 * 1024;

/// Test hook: `HERALD_TEST_FAIL_WAL_WRITES=<name suffix>:<n>` lets each
/// WAL file whose name ends with the suffix take `n` commits (each topic
/// log whose directory does, `n` appends), then fails every write to it,
/// as a full disk or a failing device would. This is how
/// the tests reach the paths that must stop the process rather than serve
/// on without what it announced (`writer::lost_released_writes`); the
/// tests name it by this constant.
pub const FAIL_WRITES_ENV: &str = "HERALD_TEST_FAIL_WAL_WRITES";

/// SQLite's default VFS (`unix`), which opens and does everything, once
/// ours is registered over it (`None` if it could not be).
static DEFAULT: OnceLock<Option<DefaultVfs>> = OnceLock::new();

struct DefaultVfs(*mut ffi::sqlite3_vfs);

// SAFETY: a pointer to SQLite's registered default VFS, which lives as
// long as the process and is safe to call from any thread.
unsafe impl Send for DefaultVfs {}
unsafe impl Sync for DefaultVfs {}

/// Registers the VFS (once); `false` if SQLite has no default VFS to wrap,
/// in which case connections use the default one.
pub fn register() -> bool {
    DEFAULT.get_or_init(register_once).is_some()
}

fn register_once() -> Option<DefaultVfs> {
    // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe
    // once SQLite is initialized (find initializes it); the registered
    // struct is leaked, so it outlives every connection. No connection
    // opens through it before `register` returned.
    unsafe {
        let default = ffi::sqlite3_vfs_find(std::ptr::null());
        if default.is_null() || (*default).xOpen.is_none() {
            return None;
        }
        let ours = Box::leak(Box::new(*default));
        ours.szOsFile = (GATHERING_SIZE + (*default).szOsFile as usize) as c_int;
        ours.zName = VFS_NAME.as_ptr();
        ours.pNext = std::ptr::null_mut();
        ours.xOpen = Some(open);
        (ffi::sqlite3_vfs_register(ours, 0) == ffi::SQLITE_OK).then_some(DefaultVfs(default))
    }
}

/// A WAL file: SQLite's file struct first (so SQLite can hold a pointer to
/// it), then our state; the default VFS's own file follows in the same
/// allocation, at `GATHERING_SIZE`.
#[repr(C)]
struct GatheringFile {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    /// Bytes written by SQLite, not yet by us, from file offset `start`.
    pending: Vec<u8>,
    start: i64,
    /// The last write was a commit frame's header: its page ends the commit.
    commit_next: bool,
    /// Where the last commit ended, while only an append may be gathered
    /// again (see the module comment).
    after_commit: Option<i64>,
    /// Commits this file may still take before every write to it fails
    /// (`FAIL_WRITES_ENV`); `None` without the hook.
    commits_left: Option<u64>,
}

/// `GatheringFile` rounded up so the default VFS's file that follows it is
/// aligned for anything.
const GATHERING_SIZE: usize = std::mem::size_of::<GatheringFile>().next_multiple_of(16);

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(default) = DEFAULT.get().and_then(Option::as_ref).map(|d| d.0) else {
        return ffi::SQLITE_CANTOPEN;
    };
    // SAFETY: `default` is the registered default VFS; `file` points to
    // `szOsFile` bytes, enough for our struct followed by its file, or
    // for its file alone.
    unsafe {
        let Some(default_open) = (*default).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            // Everything but the WAL is the default VFS's file itself.
            return default_open(default, name, file, flags, out_flags);
        }
        let inner = file
            .cast::<u8>()
            .add(GATHERING_SIZE)
            .cast::<ffi::sqlite3_file>();
        (*inner).pMethods = std::ptr::null();
        let rc = default_open(default, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // SQLite closes only what we report open: close the inner file
            // if the default VFS left it half open.
            if let Some(close) = methods(inner).and_then(|m| m.xClose) {
                close(inner);
            }
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        file.cast::<GatheringFile>().write(GatheringFile {
            base: ffi::sqlite3_file {
                pMethods: &WAL_METHODS,
            },
            inner,
            pending: Vec::new(),
            start: 0,
            commit_next: false,
            after_commit: None,
            commits_left: commits_before_failure(name),
        });
        ffi::SQLITE_OK
    }
}

/// The commits a WAL file named `name` may take before its writes fail,
/// if `FAIL_WRITES_ENV` names it.
fn commits_before_failure(name: ffi::sqlite3_filename) -> Option<u64> {
    if name.is_null() {
        return None;
    }
    // SAFETY: SQLite passes a WAL file's name as a NUL-terminated path.
    let name = unsafe { CStr::from_ptr(name) };
    writes_before_failure(name.to_bytes())
}

/// The commits (or log appends) a file whose path is `name` may take
/// before its writes fail, if `FAIL_WRITES_ENV` names it by a suffix.
pub fn writes_before_failure(name: &[u8]) -> Option<u64> {
    static HOOK: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let (suffix, commits) = HOOK
        .get_or_init(|| {
            let raw = std::env::var(FAIL_WRITES_ENV).ok()?;
            let parsed = raw
                .rsplit_once(':')
                .and_then(|(suffix, n)| Some((suffix.to_string(), n.parse().ok()?)));
            match &parsed {
                Some((suffix, n)) => tracing::warn!(
                    suffix,
                    commits = n,
                    "test hook {FAIL_WRITES_ENV}: writes will fail"
                ),
                None => tracing::warn!("ignoring {FAIL_WRITES_ENV}={raw:?}: not <name suffix>:<n>"),
            }
            parsed
        })
        .as_ref()?;
    name.ends_with(suffix.as_bytes()).then_some(*commits)
}

/// The default VFS's methods of an open file.
///
/// # Safety
/// `file` points to a file struct of the default VFS.
unsafe fn methods<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a ffi::sqlite3_io_methods> {
    // SAFETY: per the caller; SQLite's methods tables are static.
    unsafe { (*file).pMethods.as_ref() }
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 1: a WAL file is never memory-mapped nor a wal-index.
    iVersion: 1,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(wal_lock),
    xUnlock: Some(wal_unlock),
    xCheckReservedLock: Some(wal_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(wal_sector_size),
    xDeviceCharacteristics: Some(wal_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

impl GatheringFile {
    /// # Safety
    /// `file` is a WAL file opened by `open`, used by one thread at a time
    /// (SQLite's connection mutex, and one writer thread per connection).
    unsafe fn of<'a>(file: *mut ffi::sqlite3_file) -> &'a mut GatheringFile {
        // SAFETY: per the caller.
        unsafe { &mut *file.cast::<GatheringFile>() }
    }

    fn inner_methods(&self) -> Option<&'static ffi::sqlite3_io_methods> {
        // SAFETY: `inner` was opened by the default VFS and stays open
        // until `wal_close`.
        unsafe { methods(self.inner) }
    }

    /// Writes at `offset` through the default VFS, in pieces it accepts.
    fn write_through(&self, data: &[u8], offset: i64) -> c_int {
        let Some(write) = self.inner_methods().and_then(|m| m.xWrite) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        if self.commits_left == Some(0) {
            return ffi::SQLITE_IOERR_WRITE;
        }
        let mut at = offset;
        for piece in data.chunks(WRITE_MAX) {
            // SAFETY: `piece` is valid for its length (< WRITE_MAX, so it
            // fits a c_int); `inner` is open.
            let rc = unsafe { write(self.inner, piece.as_ptr().cast(), piece.len() as c_int, at) };
            #[cfg(test)]
            tests::count(|c| c.file_writes += 1);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            at += piece.len() as i64;
        }
        ffi::SQLITE_OK
    }

    /// Writes what is gathered. On failure it is dropped: SQLite fails the
    /// transaction, and frames after the last commit are never read.
    fn flush(&mut self) -> c_int {
        self.commit_next = false;
        if self.pending.is_empty() {
            return ffi::SQLITE_OK;
        }
        let rc = self.write_through(&self.pending, self.start);
        self.pending.clear();
        if self.pending.capacity() > GATHER_MAX {
            self.pending.shrink_to(GATHER_MAX);
        }
        rc
    }

    fn write(&mut self, data: &[u8], offset: i64) -> c_int {
        #[cfg(test)]
        tests::count(|c| c.sqlite_writes += 1);
        if let Some(end) = self.after_commit {
            if offset != end && offset != 0 {
                // A rewrite of what this or an earlier commit wrote.
                return self.write_through(data, offset);
            }
            self.after_commit = None;
        }
        let pending_end = self.start + self.pending.len() as i64;
        if !self.pending.is_empty() && offset != pending_end {
            let rc = self.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if self.pending.is_empty() {
            self.start = offset;
        }
        self.pending.extend_from_slice(data);
        let ends_commit = std::mem::take(&mut self.commit_next);
        self.commit_next = data.len() == FRAME_HEADER && data[4..8] != [0; 4];
        if ends_commit {
            let end = offset + data.len() as i64;
            let rc = self.flush();
            self.after_commit = Some(end);
            if let (ffi::SQLITE_OK, Some(left)) = (rc, self.commits_left.as_mut()) {
                *left = left.saturating_sub(1);
            }
            rc
        } else if self.pending.len() >= GATHER_MAX {
            self.flush()
        } else {
            ffi::SQLITE_OK
        }
    }
}

/// Calls the default VFS's method `$m` on the inner file.
macro_rules! forward {
    ($file:expr, $m:ident ( $($arg:expr),* ), $missing:expr) => {{
        // SAFETY: SQLite calls these methods only on files `open` set up.
        let f = unsafe { GatheringFile::of($file) };
        match f.inner_methods().and_then(|m| m.$m) {
            // SAFETY: forwarding SQLite's own arguments to the inner file.
            Some(method) => unsafe { method(f.inner, $($arg),*) },
            None => $missing,
        }
    }};
}

/// Writes what is gathered, then `forward!`s: for every method that
/// observes or changes the file.
macro_rules! flush_then {
    ($file:expr, $($call:tt)*) => {{
        // SAFETY: SQLite calls these methods only on files `open` set up.
        let rc = unsafe { GatheringFile::of($file) }.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        forward!($file, $($call)*)
    }};
}

unsafe extern "C" fn wal_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes each file `open` set up once, then frees it.
    let f = unsafe { GatheringFile::of(file) };
    let flushed = f.flush();
    let closed = match f.inner_methods().and_then(|m| m.xClose) {
        // SAFETY: the inner file is open.
        Some(close) => unsafe { close(f.inner) },
        None => ffi::SQLITE_OK,
    };
    // SAFETY: written by `open`, dropped once here; SQLite frees the bytes.
    unsafe { std::ptr::drop_in_place(file.cast::<GatheringFile>()) };
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn wal_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let Ok(len) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite passes `amount` readable bytes at `data`, on a file
    // `open` set up.
    unsafe {
        let data = std::slice::from_raw_parts(data.cast::<u8>(), len);
        GatheringFile::of(file).write(data, offset)
    }
}

unsafe extern "C" fn wal_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    flush_then!(file, xRead(buf, amount, offset), ffi::SQLITE_IOERR_READ)
}

unsafe extern "C" fn wal_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    flush_then!(file, xTruncate(size), ffi::SQLITE_IOERR_TRUNCATE)
}

unsafe extern "C" fn wal_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    flush_then!(file, xSync(flags), ffi::SQLITE_IOERR_FSYNC)
}

unsafe extern "C" fn wal_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    flush_then!(file, xFileSize(size), ffi::SQLITE_IOERR_FSTAT)
}

unsafe extern "C" fn wal_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    flush_then!(file, xFileControl(op, arg), ffi::SQLITE_NOTFOUND)
}

unsafe extern "C" fn wal_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward!(file, xLock(level), ffi::SQLITE_OK)
}

unsafe extern "C" fn wal_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward!(file, xUnlock(level), ffi::SQLITE_OK)
}

unsafe extern "C" fn wal_check_reserved_lock(
    file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    forward!(file, xCheckReservedLock(out), ffi::SQLITE_OK)
}

unsafe extern "C" fn wal_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    forward!(file, xSectorSize(), 4096)
}

unsafe extern "C" fn wal_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    forward!(file, xDeviceCharacteristics(), 0)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::path::Path;

    use rusqlite::{Connection, OpenFlags};

    use super::*;

    /// Writes SQLite made to WAL files and writes made to the files, on
    /// this thread (tests run side by side).
    #[derive(Clone, Copy, Default)]
    pub struct Calls {
        pub sqlite_writes: u64,
        pub file_writes: u64,
    }

    thread_local! {
        static CALLS: Cell<Calls> = Cell::new(Calls::default());
    }

    pub fn count(f: impl FnOnce(&mut Calls)) {
        CALLS.with(|c| {
            let mut calls = c.get();
            f(&mut calls);
            c.set(calls);
        });
    }

    fn calls() -> Calls {
        CALLS.with(|c| c.get())
    }

    fn writer(path: &Path, cache_pages: i64) -> Connection {
        assert!(register());
        let c = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), VFS_NAME).unwrap();
        c.execute_batch(&format!(
            "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = {cache_pages};
             CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB NOT NULL);"
        ))
        .unwrap();
        c
    }

    fn rows(c: &Connection) -> (i64, i64) {
        c.query_row(
            "SELECT count(*), coalesce(sum(length(v)), 0) FROM t",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    #[test]
    fn a_commit_is_one_write_and_visible_to_readers_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let w = writer(&path, 2000);
        let reader = Connection::open(&path).unwrap();
        for round in 1..=20i64 {
            let before = calls();
            let tx = w.unchecked_transaction().unwrap();
            for i in 0..100 {
                tx.execute(
                    "INSERT INTO t(k, v) VALUES (?, zeroblob(500))",
                    [round * 1000 + i],
                )
                .unwrap();
            }
            tx.commit().unwrap();
            let after = calls();
            let sqlite = after.sqlite_writes - before.sqlite_writes;
            let file = after.file_writes - before.file_writes;
            // ~60 pages: two writes each from SQLite, one or two to the file.
            assert!(sqlite >= 100, "round {round}: {sqlite} writes from SQLite");
            assert!(
                file * 20 <= sqlite,
                "round {round}: {file} file writes for {sqlite}"
            );
            // Another connection (the default VFS) reads the commit at once.
            assert_eq!(rows(&reader), (round * 100, round * 100 * 500));
        }
    }

    /// A transaction bigger than the page cache writes frames before its
    /// commit and then rewrites them (and their checksums after the commit
    /// frame); the files as they are on disk after each commit, opened
    /// elsewhere as after a crash, hold every committed row.
    #[test]
    fn files_copied_after_any_commit_recover_everything_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let w = writer(&path, 16);
        let mut expected = (0i64, 0i64);
        for round in 1..=8i64 {
            let tx = w.unchecked_transaction().unwrap();
            for pass in 0..3i64 {
                for i in 0..200 {
                    tx.execute(
                        "INSERT INTO t(k, v) VALUES (?1, zeroblob(?2))
                         ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                        [round * 1000 + i, 100 + pass * 50],
                    )
                    .unwrap();
                }
            }
            tx.commit().unwrap();
            expected = (expected.0 + 200, expected.1 + 200 * 200);
            let copy = dir.path().join(format!("copy-{round}"));
            std::fs::create_dir(&copy).unwrap();
            std::fs::copy(&path, copy.join("t.db")).unwrap();
            std::fs::copy(dir.path().join("t.db-wal"), copy.join("t.db-wal")).unwrap();
            let recovered = Connection::open(copy.join("t.db")).unwrap();
            assert_eq!(rows(&recovered), expected, "round {round}");
        }
    }
}
