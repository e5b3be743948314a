//! Process-level settings made once at start-up.

/// Raises the open-files soft limit to the hard limit and returns the
/// limit in force (`None` if it cannot be read): every connection is a file
/// descriptor, and the usual soft limit of 1024 is far below what one node
/// serves.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            tracing::warn!("cannot read the open-files limit");
            return None;
        }
        let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
        if soft < hard {
            lim.rlim_cur = hard;
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
                tracing::warn!(soft, hard, "cannot raise the open-files limit");
                return Some(soft);
            }
        }
        tracing::info!(was = soft, now = lim.rlim_cur, hard, "open-files limit");
        Some(lim.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}

/// Makes glibc return large freed blocks to the system. Password hashing
/// allocates 19 MiB per hash; with glibc's adaptive mmap threshold those
/// blocks would stay in per-thread arenas and the server would grow by
/// that much for every thread that ever hashed.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Runs the calling thread only when a CPU would otherwise idle
/// (`SCHED_IDLE`): for background copying that must not delay the threads
/// a send waits on, however many cores there are.
pub fn run_when_idle() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; the call only reads `param`.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            tracing::warn!("cannot lower a background thread's priority");
        }
    }
}
