//! CPU time and resident memory of a process, from `/proc/PID`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

/// A snapshot.
#[derive(Clone, Copy, Debug)]
pub struct ProcStats {
    /// User + system CPU seconds.
    pub cpu_secs: f64,
    /// System (kernel) CPU seconds alone.
    pub sys_secs: f64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
}

impl ProcStats {
    /// Reads `/proc/PID/stat` (utime, stime in clock ticks) and `/proc/PID/status` (VmRSS).
    pub fn read(pid: u32) -> Result<ProcStats> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state); utime is field 14, stime field 15.
        let utime: f64 = f
            .get(11)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no utime"))?;
        let stime: f64 = f
            .get(12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no stime"))?;
        // USER_HZ is 100 on Linux.
        let cpu_secs = (utime + stime) / 100.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS"))?;
        Ok(ProcStats {
            cpu_secs,
            sys_secs: stime / 100.0,
            rss_bytes: rss_kib * 1024,
        })
    }
}

/// CPU time of each thread of a process, in nanoseconds, from the first field of
/// `/proc/PID/task/TID/schedstat`: finer than the 10 ms ticks of `/proc/PID/stat`, for figures
/// of a few milliseconds per operation.
#[derive(Clone, Debug, Default)]
pub struct ThreadCpu(HashMap<u32, u64>);

impl ThreadCpu {
    /// Reads every thread of `pid`; fails when the kernel keeps no schedstat.
    pub fn read(pid: u32) -> Result<ThreadCpu> {
        let mut by_tid = HashMap::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("reading /proc/{pid}/task"))?
        {
            let entry = entry?;
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // A thread may end between the listing and the read.
            let Ok(s) = std::fs::read_to_string(entry.path().join("schedstat")) else {
                continue;
            };
            let ns: u64 = s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("odd schedstat of thread {tid}"))?;
            by_tid.insert(tid, ns);
        }
        if by_tid.is_empty() {
            return Err(anyhow!("no schedstat under /proc/{pid}/task"));
        }
        Ok(ThreadCpu(by_tid))
    }

    /// CPU time used since `before` by the threads alive now (threads started in between count
    /// whole; a thread that ended in between is lost, its time shows nowhere any more).
    pub fn since(&self, before: &ThreadCpu) -> Duration {
        let ns: u64 = self
            .0
            .iter()
            .map(|(tid, now)| now.saturating_sub(before.0.get(tid).copied().unwrap_or(0)))
            .sum();
        Duration::from_nanos(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_threads() {
        let Ok(before) = ThreadCpu::read(std::process::id()) else {
            return; // a kernel without schedstat
        };
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = ThreadCpu::read(std::process::id()).ok();
        assert!(after.is_some_and(|a| a.since(&before) > Duration::ZERO));
    }

    #[test]
    fn reads_own_process() {
        let s = ProcStats::read(std::process::id());
        let s = s.ok();
        assert!(s.is_some_and(|s| s.rss_bytes > 1024 * 1024 && s.cpu_secs >= 0.0));
        assert!(ProcStats::read(u32::MAX).is_err());
    }
}
