//! CPU time and resident memory of a process, from `/proc/PID`.

use anyhow::{Context, Result, anyhow};

/// A snapshot.
#[derive(Clone, Copy, Debug)]
pub struct ProcStats {
    /// User + system CPU seconds.
    pub cpu_secs: f64,
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
            rss_bytes: rss_kib * 1024,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = ProcStats::read(std::process::id());
        let s = s.ok();
        assert!(s.is_some_and(|s| s.rss_bytes > 1024 * 1024 && s.cpu_secs >= 0.0));
        assert!(ProcStats::read(u32::MAX).is_err());
    }
}
