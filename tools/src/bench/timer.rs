//! A sleep with microsecond resolution for the open-loop pacer. Tokio's timer wheel has
//! millisecond resolution, so a request due in 200 us would go out up to a millisecond
//! late and that lag would be charged as latency; spinning instead loses the core to
//! any other busy process on it. A timerfd armed for the exact wait wakes the reactor's
//! epoll at the right time and leaves the core idle meanwhile.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::bench::error::BenchError;

const NANOSECONDS_PER_SECOND: u128 = 1_000_000_000;

/// Asks the kernel not to defer this thread's timer expiries (its default slack is
/// 50 us, as large as the latencies measured). Best effort: without it timers are late.
pub fn minimize_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

#[derive(Debug)]
pub struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    /// Must run inside a tokio runtime with I/O enabled.
    pub fn new() -> Result<PreciseTimer, BenchError> {
        // SAFETY: plain syscall; the result is checked before it is used as a descriptor.
        let raw = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return Err(BenchError::Timer(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `owned` is an open timerfd that the `AsyncFd` owns, and so keeps open,
        // for its whole life.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(|error| BenchError::Timer(error.into_parts().1))?;
        Ok(PreciseTimer { fd })
    }

    /// Sleeps for `duration` (at least 1 ns, so the timer is never disarmed by a zero).
    pub async fn sleep(&mut self, duration: Duration) {
        let nanoseconds = duration.as_nanos().max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (nanoseconds / NANOSECONDS_PER_SECOND) as libc::time_t,
                tv_nsec: (nanoseconds % NANOSECONDS_PER_SECOND) as libc::c_long,
            },
        };
        // SAFETY: the descriptor is a live timerfd and `spec` outlives the call.
        let armed = unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if armed < 0 {
            // Cannot happen with a valid timerfd and value; fall back to tokio's timer.
            tokio::time::sleep(duration).await;
            return;
        }
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                tokio::time::sleep(duration).await;
                return;
            };
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer.
            let read = unsafe { libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), expirations.len()) };
            if read == expirations.len() as isize {
                return;
            }
            // EAGAIN: the readiness was stale; wait for the next expiry.
            guard.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(flavor = "current_thread")]
    async fn sleeps_at_least_the_duration() {
        let mut timer = PreciseTimer::new().unwrap();
        for microseconds in [0, 1, 150, 1_500] {
            let started = Instant::now();
            timer.sleep(Duration::from_micros(microseconds)).await;
            assert!(started.elapsed() >= Duration::from_micros(microseconds));
        }
    }
}
