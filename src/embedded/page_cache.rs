//! SQLite's own page cache, with one cost removed: the scan of the whole
//! cache at the end of every write transaction that split a B-tree page.
//!
//! When a B-tree rebalances, SQLite swaps page numbers through a temporary
//! key, the page after the 1 GiB lock byte (1,048,577 with 1 KiB pages).
//! The default cache remembers that key as the largest it ever held, so
//! the truncate that ends each transaction ("drop pages past the end of
//! the file") walks every page in the cache looking for pages past the
//! end, though none are there. With a 16 MB cache that walk cost the
//! documents writer about 1 ms per commit (7 % of the server's CPU at
//! 2,500 msg/s). This wrapper delegates everything to the default cache
//! and tracks the largest key that may really be cached; a truncate with
//! nothing at or past its limit is skipped.

use std::ffi::{c_int, c_uint};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The first byte of SQLite's lock range (`PENDING_BYTE`): the page after
/// it is the temporary key of page swaps.
const PENDING_BYTE: u32 = 0x4000_0000;

/// The default page cache's methods, captured before ours are installed.
struct DefaultMethods(ffi::sqlite3_pcache_methods2);

// SAFETY: plain function pointers and SQLite's own argument pointer,
// which SQLite itself hands to any thread.
unsafe impl Send for DefaultMethods {}
unsafe impl Sync for DefaultMethods {}

/// Set before ours are installed, so that they can always reach it.
static DEFAULT: OnceLock<DefaultMethods> = OnceLock::new();
static INSTALLED: OnceLock<bool> = OnceLock::new();
static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// How many truncates found nothing to drop and were skipped.
pub fn truncates_skipped() -> u64 {
    SKIPPED.load(Ordering::Relaxed)
}

/// One cache: the default's, and what may be in it.
struct Tracked {
    inner: *mut ffi::sqlite3_pcache,
    /// The temporary key of page swaps for this cache's page size.
    swap_key: c_uint,
    /// Pages now under `swap_key`.
    swapping: c_uint,
    /// At least the largest key other than `swap_key` in the cache.
    max_key: c_uint,
}

/// Installs the wrapper. Call it before SQLite's first use in the process
/// and while no other thread can use SQLite (`sqlite3_config` is not
/// thread-safe; after SQLite initialized it refuses, harmlessly). Returns
/// whether the wrapper is in place; without it SQLite is merely slower.
pub fn install() -> bool {
    *INSTALLED.get_or_init(install_once)
}

fn install_once() -> bool {
    // SAFETY: sqlite3_config with GETPCACHE2 fills the struct we pass;
    // with PCACHE2 it copies ours. Both fail harmlessly (SQLITE_MISUSE)
    // once SQLite is initialized.
    unsafe {
        let mut default: ffi::sqlite3_pcache_methods2 = std::mem::zeroed();
        let got = ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_GETPCACHE2,
            &mut default as *mut ffi::sqlite3_pcache_methods2,
        );
        if got != ffi::SQLITE_OK || !complete(&default) {
            tracing::debug!(code = got, "SQLite page cache left as it is");
            return false;
        }
        let default = DEFAULT.get_or_init(|| DefaultMethods(default)).0;
        let mut ours = default;
        ours.xCreate = Some(create);
        ours.xCachesize = Some(cachesize);
        ours.xPagecount = Some(pagecount);
        ours.xFetch = Some(fetch);
        ours.xUnpin = Some(unpin);
        ours.xRekey = Some(rekey);
        ours.xTruncate = Some(truncate);
        ours.xDestroy = Some(destroy);
        ours.xShrink = Some(shrink);
        let set = ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_PCACHE2,
            &ours as *const ffi::sqlite3_pcache_methods2,
        );
        if set != ffi::SQLITE_OK {
            tracing::debug!(code = set, "SQLite page cache left as it is");
            return false;
        }
        true
    }
}

fn complete(m: &ffi::sqlite3_pcache_methods2) -> bool {
    m.xCreate.is_some()
        && m.xCachesize.is_some()
        && m.xPagecount.is_some()
        && m.xFetch.is_some()
        && m.xUnpin.is_some()
        && m.xRekey.is_some()
        && m.xTruncate.is_some()
        && m.xDestroy.is_some()
        && m.xShrink.is_some()
}

fn methods() -> &'static ffi::sqlite3_pcache_methods2 {
    match DEFAULT.get() {
        Some(d) => &d.0,
        // Unreachable: DEFAULT is set before ours are installed.
        None => std::process::abort(),
    }
}

/// SAFETY (for every method below): `p` is a cache `create` returned and
/// SQLite has not destroyed; SQLite never calls one cache's methods
/// concurrently.
unsafe fn tracked<'a>(p: *mut ffi::sqlite3_pcache) -> &'a mut Tracked {
    unsafe { &mut *(p as *mut Tracked) }
}

macro_rules! call {
    ($m:ident($($arg:expr),*)) => {
        match methods().$m {
            Some(f) => f($($arg),*),
            None => std::process::abort(),
        }
    };
}

unsafe extern "C" fn create(
    sz_page: c_int,
    sz_extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let inner = unsafe { call!(xCreate(sz_page, sz_extra, purgeable)) };
    if inner.is_null() {
        return inner;
    }
    let swap_key = PENDING_BYTE / (sz_page.max(1) as u32) + 1;
    let cache = Box::new(Tracked {
        inner,
        swap_key,
        swapping: 0,
        max_key: 0,
    });
    Box::into_raw(cache) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn cachesize(p: *mut ffi::sqlite3_pcache, n: c_int) {
    unsafe { call!(xCachesize(tracked(p).inner, n)) }
}

unsafe extern "C" fn pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    unsafe { call!(xPagecount(tracked(p).inner)) }
}

unsafe extern "C" fn fetch(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let cache = unsafe { tracked(p) };
    let page = unsafe { call!(xFetch(cache.inner, key, create)) };
    if !page.is_null() {
        // (Only a corrupt file asks for the swap key's page: counted too.)
        cache.max_key = cache.max_key.max(key);
    }
    page
}

unsafe extern "C" fn unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    unsafe { call!(xUnpin(tracked(p).inner, page, discard)) }
}

unsafe extern "C" fn rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let cache = unsafe { tracked(p) };
    unsafe { call!(xRekey(cache.inner, page, old, new)) };
    if old == cache.swap_key {
        cache.swapping = cache.swapping.saturating_sub(1);
    }
    if new == cache.swap_key {
        cache.swapping += 1;
    } else {
        cache.max_key = cache.max_key.max(new);
    }
}

unsafe extern "C" fn truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let cache = unsafe { tracked(p) };
    if cache.swapping == 0 && cache.max_key < limit {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        return; // nothing at or past `limit` is cached
    }
    unsafe { call!(xTruncate(cache.inner, limit)) };
    cache.max_key = cache.max_key.min(limit.saturating_sub(1));
    if cache.swap_key >= limit {
        cache.swapping = 0;
    }
}

unsafe extern "C" fn destroy(p: *mut ffi::sqlite3_pcache) {
    let cache = unsafe { Box::from_raw(p as *mut Tracked) };
    unsafe { call!(xDestroy(cache.inner)) }
}

unsafe extern "C" fn shrink(p: *mut ffi::sqlite3_pcache) {
    unsafe { call!(xShrink(tracked(p).inner)) }
}
