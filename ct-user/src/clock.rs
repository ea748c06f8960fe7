//! ctscope's clocks. [`Clock`] turns the kernel's boot-time stamps of BPF events into
//! wall-clock time, and jiffies into seconds. [`Stamp`]: when the agent read something, by
//! two clocks: the wall clock, which users read, and the kernel's jiffies, which
//! conntrack's timeouts count down in. The two drift apart
//! where timer ticks are late (seen: about 10 % in a loaded emulated VM), so timeouts are
//! counted down in jiffies.

use serde::{Serialize, Serializer};

/// Turns kernel clocks into wall-clock time and jiffies into seconds.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Realtime minus boottime, in nanoseconds.
    pub boot_to_unix_ns: i128,
    /// Kernel HZ; 0 when unknown (timeouts are then omitted).
    pub hz: u32,
}

impl Clock {
    pub fn new(hz: u32) -> Self {
        let real = clock_ns(libc::CLOCK_REALTIME);
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        Self {
            boot_to_unix_ns: real - boot,
            hz,
        }
    }

    pub fn unix_secs(&self, boot_ns: u64) -> f64 {
        (boot_ns as i128 + self.boot_to_unix_ns) as f64 / 1e9
    }

    pub fn seconds(&self, jiffies: i32) -> Option<i64> {
        (self.hz != 0 && jiffies != i32::MIN).then(|| (jiffies as i64).div_euclid(self.hz as i64))
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clocks exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stamp {
    /// Unix time, seconds.
    pub wall: f64,
    /// The kernel's jiffies clock, in seconds from an arbitrary origin.
    pub kernel: f64,
}

impl Stamp {
    pub fn now() -> Self {
        Stamp {
            wall: wall_now(),
            kernel: kernel_now(),
        }
    }

    /// An event's time, from its wall time: the kernel clock that far back from `now` (an
    /// event is read within milliseconds, so drift does not matter here).
    pub fn of_wall(wall: f64, now: Stamp) -> Self {
        Stamp {
            wall,
            kernel: now.kernel - (now.wall - wall).max(0.0),
        }
    }

    /// Both clocks at `secs` (tests, and places with no kernel to ask).
    pub fn at(secs: f64) -> Self {
        Stamp {
            wall: secs,
            kernel: secs,
        }
    }
}

/// Serialized as its wall time (what `fields_at` shows).
impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.wall)
    }
}

/// Unix time in whole seconds, as conntrack prints ages and timestamps.
pub fn unix_secs() -> u64 {
    wall_now() as u64
}

/// Unix time, seconds.
pub fn wall_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// times(2) returns jiffies since boot in USER_HZ units (10 ms): the kernel's own clock.
fn kernel_now() -> f64 {
    // SAFETY: `tms` is plain old data that times() fills in.
    let mut tms: libc::tms = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to our `tms`.
    let ticks = unsafe { libc::times(&mut tms) };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stamp_lies_back_on_both_clocks() {
        let now = Stamp::now();
        let ev = Stamp::of_wall(now.wall - 2.0, now);
        assert!((now.kernel - ev.kernel - 2.0).abs() < 0.1, "{now:?} {ev:?}");
        assert!(
            Stamp::now().kernel >= now.kernel,
            "the kernel clock does not go back"
        );
    }
}
