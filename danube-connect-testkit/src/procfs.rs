//! Process readings for the benchmarks, from `/proc` (Linux): memory, CPU time, load.

use std::sync::OnceLock;

/// A `kB` field of `/proc/{pid}/status` (`"VmRSS:"` now, `"VmHWM:"` peak); 0 when the
/// process is gone. `pid` may be `"self"`.
pub fn status_kib(pid: impl std::fmt::Display, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system, all threads) a process used so far, and those of its reaped
/// children; zeros when it is gone. `pid` may be `"self"`.
pub fn cpu_seconds(pid: impl std::fmt::Display) -> (f64, f64) {
    static TICKS: OnceLock<f64> = OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        let out = std::process::Command::new("getconf").arg("CLK_TCK").output().ok();
        out.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the `(comm)` field: state is field 0, utime 11, stime 12, cutime 13, cstime 14.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / ticks;
    (tick(11) + tick(12), tick(13) + tick(14))
}

/// The 1, 5 and 15 minute load averages (`"?"` when unreadable).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        assert!(status_kib("self", "VmRSS:") > 0);
        // Spin until the kernel counted a tick of user time (on a loaded machine 50 ms of
        // wall time can be 0 ticks); 5 s of wall time without one is a failure.
        let busy = std::time::Instant::now();
        while cpu_seconds("self").0 == 0.0 && busy.elapsed() < std::time::Duration::from_secs(5) {}
        assert!(cpu_seconds("self").0 > 0.0);
        assert_eq!(load_average().split(' ').count(), 3);
    }
}
