//! The scheduler's tunables and the few rules derived from them (backoff curve, clamps), kept
//! together so that every timing decision of the machine can be read in one screen.

use std::time::Duration;

/// Tunables of one download job's scheduler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Segments in flight per connection. Values below 1 behave as 1.
    pub pipeline_depth: usize,
    /// No progress for this long while segments are in flight means the connection stalled.
    /// While other connections deliver, a silent one is dropped far sooner (see
    /// `laggard_factor`); this is the bound when nobody delivers (a lone server, a network
    /// that is down), where silence says nothing about any one server.
    pub stall_timeout: Duration,
    /// A `Connect` whose handshake was silent this long (no byte reported through
    /// `on_progress` since the connect or the last one, and no header) failed. Silence, not
    /// total time: a huge digest table arriving steadily is not a hang.
    pub handshake_timeout: Duration,
    /// First reconnect delay after a failure.
    pub backoff_initial: Duration,
    /// Cap of the doubling reconnect delay.
    pub backoff_max: Duration,
    /// Duplicate slow in-flight segments onto idle connections when nothing is left to hand out.
    pub endgame: bool,
    /// How many connections may fetch the same segment during endgame. Values below 1 behave
    /// as 1 (no duplication).
    pub max_copies: usize,
    /// Without a pin, how long after the first header the scheduler waits for the other
    /// servers' headers before the strict majority of those that answered decides the
    /// content (it decides earlier once every server answered or failed).
    pub election_window: Duration,
    /// In the tail of a job, a connection on one segment for this many times the fastest
    /// server's per-segment time is dropped and its segments go to idle servers.
    ///
    /// The same limit drives the silence rule, in any phase of the job: a connection with
    /// segments in flight that received not one byte for that long, while another
    /// connection received data at least half that long after it went quiet, is dropped
    /// ([`DropReason::Silent`]) and retried after the backoff, and its segments go to the
    /// connections that deliver. A server that sent nothing for that long is no nearer
    /// finishing than a laggard; requiring another to deliver meanwhile keeps a lone server
    /// or a quiet network on the plain `stall_timeout`.
    ///
    /// [`DropReason::Silent`]: crate::DropReason::Silent
    pub laggard_factor: u32,
    /// ...but never before it has been on that segment (or, for the silence rule, without
    /// a byte) this long: the floor that keeps a fast job from dropping a server over a
    /// hiccup shorter than a TCP retransmission or two.
    pub laggard_floor: Duration,
    /// Connection attempts a server gets before it is given up ([`ServerState::GaveUp`]),
    /// while it has never delivered a header and the job has no verified segment; 0 means
    /// unlimited. A server that answered once is reachable and is never given up, and
    /// neither is any server of a job holding verified data (that job is resumable, so it
    /// waits for its servers to come back). aria2's `--max-tries` has the same default.
    ///
    /// [`ServerState::GaveUp`]: crate::ServerState::GaveUp
    pub max_tries: u32,
    /// The longest wait a source's own `Retry-After` may ask for (see
    /// [`Scheduler::on_disconnected_retry_after`](crate::Scheduler::on_disconnected_retry_after)).
    pub retry_after_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pipeline_depth: 4,
            stall_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            endgame: true,
            max_copies: 2,
            election_window: Duration::from_secs(3),
            laggard_factor: 8,
            laggard_floor: Duration::from_secs(2),
            max_tries: 5,
            retry_after_max: Duration::from_secs(3600),
        }
    }
}

impl Config {
    /// Reconnect delay after the failure numbered `attempt` (0 for the first failure since the
    /// last accepted header): `min(backoff_initial * 2^attempt, backoff_max)`, saturating so a
    /// server that keeps failing for days cannot overflow it.
    pub fn backoff(&self, attempt: u32) -> Duration {
        1u32.checked_shl(attempt)
            .and_then(|factor| self.backoff_initial.checked_mul(factor))
            .map_or(self.backoff_max, |delay| delay.min(self.backoff_max))
    }

    /// Pipeline depth with the degenerate 0 lifted to 1, so a connection always makes progress.
    pub(crate) fn depth(&self) -> usize {
        self.pipeline_depth.max(1)
    }

    /// Whether a server that failed `tries` attempts without ever answering has had all it
    /// gets.
    pub(crate) fn out_of_tries(&self, tries: u32) -> bool {
        self.max_tries != 0 && tries >= self.max_tries
    }

    /// Holders a segment may have at once; 1 means endgame duplication is off.
    pub(crate) fn copies(&self) -> usize {
        if self.endgame {
            self.max_copies.max(1)
        } else {
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let config = Config {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..Config::default()
        };
        let delays: Vec<u128> = (0..6).map(|a| config.backoff(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        // Absurd attempt counts saturate at the cap instead of overflowing.
        assert_eq!(config.backoff(40), Duration::from_millis(1000));
        assert_eq!(config.backoff(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn degenerate_values_are_clamped() {
        let config = Config {
            pipeline_depth: 0,
            max_copies: 0,
            ..Config::default()
        };
        assert_eq!(config.depth(), 1);
        assert_eq!(config.copies(), 1);
        let no_endgame = Config {
            endgame: false,
            max_copies: 5,
            ..Config::default()
        };
        assert_eq!(no_endgame.copies(), 1);
    }

    #[test]
    fn zero_tries_is_unlimited() {
        let config = Config {
            max_tries: 0,
            ..Config::default()
        };
        assert!(!config.out_of_tries(u32::MAX));
        let three = Config {
            max_tries: 3,
            ..Config::default()
        };
        assert!(!three.out_of_tries(2));
        assert!(three.out_of_tries(3));
    }
}
