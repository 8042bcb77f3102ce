//! Bandwidth shaping and measurement. `TokenBucket` enforces a virtual server's `--rate`
//! (shared by all of that server's connections); `RateMeter` turns a growing byte counter
//! into a smoothed bytes-per-second figure for status lines.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// A token bucket refilled at `rate` bytes per second with a burst of a quarter second.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (rate / 4.0).max(64.0 * 1024.0);
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits until `bytes` may be sent. Callers pass chunks no larger than the burst so that
    /// a slow link sends steadily instead of in seconds-long bursts.
    pub async fn acquire(&self, bytes: usize) {
        let wait = {
            let mut state = self.state.lock().await;
            let now = Instant::now();
            let (tokens, last) = *state;
            let refilled =
                (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
            let after = refilled - bytes as f64;
            *state = (after, now);
            if after >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-after / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The largest chunk a sender should write between two `acquire` calls: a quarter
    /// second's worth (at least 1 KiB, at most 256 KiB), so that a throttled server sends
    /// steadily however low its rate. A chunk of the whole burst would leave a slow server
    /// quiet for seconds between writes (64 KiB at 13 KiB/s: 5 s), and a client rightly
    /// drops a connection that is silent that long while its other sources deliver.
    pub fn chunk_size(&self) -> usize {
        ((self.rate / 4.0) as usize).clamp(1024, 256 * 1024)
    }
}

/// Smoothed rate of a monotonically growing counter, sampled by its owner.
#[derive(Debug, Clone)]
pub struct RateMeter {
    last_total: u64,
    last_at: Instant,
    rate: f64,
}

impl RateMeter {
    pub fn new(now: Instant) -> Self {
        RateMeter {
            last_total: 0,
            last_at: now,
            rate: 0.0,
        }
    }

    /// Feeds the counter's current total; returns the smoothed rate in bytes per second.
    /// Samples closer than 200 ms apart are folded into the next one.
    pub fn sample(&mut self, total: u64, now: Instant) -> u64 {
        let dt = now.duration_since(self.last_at).as_secs_f64();
        if dt >= 0.2 {
            let instant = total.saturating_sub(self.last_total) as f64 / dt;
            // Weighted towards the newest sample so that a stall shows within a second or two.
            self.rate = if self.rate == 0.0 {
                instant
            } else {
                0.6 * instant + 0.4 * self.rate
            };
            self.last_total = total;
            self.last_at = now;
        }
        self.rate as u64
    }

    pub fn rate(&self) -> u64 {
        self.rate as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_bucket_sends_a_quarter_second_at_a_time() {
        for rate in [4_096u64, 13_000, 100_000, 1 << 20] {
            let chunk = TokenBucket::new(rate).chunk_size() as f64;
            let gap = chunk / rate as f64;
            assert!(gap <= 0.25 + 1e-9, "{rate} B/s: {chunk} B every {gap} s");
        }
        assert_eq!(TokenBucket::new(u64::MAX / 2).chunk_size(), 256 * 1024);
        assert_eq!(TokenBucket::new(1).chunk_size(), 1024);
    }

    #[test]
    fn meter_tracks_a_steady_counter() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(t0);
        for i in 1..=10u64 {
            meter.sample(i * 1_000_000, t0 + Duration::from_secs(i));
        }
        assert_eq!(meter.rate(), 1_000_000);
        // A stall decays the rate quickly.
        meter.sample(10_000_000, t0 + Duration::from_secs(11));
        assert!(meter.rate() < 500_000);
    }
}
