//! Process CPU time and RSS from `/proc` (Linux).

use std::time::Instant;

/// `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat`. It is 100 on
/// every Linux architecture tokio runs on (the kernel ABI fixes it).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Which process to read.
#[derive(Debug, Clone, Copy)]
pub enum Pid {
    /// The generator itself.
    SelfProc,
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::SelfProc => "/proc/self".to_string(),
            Pid::Other(p) => format!("/proc/{p}"),
        }
    }
}

/// User + system CPU time of a process, in seconds.
pub fn cpu_seconds(pid: Pid) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("{}/stat", pid.dir())).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at
    // indices 11 and 12 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_SEC)
}

/// Resident set size (`VmRSS`) in KiB.
pub fn rss_kib(pid: Pid) -> Option<u64> {
    let status = std::fs::read_to_string(format!("{}/status", pid.dir())).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU usage of a process over an interval.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: Pid,
    start: Instant,
    cpu0: Option<f64>,
}

impl CpuMeter {
    pub fn start(pid: Pid) -> CpuMeter {
        CpuMeter {
            pid,
            start: Instant::now(),
            cpu0: cpu_seconds(pid),
        }
    }

    /// Percent of one core since `start` (200 = two cores busy).
    pub fn percent(&self) -> Option<f64> {
        let wall = self.start.elapsed().as_secs_f64();
        let used = cpu_seconds(self.pid)? - self.cpu0?;
        (wall > 0.0).then(|| used / wall * 100.0)
    }
}

/// Meters for the server (when its pid is known) and the generator.
#[derive(Debug, Clone, Copy)]
pub struct Meters {
    server_pid: Option<u32>,
    server: Option<CpuMeter>,
    generator: CpuMeter,
}

/// What [`Meters::finish`] measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub server_cpu_pct: Option<f64>,
    pub server_rss_kib: Option<u64>,
    pub generator_cpu_pct: Option<f64>,
}

impl Meters {
    pub fn start(server_pid: Option<u32>) -> Meters {
        Meters {
            server_pid,
            server: server_pid.map(|p| CpuMeter::start(Pid::Other(p))),
            generator: CpuMeter::start(Pid::SelfProc),
        }
    }

    pub fn finish(&self) -> Usage {
        Usage {
            server_cpu_pct: self.server.and_then(|m| m.percent()),
            server_rss_kib: self.server_pid.and_then(|p| rss_kib(Pid::Other(p))),
            generator_cpu_pct: self.generator.percent(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        assert!(cpu_seconds(Pid::SelfProc).is_some());
        assert!(rss_kib(Pid::SelfProc).is_some_and(|r| r > 0));
    }
}
