//! Polling with a deadline: kernel work (gc, event delivery) happens asynchronously.

use std::time::{Duration, Instant};

/// Calls `probe` every `every` until it returns `Some`, or `None` after `limit`.
pub fn poll<T>(
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// How long expired entries may wait for the gc worker (`CTSCOPE_TEST_GC_SECS`, default
/// 150 s): its interval adapts up to 60 s on current kernels, and 5.10's worker scans
/// 1/128 of the table per run, a full pass every 2 minutes.
pub fn gc_secs() -> Duration {
    env_secs("CTSCOPE_TEST_GC_SECS", 150)
}

/// Reads a duration in seconds from the environment (for slow VMs), else `default`.
pub fn env_secs(var: &str, default: u64) -> Duration {
    let secs = std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(default as f64);
    Duration::from_secs_f64(secs)
}
