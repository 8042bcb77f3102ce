//! What a running job reports: facts, not a job state. The engine publishes a [`Progress`]
//! snapshot; the daemon decides what state the job is in (queued, running, paused, ...),
//! using [`Activity`] as one input.

use std::time::{Duration, Instant};

use arsnet_proto::control::{RunFigures, SourceInfo, SourceState};
use arsnet_proto::{Digest, JobTag};
use arsnet_sched::{Scheduler, ServerState};
use tracing::info;

use crate::rate::RateMeter;
use arsnet_proto::units::{human_bytes, human_rate};

/// What the engine is doing for a job right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activity {
    /// Opening DIR, adopting a partial download.
    #[default]
    Starting,
    /// No source is reachable: every one waits out its backoff (the scheduler's
    /// `Phase::Waiting`).
    Waiting,
    /// Connecting to sources and fetching segments.
    Transferring,
    /// Every segment is in: verifying and publishing the file.
    Finishing,
}

/// A snapshot of a running download.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Progress {
    pub activity: Activity,
    pub name: Option<String>,
    pub figures: RunFigures,
    pub rate_bps: u64,
    pub sources: Vec<SourceInfo>,
    pub content: Option<Digest>,
    /// Tag of the partial files the job holds once it holds any.
    pub owner_tag: Option<JobTag>,
}

/// Per-source bookkeeping for metrics (the scheduler keeps the scheduling state).
pub(crate) struct Meter {
    pub address: String,
    /// Segment bytes received on connections that have ended.
    pub bytes_closed: u64,
    /// Segment bytes of the connection that is open now.
    pub bytes_open: u64,
    pub rate: RateMeter,
    /// Why its last connection ended; cleared when a new attempt starts, so a stale note
    /// never sits beside a source that is connecting or transferring again.
    pub last_error: String,
}

impl Meter {
    pub fn new(address: String, started: Instant) -> Self {
        Meter {
            address,
            bytes_closed: 0,
            bytes_open: 0,
            rate: RateMeter::new(started),
            last_error: String::new(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes_closed + self.bytes_open
    }
}

/// Each source's row: the scheduler's view of it plus its counters. `now` is the
/// scheduler's clock (for the time left in a backoff).
pub(crate) fn sources_info(sched: &Scheduler, meters: &[Meter], now: Duration) -> Vec<SourceInfo> {
    // Once every segment is in, nobody is retried: a source still in backoff shows why it
    // failed, not a countdown to a retry that never comes.
    let complete = matches!(sched.phase(), arsnet_sched::Phase::Complete);
    meters
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let stats = sched.server_stats(i);
            let state_now = sched.server_state(i);
            let (state, detail) = match state_now {
                ServerState::Idle => (SourceState::Idle, String::new()),
                ServerState::Connecting => (SourceState::Connecting, String::new()),
                ServerState::Active => (SourceState::Active, String::new()),
                ServerState::Backoff { last_error, .. } if complete => {
                    (SourceState::Idle, last_error.clone())
                }
                ServerState::Backoff {
                    until, last_error, ..
                } => {
                    let wait = until.saturating_sub(now);
                    (
                        SourceState::Backoff,
                        format!("retry in {:.1}s: {last_error}", wait.as_secs_f32()),
                    )
                }
                ServerState::Blamed(reason) => (SourceState::Blamed, reason.clone()),
                // Not connected and not going to be: what `Idle` means to the user; the
                // detail says why.
                ServerState::GaveUp {
                    attempts,
                    last_error,
                } => (
                    SourceState::Idle,
                    format!("gave up after {attempts} attempts: {last_error}"),
                ),
            };
            // Only a transferring source has a rate: the meter's decaying average would
            // show a dead server as receiving a trickle.
            let rate_bps = if matches!(state_now, ServerState::Active) {
                m.rate.rate()
            } else {
                0
            };
            SourceInfo {
                address: m.address.clone(),
                state,
                detail: if detail.is_empty() {
                    m.last_error.clone()
                } else {
                    detail
                },
                rate_bps,
                bytes: m.bytes(),
                segments: stats.segments_done,
                failures: stats.failures,
            }
        })
        .collect()
}

/// Logs a job's per-source metrics and its overall progress (the spec's client `-i`).
pub(crate) fn log_metrics(job: arsnet_proto::control::JobId, progress: &Progress) {
    for s in &progress.sources {
        info!(
            job,
            server = %s.address,
            state = s.state.label(),
            rate = %human_rate(s.rate_bps),
            bytes = %human_bytes(s.bytes),
            segments = s.segments,
            "source metrics"
        );
    }
    info!(
        job,
        done = progress.figures.segments_done,
        total = progress.figures.segments_total.unwrap_or(0),
        rate = %human_rate(progress.rate_bps),
        "job progress"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use arsnet_sched::{Action, Config, ConnId};

    fn connects(sched: &mut Scheduler) -> Vec<ConnId> {
        std::iter::from_fn(|| sched.poll_action())
            .filter_map(|a| match a {
                Action::Connect { conn, .. } => Some(conn),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_source_in_backoff_or_given_up_has_no_rate_and_says_why() {
        let config = Config {
            max_tries: 2,
            ..Config::default()
        };
        let mut sched = Scheduler::new(config, 2, Duration::ZERO);
        let conns = connects(&mut sched);
        let t = Duration::from_millis(10);
        sched.on_disconnected(t, conns[0], "connect failed: refused");
        sched.on_disconnected(t, conns[1], "connect failed: refused");
        // Server 1 tries again and fails again: its tries are used up.
        sched.retry_now(t);
        let again = connects(&mut sched);
        sched.on_disconnected(t, again[1], "connect failed: no such host");
        let started = Instant::now();
        let meters: Vec<Meter> = (0..2)
            .map(|i| {
                let mut m = Meter::new(format!("127.0.0.1:{i}"), started);
                // Both moved data before: the meter's average decays, it is not zero.
                m.rate.sample(1_000_000, started + Duration::from_secs(1));
                m.last_error = "stale note".into();
                m
            })
            .collect();
        assert!(meters[0].rate.rate() > 0);
        let rows = sources_info(&sched, &meters, t);
        assert_eq!(rows[0].state, SourceState::Connecting, "{:?}", rows[0]);
        assert_eq!(rows[1].state, SourceState::Idle);
        assert_eq!(
            rows[1].detail,
            "gave up after 2 attempts: connect failed: no such host"
        );
        assert!(rows.iter().all(|r| r.rate_bps == 0), "{rows:?}");
    }

    #[test]
    fn a_source_still_in_backoff_when_the_job_completes_shows_why_and_no_countdown() {
        let mut sched = Scheduler::new(Config::default(), 2, Duration::ZERO);
        let conns = connects(&mut sched);
        let busy = "HTTP status 503 (retry after 7s)";
        let seven = Duration::from_secs(7);
        sched.on_disconnected_retry_after(Duration::ZERO, conns[0], busy, seven);
        sched.pin([7; 32]);
        let layout = arsnet_sched::Layout {
            segment_count: 1,
            size: 10,
            fingerprint: [7; 32],
            content: [7; 32],
        };
        sched.on_header(Duration::ZERO, conns[1], layout);
        let t = Duration::from_secs(1);
        sched.on_segment(t, conns[1], 0, true);
        assert_eq!(sched.phase(), arsnet_sched::Phase::Complete);
        assert!(matches!(sched.server_state(0), ServerState::Backoff { .. }));
        let started = Instant::now();
        let meters: Vec<Meter> = (0..2)
            .map(|i| Meter::new(format!("127.0.0.1:{i}"), started))
            .collect();
        let rows = sources_info(&sched, &meters, t);
        assert_eq!(rows[0].state, SourceState::Idle, "{:?}", rows[0]);
        assert_eq!(rows[0].detail, busy);
    }

    #[test]
    fn a_source_waiting_to_retry_shows_when_and_why_not_a_stale_note() {
        let mut sched = Scheduler::new(Config::default(), 1, Duration::ZERO);
        let conns = connects(&mut sched);
        sched.on_disconnected(Duration::ZERO, conns[0], "connect failed: refused");
        let started = Instant::now();
        let mut meter = Meter::new("127.0.0.1:1".into(), started);
        meter
            .rate
            .sample(1_000_000, started + Duration::from_secs(1));
        meter.last_error = "stale note".into();
        let rows = sources_info(&sched, &[meter], Duration::ZERO);
        assert_eq!(rows[0].state, SourceState::Backoff);
        assert_eq!(rows[0].detail, "retry in 0.5s: connect failed: refused");
        assert_eq!(rows[0].rate_bps, 0);
    }
}
